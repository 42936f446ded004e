"""The fastbn:: operators (defined and implemented in C++, csrc/front) and their fake kernels.

The fake kernels give torch.compile / export the output shapes, dtypes and strides without
running anything; they follow the same layout rule as the C++ front (csrc/front/checks.cpp).
torch.library also registers them as the Meta kernels, so they run the C++ front's argument
checks first: under inference mode nothing else checks a meta call.
"""
import torch
from torch._prims_common import suggest_memory_format
from torch.overrides import has_torch_function

from . import _C

_ops = torch.ops.fastbn


def _call(entry, name, tensors, *scalars):
    """torch.ops.fastbn.<name>(*tensors, *scalars), through fastbn._C's entry point when
    torch.ops adds nothing: the entry points (csrc/front/python_entry.cpp) run the same
    operator through the same dispatcher without boxing its arguments. torch.ops is kept under
    torch.compile (which traces it), for __torch_function__ overrides and modes (which it
    hands the call to), and for arguments of types the entry point does not take (it returns
    NotImplemented)."""
    if not torch.compiler.is_compiling() and not has_torch_function(tensors):
        out = entry(*tensors, *scalars)
        if out is not NotImplemented:
            return out
    return getattr(_ops, name).default(*tensors, *scalars)


def _canonical(input):
    """The input's layout as the kernels see it: NCS (contiguous) or NSC (channels last)."""
    if input.is_contiguous() or input.movedim(1, -1).is_contiguous():
        return input
    return input.contiguous(memory_format=suggest_memory_format(input))


def _stats_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def batch_norm_train(input, weight, bias, running_mean, running_var, num_batches_tracked,
                     momentum, eps):
    """Training forward: (y, save_mean, save_invstd); updates the running stats and
    increments num_batches_tracked in place. momentum=None is the cumulative average."""
    return _call(_C._batch_norm_train, "batch_norm_train",
                 (input, weight, bias, running_mean, running_var, num_batches_tracked),
                 momentum, eps)


def batch_norm_eval(input, weight, bias, running_mean, running_var, eps):
    """Eval forward with running statistics: one pass, per-channel scale and shift."""
    return _call(_C._batch_norm_eval, "batch_norm_eval",
                 (input, weight, bias, running_mean, running_var), eps)


def batch_norm_backward(grad_output, input, weight, mean, invstd, training, output_mask):
    """(dx, dweight, dbias); outputs masked out by output_mask come back empty (numel 0)."""
    return _ops.batch_norm_backward.default(grad_output, input, weight, mean, invstd,
                                            training, output_mask)


@torch.library.register_fake("fastbn::batch_norm_train")
def _(input, weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps):
    _C._check_forward_args(input, weight, bias, running_mean, running_var, num_batches_tracked,
                           True, momentum is None)
    stats = input.new_empty((input.shape[1],), dtype=_stats_dtype(input.dtype))
    return torch.empty_like(_canonical(input)), stats, torch.empty_like(stats)


@torch.library.register_fake("fastbn::batch_norm_eval")
def _(input, weight, bias, running_mean, running_var, eps):
    _C._check_forward_args(input, weight, bias, running_mean, running_var, None, False, False)
    return torch.empty_like(_canonical(input))


@torch.library.register_fake("fastbn::batch_norm_backward")
def _(grad_output, input, weight, mean, invstd, training, output_mask):
    _C._check_backward_args(grad_output, input, weight, mean, invstd)
    param_dtype = weight.dtype if weight is not None else input.dtype
    channels = input.shape[1]
    return (torch.empty_like(_canonical(input)) if output_mask[0] else input.new_empty((0,)),
            input.new_empty((channels if output_mask[1] else 0,), dtype=param_dtype),
            input.new_empty((channels if output_mask[2] else 0,), dtype=param_dtype))
