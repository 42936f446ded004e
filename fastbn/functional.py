"""fastbn.functional.batch_norm: the contract of torch.nn.functional.batch_norm, with an
optional fused residual add and activation."""
from . import ops


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, activation=None, negative_slope=0.01, residual=None):
    """Batch normalization over dim 1 of an (N, C, ...) input, like
    torch.nn.functional.batch_norm, then optionally ``act(bn(input) + residual)`` in the same
    pass.

    training=True normalizes with the batch statistics and, when running_mean/running_var are
    given, updates them in place (running_var with the unbiased variance). training=False
    normalizes with running_mean/running_var, which are then required.

    activation: None, 'relu', 'silu' or 'leaky_relu' (with negative_slope); residual: a tensor
    of the input's shape and dtype added before the activation (a ResNet block's shortcut).
    The backward recomputes the activation's input from the input, the statistics, weight,
    bias and residual, so nothing more is kept for it than for the plain batch norm (plus the
    residual, which the block keeps anyway).
    """
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                       num_batches_tracked=None, activation=ops.activation_code(activation),
                       negative_slope=negative_slope, residual=residual)


def _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                num_batches_tracked, activation=0, negative_slope=0.01, residual=None):
    """batch_norm plus the module's extras: num_batches_tracked, which the training op
    increments itself (after its checks, so a rejected call changes nothing), and
    momentum=None for the cumulative average 1/num_batches_tracked. activation is the
    operators' code (ops.activation_code)."""
    if training:
        y, _, _ = ops.batch_norm_train(input, weight, bias, running_mean, running_var,
                                       num_batches_tracked, momentum, eps, residual, activation,
                                       negative_slope)
        return y
    return ops.batch_norm_eval(input, weight, bias, running_mean, running_var, eps, residual,
                               activation, negative_slope)
