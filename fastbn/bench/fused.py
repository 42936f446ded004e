"""Benchmark of the fused activation: python -m fastbn.bench.fused [--quick] [--out PREFIX]

Two parts, every contender timed interleaved in one run (fastbn.bench.timing):

1. Ops. `bn-relu` (act(bn(x))) and `bn-add-relu` (act(bn(x) + r), a ResNet block's end), in
   training forward+backward and eval, against:
     fused    fastbn.BatchNormAct2d (one pass)
     unfused  fastbn.BatchNorm2d, then the add and an in-place ReLU (torch)
     eager    torch.nn.BatchNorm2d, then the add and an in-place ReLU, as torchvision's ResNet
     compile  torch.compile of the eager module
     plain    fastbn.BatchNorm2d alone: the fused op's target is to cost about as much
     copy_    dst.copy_(x): the memory yardstick
2. Models. One SGD training step (forward, backward, step) of a ResNet basic block and of
   torchvision's resnet18: fastbn.fuse_activations(fastbn.convert_model(m)) (fused),
   fastbn.convert_model(m) (unfused), m (eager), torch.compile(m) (compile); and batch norm's
   share of the eager step's CPU time from torch.profiler.
"""
import argparse
import copy
import json
import platform
import sys
import zlib

import torch

import fastbn

from . import timing

OPS = ["bn-relu", "bn-add-relu"]
MODES = ["forward-backward", "eval"]
SHAPES = [(32, 64, 56, 56), (16, 256, 56, 56), (16, 512, 28, 28), (16, 2048, 7, 7)]
QUICK_SHAPES = [(32, 64, 56, 56)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
OP_PROVIDERS = ["fused", "unfused", "eager", "compile", "plain", "copy_"]


class BnAddRelu(torch.nn.Module):
    """relu(bn(x) + r) as torchvision's BasicBlock writes it (in-place add and ReLU)."""

    def __init__(self, bn, residual):
        super().__init__()
        self.bn, self.residual = bn, residual

    def forward(self, x, r):
        y = self.bn(x)
        if self.residual:
            y += r
        return torch.relu_(y)


class Plain(torch.nn.Module):
    def __init__(self, bn):
        super().__init__()
        self.bn = bn

    def forward(self, x, r):
        return self.bn(x)


class Fused(torch.nn.Module):
    def __init__(self, c, residual):
        super().__init__()
        self.bn, self.residual = fastbn.BatchNormAct2d(c, act="relu"), residual

    def forward(self, x, r):
        return self.bn(x, r if self.residual else None)


def op_module(provider, c, residual):
    if provider == "fused":
        return Fused(c, residual)
    if provider == "plain":
        return Plain(fastbn.BatchNorm2d(c))
    bn = fastbn.BatchNorm2d(c) if provider == "unfused" else torch.nn.BatchNorm2d(c)
    m = BnAddRelu(bn, residual)
    return torch.compile(m, dynamic=False) if provider == "compile" else m


def op_callable(provider, mode, x, r, dy, residual):
    if provider == "copy_":
        dst = torch.empty_like(x)
        return lambda: dst.copy_(x)
    m = op_module(provider, x.shape[1], residual).train(mode != "eval")
    if mode == "eval":
        def run():
            with torch.no_grad():
                return m(x, r)
        return run
    xg = x.detach().clone().requires_grad_()
    rg = r.detach().clone().requires_grad_()
    inputs = [xg] + list(m.parameters()) + ([rg] if residual and provider != "plain" else [])
    return lambda: torch.autograd.grad(m(xg, rg), inputs, dy)


def bench_ops(shapes, dtypes, layouts, clock, rounds, log):
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            for layout in layouts:
                gen = torch.Generator().manual_seed(0)
                make = lambda: torch.randn(shape, generator=gen).to(
                    dtype=DTYPES[dtype], memory_format=LAYOUTS[layout])
                x, r, dy = make(), make(), make()
                for op in OPS:
                    for mode in MODES:
                        label = f"{'x'.join(map(str, shape))} {dtype} {layout} {op} {mode}"
                        log(label)
                        fns = {}
                        for p in OP_PROVIDERS:
                            fn = op_callable(p, mode, x, r, dy, op == "bn-add-relu")
                            fn(), fn()
                            fns[p] = fn
                        stats = timing.measure(fns, clock, rounds=rounds, blocks=2, block_s=0.01,
                                               seed=zlib.crc32(label.encode()))
                        torch._dynamo.reset()
                        rows.append(dict(shape=list(shape), dtype=dtype, layout=layout, op=op,
                                         mode=mode, **{f"{p}_ms": stats[p]["median_ms"]
                                                       for p in OP_PROVIDERS},
                                         spread={p: [stats[p]["p20_ms"], stats[p]["p80_ms"]]
                                                 for p in OP_PROVIDERS}))
    return rows


class Block(torch.nn.Module):
    """torchvision's BasicBlock at 64 channels (conv-bn-relu-conv-bn-add-relu)."""

    def __init__(self, c=64):
        super().__init__()
        from torchvision.models.resnet import BasicBlock
        self.block = BasicBlock(c, c)

    def forward(self, x):
        return self.block(x)


def model_step(model, x, target):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = out.float().pow(2).mean() if target is None else \
            torch.nn.functional.cross_entropy(out, target)
        loss.backward()
        opt.step()
    return step


def bn_share(model, x, target):
    """Batch norm's (and the activations') share of an eager step's CPU time (torch.profiler)."""
    step = model_step(model, x, target)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    bn = sum(e.self_cpu_time_total for e in events if "batch_norm" in e.key)
    act = sum(e.self_cpu_time_total for e in events
              if e.key in ("aten::relu_", "aten::relu", "aten::threshold_backward", "aten::add_"))
    return bn / total, act / total


def bench_models(quick, clock, rounds, log):
    import torchvision
    cases = [("resnet-basic-block", Block, (16, 64, 56, 56), None)]
    if not quick:
        cases.append(("resnet18", lambda: torchvision.models.resnet18(num_classes=100),
                      (8, 3, 112, 112), 100))
    rows = []
    for name, make, shape, classes in cases:
        for layout in LAYOUTS:
            label = f"{name} {'x'.join(map(str, shape))} float32 {layout} train-step"
            log(label)
            torch.manual_seed(0)
            base = make().to(memory_format=LAYOUTS[layout])
            x = torch.randn(shape).to(memory_format=LAYOUTS[layout])
            target = torch.randint(0, classes, (shape[0],)) if classes else None
            models = {"fused": fastbn.fuse_activations(fastbn.convert_model(copy.deepcopy(base))),
                      "unfused": fastbn.convert_model(copy.deepcopy(base)),
                      "eager": copy.deepcopy(base),
                      "compile": torch.compile(copy.deepcopy(base))}
            fns = {}
            for p, m in models.items():
                fns[p] = model_step(m.train(), x, target)
                fns[p](), fns[p]()
            stats = timing.measure(fns, clock, rounds=rounds, blocks=1, block_s=0.01,
                                   seed=zlib.crc32(label.encode()))
            bn, act = bn_share(copy.deepcopy(base).train(), x, target)
            torch._dynamo.reset()
            rows.append(dict(model=name, shape=list(shape), layout=layout,
                             **{f"{p}_ms": stats[p]["median_ms"] for p in models},
                             eager_bn_share=bn, eager_act_add_share=act))
    return rows


def print_tables(op_rows, model_rows):
    print("\nops (median ms; x = time ratio against fused):")
    head = (f"{'shape':<14} {'dtype':<8} {'layout':<13} {'op':<11} {'mode':<16} "
            + " ".join(f"{p:>9}" for p in OP_PROVIDERS)
            + "  fused/plain  xunfused  xeager  xcompile")
    print(head)
    print("-" * len(head))
    for r in op_rows:
        f = r["fused_ms"]
        print(f"{'x'.join(map(str, r['shape'])):<14} {r['dtype']:<8} {r['layout']:<13} "
              f"{r['op']:<11} {r['mode']:<16} "
              + " ".join(f"{r[p + '_ms']:9.3f}" for p in OP_PROVIDERS)
              + f"  {f / r['plain_ms']:11.2f}  {r['unfused_ms'] / f:8.2f}  {r['eager_ms'] / f:6.2f}"
              f"  {r['compile_ms'] / f:8.2f}")
    if model_rows:
        print("\nmodels, one SGD training step (median ms):")
        head = (f"{'model':<20} {'layout':<13} {'fused':>9} {'unfused':>9} {'eager':>9} "
                f"{'compile':>9}  xeager  xcompile  xunfused  eager BN share  act+add share")
        print(head)
        print("-" * len(head))
        for r in model_rows:
            f = r["fused_ms"]
            print(f"{r['model']:<20} {r['layout']:<13} {f:9.2f} {r['unfused_ms']:9.2f} "
                  f"{r['eager_ms']:9.2f} {r['compile_ms']:9.2f}  {r['eager_ms'] / f:6.2f}  "
                  f"{r['compile_ms'] / f:8.2f}  {r['unfused_ms'] / f:8.2f}  "
                  f"{r['eager_bn_share']:14.0%}  {r['eager_act_add_share']:13.0%}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastbn.bench.fused", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the anchor shape, float32, the "
                    "basic block only: about a minute")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 6, "
                    "--quick 3)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--no-models", action="store_true", help="only the ops")
    ap.add_argument("--out", metavar="PREFIX", help="write PREFIX.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .contenders import configure_compile
    configure_compile()
    rounds = args.rounds or (3 if args.quick else 6)
    clock = timing.Clock("cpu")
    log = lambda label: print(f"[fastbn.bench.fused] {label}", file=sys.stderr, flush=True)
    op_rows = bench_ops(QUICK_SHAPES if args.quick else SHAPES,
                        ["float32"] if args.quick else list(DTYPES), list(LAYOUTS), clock, rounds,
                        log)
    model_rows = [] if args.no_models else bench_models(args.quick, clock, rounds, log)
    print_tables(op_rows, model_rows)
    if args.out:
        meta = dict(torch_version=torch.__version__, fastbn_version=fastbn.__version__,
                    threads=torch.get_num_threads(), machine=platform.processor() or
                    platform.machine(), cpu_kernels=fastbn._C._cpu_kernel_isa())
        with open(args.out + ".json", "w") as f:
            json.dump(dict(meta=meta, ops=op_rows, models=model_rows), f, indent=1)
        print(f"\nwrote {args.out}.json")


if __name__ == "__main__":
    main()
