"""NumPy reference implementation of batch normalization.

Written from the math, independent of PyTorch (no ``torch`` import), and
computed in float64 throughout.  It is the ground truth the test suite
compares fastbn and ``torch.nn`` against.

Layout convention: ``x`` has shape ``(N, C, *spatial)`` with any rank >= 2;
statistics are per channel (axis 1), reduced over every other axis.
Per-channel vectors (mean, invstd, weight, bias, running stats) have shape
``(C,)``.

Public functions:

- :func:`forward_train` -> ``(y, mean, invstd)`` from batch statistics.
- :func:`forward_eval` -> ``y`` from running statistics.
- :func:`backward` -> ``(dx, dweight, dbias)``, analytic gradients.
- :func:`update_running_stats` -> ``(new_mean, new_var)``.
- :func:`batch_var` -> biased per-channel variance (two-pass), a helper.
- :func:`activation`, :func:`activation_backward`, :func:`fused_backward`: the fused
  ``act(bn(x) + residual)`` and its gradients.
"""

import numpy as np

__all__ = [
    "forward_train",
    "forward_eval",
    "backward",
    "update_running_stats",
    "batch_var",
    "activation",
    "activation_backward",
    "fused_backward",
]


def _as_f64(a):
    return np.asarray(a, dtype=np.float64)


def _check_x(x):
    x = _as_f64(x)
    if x.ndim < 2:
        raise ValueError(f"expected x of rank >= 2 (N, C, *spatial), got shape {x.shape}")
    return x


def _reduce_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _bcast(v, ndim):
    """Per-channel vector (C,) -> shape (1, C, 1, ..., 1) for broadcasting."""
    v = _as_f64(v)
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _vec(v, c, default):
    """Per-channel vector or a constant default when ``v`` is None."""
    if v is None:
        return np.full((c,), default, dtype=np.float64)
    v = _as_f64(v).reshape(-1)
    if v.shape != (c,):
        raise ValueError(f"expected a per-channel vector of shape ({c},), got {v.shape}")
    return v


def _count(x):
    """Number of values per channel, n = N * prod(spatial)."""
    return x.size // x.shape[1] if x.shape[1] else 0


def _mean_var(x):
    """Exact two-pass per-channel mean and biased variance."""
    axes = _reduce_axes(x)
    n = _count(x)
    if n == 0:
        raise ValueError("cannot compute batch statistics of an empty batch")
    mean = x.sum(axis=axes) / n
    centered = x - _bcast(mean, x.ndim)
    var = (centered * centered).sum(axis=axes) / n
    return mean, var


def batch_var(x):
    """Biased per-channel variance of ``x`` (two-pass), float64, shape (C,)."""
    return _mean_var(_check_x(x))[1]


def forward_train(x, weight=None, bias=None, eps=1e-5):
    """Training-mode forward with batch statistics.

    Returns ``(y, mean, invstd)``: ``mean`` is the per-channel batch mean,
    ``invstd = 1 / sqrt(var + eps)`` with the biased batch variance, and
    ``y = (x - mean) * invstd * weight + bias`` (weight 1, bias 0 when None).
    """
    x = _check_x(x)
    c = x.shape[1]
    w = _vec(weight, c, 1.0)
    b = _vec(bias, c, 0.0)
    mean, var = _mean_var(x)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - _bcast(mean, x.ndim)) * _bcast(invstd, x.ndim)
    y = xhat * _bcast(w, x.ndim) + _bcast(b, x.ndim)
    return y, mean, invstd


def forward_eval(x, running_mean, running_var, weight=None, bias=None, eps=1e-5):
    """Evaluation-mode forward: normalize with the given running statistics."""
    x = _check_x(x)
    c = x.shape[1]
    rm = _vec(running_mean, c, 0.0)
    rv = _vec(running_var, c, 1.0)
    w = _vec(weight, c, 1.0)
    b = _vec(bias, c, 0.0)
    invstd = 1.0 / np.sqrt(rv + eps)
    xhat = (x - _bcast(rm, x.ndim)) * _bcast(invstd, x.ndim)
    return xhat * _bcast(w, x.ndim) + _bcast(b, x.ndim)


def backward(dy, x, mean, invstd, weight=None, training=True):
    """Analytic gradients of batch norm.

    ``mean``/``invstd`` are the batch statistics in training and the
    running-stat ones (``running_mean``, ``1/sqrt(running_var + eps)``) in eval.

    - training: ``dx = w * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))``
    - eval:     ``dx = dy * w * invstd``
    - ``dweight = sum(dy * xhat)``, ``dbias = sum(dy)`` per channel.

    Returns ``(dx, dweight, dbias)`` in float64.
    """
    x = _check_x(x)
    dy = _as_f64(dy)
    if dy.shape != x.shape:
        raise ValueError(f"dy shape {dy.shape} != x shape {x.shape}")
    c = x.shape[1]
    nd = x.ndim
    axes = _reduce_axes(x)
    n = _count(x)
    w = _vec(weight, c, 1.0)
    mean = _vec(mean, c, 0.0)
    invstd = _vec(invstd, c, 1.0)
    xhat = (x - _bcast(mean, nd)) * _bcast(invstd, nd)
    dbias = dy.sum(axis=axes)
    dweight = (dy * xhat).sum(axis=axes)
    scale = _bcast(w * invstd, nd)
    if training and n > 0:
        mean_dy = _bcast(dbias / n, nd)
        mean_dy_xhat = _bcast(dweight / n, nd)
        dx = scale * (dy - mean_dy - xhat * mean_dy_xhat)
    else:
        dx = dy * scale
    return dx, dweight, dbias


def update_running_stats(
    running_mean,
    running_var,
    batch_mean,
    batch_var,
    n,
    momentum=0.1,
    num_batches_tracked=None,
):
    """Exponential (or cumulative) moving average of the batch statistics.

    ``batch_var`` is the biased batch variance; the running variance stores
    the unbiased one (``batch_var * n / (n - 1)``).  The factor is
    ``momentum``, or ``1 / num_batches_tracked`` when ``momentum`` is None
    (``num_batches_tracked`` already incremented for this batch, as torch
    does).  Returns new float64 arrays ``(new_mean, new_var)``; the inputs
    are not modified.
    """
    rm = _as_f64(running_mean).copy()
    rv = _as_f64(running_var).copy()
    bm = _as_f64(batch_mean)
    bv = _as_f64(batch_var)
    n = int(n)
    if n < 2:
        raise ValueError(f"need more than 1 value per channel to update running stats, got n={n}")
    if momentum is None:
        if num_batches_tracked is None or int(num_batches_tracked) < 1:
            raise ValueError("momentum=None needs num_batches_tracked >= 1 (already incremented)")
        factor = 1.0 / float(int(num_batches_tracked))
    else:
        factor = float(momentum)
    unbiased = bv * (n / (n - 1.0))
    new_mean = (1.0 - factor) * rm + factor * bm
    new_var = (1.0 - factor) * rv + factor * unbiased
    return new_mean, new_var


def activation(z, name=None, negative_slope=0.01):
    """act(z) for name None, 'relu', 'silu' or 'leaky_relu', in float64."""
    z = _as_f64(z)
    if name is None:
        return z
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "silu":
        return z / (1.0 + np.exp(-z))
    if name == "leaky_relu":
        return np.where(z > 0, z, z * negative_slope)
    raise ValueError(name)


def activation_backward(dy, z, name=None, negative_slope=0.01):
    """dy·act'(z): the gradient with respect to the activation's input."""
    dy, z = _as_f64(dy), _as_f64(z)
    if name is None:
        return dy
    if name == "relu":
        return np.where(z > 0, dy, 0.0)
    if name == "silu":
        s = 1.0 / (1.0 + np.exp(-z))
        return dy * s * (1.0 + z * (1.0 - s))
    if name == "leaky_relu":
        return np.where(z > 0, dy, dy * negative_slope)
    raise ValueError(name)


def fused_backward(dy, x, mean, invstd, weight=None, bias=None, residual=None, name=None,
                   negative_slope=0.01, training=True):
    """Gradients of y = act(bn(x) + residual), bn normalizing with (mean, invstd):
    (dx, dweight, dbias, dresidual)."""
    x = _check_x(x)
    c = x.shape[1]
    w, b = _vec(weight, c, 1.0), _vec(bias, c, 0.0)
    xhat = (x - _bcast(mean, x.ndim)) * _bcast(invstd, x.ndim)
    z = xhat * _bcast(w, x.ndim) + _bcast(b, x.ndim)
    if residual is not None:
        z = z + _as_f64(residual)
    g = activation_backward(dy, z, name, negative_slope)
    dx, dweight, dbias = backward(g, x, mean, invstd, weight, training)
    return dx, dweight, dbias, g
