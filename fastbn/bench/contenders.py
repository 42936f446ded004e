"""The contenders (providers) and the callables that time them.

Every provider gets the same input tensor, the same upstream gradient and parameters in
float32 (half/bfloat16 inputs run with float32 weights and statistics, as under autocast).
Every batch-norm provider allocates its output (and, in backward modes, dx, dweight, dbias)
on every call through ATen's allocator; only copy_ writes into a preallocated destination.
"""
import time

import torch

from .cases import DTYPES, LAYOUTS

PROVIDERS = {
    "fastbn": "fastbn.BatchNorm2d",
    "eager": "torch.nn.BatchNorm2d",
    "compile": "torch.compile(torch.nn.BatchNorm2d(C), dynamic=False), compiled once per "
               "shape/dtype/layout (train and eval), warmed up before timing",
    "copy_": "dst.copy_(x) into a preallocated dst: the memory-bandwidth yardstick",
}
DEFAULT_PROVIDERS = list(PROVIDERS)
BN_PROVIDERS = ["fastbn", "eager", "compile"]


def configure_compile():
    """Inductor on a small machine: one compile thread, and room for the recompiles of a
    group (train, eval) without falling back to eager silently."""
    import logging

    import torch._dynamo
    import torch._inductor.config

    torch._inductor.config.compile_threads = 1
    # "No CUDA runtime is found" on CPU-only machines, once per process: noise here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)


def _new_module(provider, channels, device, training):
    if provider == "fastbn":
        import fastbn
        module = fastbn.BatchNorm2d(channels)
    else:
        module = torch.nn.BatchNorm2d(channels)
    module = module.to(device).train(training)
    if provider == "compile":
        module = torch.compile(module, dynamic=False)
    return module


class Workbench:
    """Inputs and modules for one group (shape, dtype, layout, device), shared by its modes.

    Modules are built lazily and kept for the group, so that torch.compile compiles a
    training module once for forward-train, backward and forward-backward, and an eval
    module once for eval.
    """

    def __init__(self, shape, dtype, layout, device, seed=0):
        gen = torch.Generator().manual_seed(seed)
        fmt = LAYOUTS[layout]
        x = torch.randn(shape, generator=gen).to(device=device, dtype=DTYPES[dtype],
                                                  memory_format=fmt)
        self.channels = shape[1]
        self.device = device
        self.x = x                                        # for eval and copy_
        self.x_grad = x.detach().clone().requires_grad_()  # leaf of the training graphs
        self.dy = torch.randn(shape, generator=gen).to(device=device, dtype=DTYPES[dtype],
                                                       memory_format=fmt)
        self._modules = {}

    def module(self, provider, training):
        key = (provider, training)
        if key not in self._modules:
            self._modules[key] = _new_module(provider, self.channels, self.device, training)
        return self._modules[key]

    def callable(self, provider, mode):
        """A zero-argument function doing one timed call of `provider` in `mode`."""
        x, xg, dy = self.x, self.x_grad, self.dy
        if provider == "copy_":
            dst = torch.empty_like(x)
            return lambda: dst.copy_(x)
        if mode == "eval":
            m = self.module(provider, training=False)

            def run():
                with torch.no_grad():
                    return m(x)
            return run
        m = self.module(provider, training=True)
        inputs = (xg, m.weight, m.bias)
        if mode == "forward-train":
            return lambda: m(xg)
        if mode == "backward":
            y = m(xg)  # the graph whose backward is timed, recorded once
            return lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True)
        if mode == "forward-backward":
            return lambda: torch.autograd.grad(m(xg), inputs, dy)
        raise ValueError(f"unknown mode {mode!r}")

    def close(self):
        compiled = any(p == "compile" for p, _ in self._modules)
        self._modules.clear()
        if compiled:
            # Drop this group's compiled graphs: the next group's shapes would otherwise pile
            # up as recompiles of nn.BatchNorm2d.forward (and hit dynamo's recompile limit).
            import torch._dynamo
            torch._dynamo.reset()


def prepare(bench, providers, mode, sync, warmup=2):
    """Build the callables of a case and run each a few times (compiling where needed).

    Returns ({provider: fn}, {provider: seconds of the first call}, {provider: error text})
    for the providers that failed (an unsupported dtype, a missing CUDA build, ...).
    """
    fns, first_call, errors = {}, {}, {}
    for p in providers:
        try:
            t0 = time.perf_counter()
            fn = bench.callable(p, mode)
            fn()
            sync()
            first_call[p] = time.perf_counter() - t0
            for _ in range(warmup - 1):
                fn()
            sync()
            fns[p] = fn
        except Exception as e:  # report and go on with the other providers
            errors[p] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return fns, first_call, errors
