"""fastbn.functional.batch_norm: the contract of torch.nn.functional.batch_norm."""
from . import ops


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalization over dim 1 of an (N, C, ...) input, like
    torch.nn.functional.batch_norm.

    training=True normalizes with the batch statistics and, when running_mean/running_var are
    given, updates them in place (running_var with the unbiased variance). training=False
    normalizes with running_mean/running_var, which are then required.
    """
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                       num_batches_tracked=None)


def _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                num_batches_tracked):
    """batch_norm plus the module's extras: num_batches_tracked, which the training op
    increments itself (after its checks, so a rejected call changes nothing), and
    momentum=None for the cumulative average 1/num_batches_tracked."""
    if training:
        y, _, _ = ops.batch_norm_train(input, weight, bias, running_mean, running_var,
                                       num_batches_tracked, momentum, eps)
        return y
    return ops.batch_norm_eval(input, weight, bias, running_mean, running_var, eps)
