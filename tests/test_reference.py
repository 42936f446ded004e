"""The NumPy reference (fastbn/reference.py) against torch.nn.functional in
float64: forward (train/eval), saved statistics, running-stat updates and
gradients (torch autograd vs the analytic formulas)."""

import ast
import itertools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bn_utils
from bn_utils import assert_tight, from_np, to_np

SHAPES = [(5, 3), (2, 1), (4, 3, 7), (1, 2, 2), (2, 3, 4, 5), (2, 2, 1, 1), (2, 2, 3, 1, 4), (3, 1, 1, 2, 1)]
F64 = dict(rtol=1e-10, atol=1e-10)


def _params(c, affine, gen):
    if not affine:
        return None, None
    w = torch.rand(c, dtype=torch.float64, generator=gen) + 0.5
    b = torch.randn(c, dtype=torch.float64, generator=gen)
    return w, b


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_forward_backward_train(ref, gen, shape, affine, eps):
    c = shape[1]
    x = torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
    w, b = _params(c, affine, gen)
    if affine:
        w.requires_grad_()
        b.requires_grad_()
    rm = torch.randn(c, dtype=torch.float64, generator=gen)
    rv = torch.rand(c, dtype=torch.float64, generator=gen) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3, eps=eps)
    dy = torch.randn(shape, dtype=torch.float64, generator=gen)
    y.backward(dy)

    y_ref, mean_ref, invstd_ref = ref.forward_train(to_np(x), to_np(w), to_np(b), eps=eps)
    assert y_ref.dtype == np.float64 and y_ref.shape == tuple(shape)
    assert mean_ref.shape == invstd_ref.shape == (c,)
    assert_tight(y, y_ref, **F64)

    # saved statistics as aten computes them
    _, save_mean, save_invstd = torch.native_batch_norm(x.detach(), None, None, None, None, True, 0.0, eps)
    assert_tight(save_mean, mean_ref, **F64)
    assert_tight(save_invstd, invstd_ref, **F64)

    n = x.numel() // c
    new_m, new_v = ref.update_running_stats(
        to_np(rm0), to_np(rv0), mean_ref, ref.batch_var(to_np(x)), n, momentum=0.3
    )
    assert_tight(rm, new_m, **F64)
    assert_tight(rv, new_v, **F64)

    dx, dw, db = ref.backward(to_np(dy), to_np(x), mean_ref, invstd_ref, to_np(w), training=True)
    assert_tight(x.grad, dx, rtol=1e-9, atol=1e-9)
    if affine:
        assert_tight(w.grad, dw, rtol=1e-9, atol=1e-9)
        assert_tight(b.grad, db, rtol=1e-9, atol=1e-9)
    else:
        # without affine the parameters' gradients are still well defined
        xr = x.detach().clone().requires_grad_()
        w1 = torch.ones(c, dtype=torch.float64, requires_grad=True)
        b0 = torch.zeros(c, dtype=torch.float64, requires_grad=True)
        F.batch_norm(xr, None, None, w1, b0, training=True, eps=eps).backward(dy)
        assert_tight(w1.grad, dw, rtol=1e-9, atol=1e-9)
        assert_tight(b0.grad, db, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_forward_backward_eval(ref, gen, shape, affine):
    c = shape[1]
    eps = 1e-3
    x = torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
    w, b = _params(c, True, gen)
    w.requires_grad_()
    b.requires_grad_()
    rm = torch.randn(c, dtype=torch.float64, generator=gen)
    rv = torch.rand(c, dtype=torch.float64, generator=gen) + 0.5
    ww, bb = (w, b) if affine else (None, None)
    y = F.batch_norm(x, rm, rv, ww, bb, training=False, eps=eps)
    dy = torch.randn(shape, dtype=torch.float64, generator=gen)
    y.backward(dy)
    y_ref = ref.forward_eval(to_np(x), to_np(rm), to_np(rv), to_np(ww), to_np(bb), eps=eps)
    assert_tight(y, y_ref, **F64)
    invstd = 1.0 / np.sqrt(to_np(rv) + eps)
    dx, dw, db = ref.backward(to_np(dy), to_np(x), to_np(rm), invstd, to_np(ww), training=False)
    assert_tight(x.grad, dx, **F64)
    if affine:
        assert_tight(w.grad, dw, **F64)
        assert_tight(b.grad, db, **F64)


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_running_stats_several_steps(ref, gen, momentum):
    """nn.BatchNorm2d (float64) over several steps vs the reference update chain,
    including momentum=None (cumulative moving average)."""
    m = torch.nn.BatchNorm2d(3, momentum=momentum).double()
    rm, rv = to_np(m.running_mean), to_np(m.running_var)
    for step in range(1, 5):
        x = torch.randn(2 + step, 3, 3, 2, dtype=torch.float64, generator=gen) * step + step
        m(x)
        _, mean, _ = ref.forward_train(to_np(x))
        rm, rv = ref.update_running_stats(
            rm, rv, mean, ref.batch_var(to_np(x)), x.numel() // 3, momentum=momentum, num_batches_tracked=step
        )
        assert int(m.num_batches_tracked) == step
        assert_tight(m.running_mean, rm, **F64)
        assert_tight(m.running_var, rv, **F64)


def test_update_running_stats_returns_new_arrays(ref):
    rm = np.zeros(2)
    rv = np.ones(2)
    new_m, new_v = ref.update_running_stats(rm, rv, np.array([1.0, 2.0]), np.array([2.0, 4.0]), 3, momentum=0.5)
    np.testing.assert_array_equal(rm, np.zeros(2))
    np.testing.assert_array_equal(rv, np.ones(2))
    # unbiased: var * n / (n - 1) = var * 1.5
    np.testing.assert_allclose(new_m, [0.5, 1.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(new_v, [0.5 + 0.5 * 3.0, 0.5 + 0.5 * 6.0], rtol=0, atol=1e-15)
    new_m, new_v = ref.update_running_stats(rm, rv, np.array([1.0, 2.0]), np.array([2.0, 4.0]), 3,
                                            momentum=None, num_batches_tracked=4)
    np.testing.assert_allclose(new_m, [0.25, 0.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(new_v, [0.75 + 0.25 * 3.0, 0.75 + 0.25 * 6.0], rtol=0, atol=1e-15)


def test_two_pass_variance_is_exact_with_large_offset(ref):
    """A huge common offset must not destroy the variance (no E[x^2]-E[x]^2)."""
    base = np.array([-1.5, -0.5, 0.5, 1.5, 0.0, 0.0]).reshape(3, 1, 2)  # exact in float64
    x = base + 1e9
    y, mean, invstd = ref.forward_train(x, eps=0.0)
    var_exact = (base ** 2).mean()
    np.testing.assert_allclose(ref.batch_var(x), [var_exact], rtol=1e-12, atol=0)
    np.testing.assert_allclose(mean, [1e9], rtol=0, atol=0)
    np.testing.assert_allclose(invstd, [1 / np.sqrt(var_exact)], rtol=1e-12, atol=0)
    np.testing.assert_allclose(y, base / np.sqrt(var_exact), rtol=1e-12, atol=1e-12)


def test_reference_accepts_any_rank_and_dtype(ref, gen):
    """Rank 2..5 all work; float32 input is computed in float64."""
    for shape in [(4, 2), (4, 2, 3), (4, 2, 3, 1), (4, 2, 1, 3, 1), (2, 2, 1, 1, 1, 2)]:
        x = torch.randn(shape, dtype=torch.float64, generator=gen)
        y, mean, invstd = ref.forward_train(to_np(x).astype(np.float32))
        assert y.dtype == mean.dtype == invstd.dtype == np.float64
        expected = F.batch_norm(x.float().double(), None, None, training=True)
        assert_tight(from_np(y), expected.numpy(), **F64)


def test_reference_imports_numpy_only():
    path = os.path.join(bn_utils.REPO_ROOT, "fastbn", "reference.py")
    tree = ast.parse(open(path).read())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mods.add((node.module or "").split(".")[0])
    assert mods <= {"numpy", "math", "__future__", "typing"}, mods
