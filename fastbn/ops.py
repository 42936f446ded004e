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


# The operators' `activation` argument (csrc/kernels/bn_math.h's Act).
ACTIVATIONS = {None: 0, "none": 0, "relu": 1, "silu": 2, "leaky_relu": 3}


def activation_code(activation):
    """The operators' code for an activation name (None, 'relu', 'silu', 'leaky_relu')."""
    code = ACTIVATIONS.get(activation) if isinstance(activation, (str, type(None))) else None
    if code is None:
        raise ValueError(f"fastbn: unknown activation {activation!r}; expected one of "
                         "None, 'relu', 'silu', 'leaky_relu'")
    return code


def _call(entry, name, tensors, args):
    """torch.ops.fastbn.<name>(*args), through fastbn._C's entry point when torch.ops adds
    nothing: the entry points (csrc/front/python_entry.cpp) run the same operator through the
    same dispatcher without boxing its arguments. torch.ops is kept under torch.compile (which
    traces it), for __torch_function__ overrides and modes (which it hands the call to), and
    for arguments of types the entry point does not take (it returns NotImplemented).
    `tensors` are the tensor arguments among args."""
    if not torch.compiler.is_compiling() and not has_torch_function(tensors):
        out = entry(*args)
        if out is not NotImplemented:
            return out
    return getattr(_ops, name).default(*args)


def _canonical(input):
    """The input's layout as the kernels see it: NCS (contiguous) or NSC (channels last)."""
    if input.is_contiguous() or input.movedim(1, -1).is_contiguous():
        return input
    return input.contiguous(memory_format=suggest_memory_format(input))


def _stats_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def batch_norm_train(input, weight, bias, running_mean, running_var, num_batches_tracked,
                     momentum, eps, residual=None, activation=0, negative_slope=0.01):
    """Training forward: (y, save_mean, save_invstd); updates the running stats and
    increments num_batches_tracked in place. momentum=None is the cumulative average.
    y = act(bn(input) + residual) with the activation's code (activation_code)."""
    tensors = (input, weight, bias, running_mean, running_var, num_batches_tracked)
    if residual is None and activation == 0:
        return _call(_C._batch_norm_train, "batch_norm_train", tensors, (*tensors, momentum, eps))
    return _call(_C._batch_norm_train, "batch_norm_train", (*tensors, residual),
                 (*tensors, momentum, eps, residual, activation, negative_slope))


def batch_norm_eval(input, weight, bias, running_mean, running_var, eps, residual=None,
                    activation=0, negative_slope=0.01):
    """Eval forward with running statistics: one pass, per-channel scale and shift (then the
    residual and activation, if any)."""
    tensors = (input, weight, bias, running_mean, running_var)
    if residual is None and activation == 0:
        return _call(_C._batch_norm_eval, "batch_norm_eval", tensors, (*tensors, eps))
    return _call(_C._batch_norm_eval, "batch_norm_eval", (*tensors, residual),
                 (*tensors, eps, residual, activation, negative_slope))


def batch_norm_backward(grad_output, input, weight, mean, invstd, training, output_mask,
                        bias=None, residual=None, activation=0, negative_slope=0.01,
                        residual_grad=False):
    """(dx, dweight, dbias, dresidual); outputs masked out by output_mask (dresidual: by
    residual_grad) come back empty (numel 0). With an activation, bias and residual are the
    forward's: the backward recomputes the activation's input from them."""
    return _ops.batch_norm_backward.default(grad_output, input, weight, mean, invstd,
                                            training, output_mask, bias, residual, activation,
                                            negative_slope, residual_grad)


@torch.library.register_fake("fastbn::batch_norm_train")
def _(input, weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps,
      residual=None, activation=0, negative_slope=0.01):
    _C._check_forward_args(input, weight, bias, running_mean, running_var, num_batches_tracked,
                           True, momentum is None)
    _C._check_fused_args(input, None, residual, activation, False)
    stats = input.new_empty((input.shape[1],), dtype=_stats_dtype(input.dtype))
    return torch.empty_like(_canonical(input)), stats, torch.empty_like(stats)


@torch.library.register_fake("fastbn::batch_norm_eval")
def _(input, weight, bias, running_mean, running_var, eps, residual=None, activation=0,
      negative_slope=0.01):
    _C._check_forward_args(input, weight, bias, running_mean, running_var, None, False, False)
    _C._check_fused_args(input, None, residual, activation, False)
    return torch.empty_like(_canonical(input))


@torch.library.register_fake("fastbn::batch_norm_backward")
def _(grad_output, input, weight, mean, invstd, training, output_mask, bias=None,
      residual=None, activation=0, negative_slope=0.01, residual_grad=False):
    _C._check_backward_args(grad_output, input, weight, mean, invstd)
    _C._check_fused_args(input, bias, residual, activation, residual_grad)
    param_dtype = weight.dtype if weight is not None else input.dtype
    channels = input.shape[1]
    like_input = lambda wanted: (torch.empty_like(_canonical(input)) if wanted
                                 else input.new_empty((0,)))
    return (like_input(output_mask[0]),
            input.new_empty((channels if output_mask[1] else 0,), dtype=param_dtype),
            input.new_empty((channels if output_mask[2] else 0,), dtype=param_dtype),
            like_input(residual_grad))
