"""fastbn.functional.batch_norm against torch.nn.functional.batch_norm and the
NumPy reference, plus float64 gradcheck of the functional and the modules."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bn_utils import DTYPE_VARIANTS, assert_matches, make_tensor, to_np

SHAPES = [(2, 1), (5, 3, 7), (3, 4, 1, 13), (2, 3, 2, 1, 5)]


def _case_params():
    out = []
    i = 0
    for shape in SHAPES:
        for training, stats in [(True, True), (True, False), (False, True)]:
            for affine in (True, False):
                variant = ["f32", "bf16-mixed", "f64", "f16", "bf16", "f16-mixed"][i % 6]
                i += 1
                out.append(pytest.param(shape, training, stats, affine, variant,
                                        id=f"{'x'.join(map(str, shape))}-{'train' if training else 'eval'}"
                                           f"-{'stats' if stats else 'nostats'}-{'affine' if affine else 'noaffine'}"
                                           f"-{variant}"))
    return out


@pytest.mark.parametrize("shape,training,stats,affine,variant", _case_params())
def test_functional_matches_reference_and_torch(fb, ref, gen, shape, training, stats, affine, variant):
    dtype, pdtype = DTYPE_VARIANTS[variant]
    c = shape[1]
    eps, momentum = 1e-4, 0.3
    x = make_tensor(shape, dtype, "contiguous", gen)
    dy = make_tensor(shape, dtype, "contiguous", gen)
    rm0 = (torch.randn(c, generator=gen) * 0.3).to(pdtype)
    rv0 = (torch.rand(c, generator=gen) + 0.5).to(pdtype)
    w0 = (torch.rand(c, generator=gen) + 0.5).to(pdtype)
    b0 = torch.randn(c, generator=gen).to(pdtype)

    def run(fn):
        xx = x.detach().clone().requires_grad_()
        w = w0.clone().requires_grad_() if affine else None
        b = b0.clone().requires_grad_() if affine else None
        rm, rv = (rm0.clone(), rv0.clone()) if stats else (None, None)
        y = fn(xx, rm, rv, w, b, training=training, momentum=momentum, eps=eps)
        y.backward(dy)
        return y, xx.grad, (w.grad if affine else None), (b.grad if affine else None), rm, rv

    yf, dxf, dwf, dbf, rmf, rvf = run(fb.functional.batch_norm)
    yt, dxt, dwt, dbt, rmt, rvt = run(F.batch_norm)

    xn, dyn = to_np(x), to_np(dy)
    wn, bn = (to_np(w0), to_np(b0)) if affine else (None, None)
    if training:
        y_ref, mean, invstd = ref.forward_train(xn, wn, bn, eps=eps)
        dx, dw, db = ref.backward(dyn, xn, mean, invstd, wn, training=True)
    else:
        invstd = 1.0 / np.sqrt(to_np(rv0) + eps)
        y_ref = ref.forward_eval(xn, to_np(rm0), to_np(rv0), wn, bn, eps=eps)
        dx, dw, db = ref.backward(dyn, xn, to_np(rm0), invstd, wn, training=False)
    assert yf.dtype == dtype and yf.shape == x.shape
    scale = float(np.abs(invstd).max() * np.abs(dyn).max() * (np.abs(wn).max() if affine else 1.0))
    assert_matches(yf, yt, y_ref, "output", in_dtype=dtype)
    assert_matches(dxf, dxt, dx, "grad input", in_dtype=dtype, scale=scale)
    if affine:
        n = x.numel() // c
        assert_matches(dwf, dwt, dw, "grad weight", in_dtype=dtype, scale=np.sqrt(n) * 4 * np.abs(dyn).max())
        assert_matches(dbf, dbt, db, "grad bias", in_dtype=dtype, scale=np.sqrt(n) * np.abs(dyn).max())
    if stats:
        if training:
            new_m, new_v = ref.update_running_stats(
                to_np(rm0), to_np(rv0), mean, ref.batch_var(xn), x.numel() // c, momentum=momentum
            )
            assert_matches(rmf, rmt, new_m, "running_mean", in_dtype=dtype)
            assert_matches(rvf, rvt, new_v, "running_var", in_dtype=dtype)
        else:
            torch.testing.assert_close(rmf, rm0, rtol=0, atol=0)
            torch.testing.assert_close(rvf, rv0, rtol=0, atol=0)


def test_functional_layouts_channels_last(fb, gen):
    x = make_tensor((3, 5, 7, 4), torch.float32, "channels_last", gen)
    rm, rv = torch.zeros(5), torch.ones(5)
    y = fb.functional.batch_norm(x, rm, rv, torch.rand(5) + 0.5, torch.randn(5), training=True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    rm2, rv2 = torch.zeros(5), torch.ones(5)
    F.batch_norm(x, rm2, rv2, training=True)
    torch.testing.assert_close(rm, rm2)
    torch.testing.assert_close(rv, rv2)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("given", ["weight", "bias"])
def test_gradients_with_only_weight_or_only_bias(fb, gen, training, given):
    # Only the given parameter gets a gradient, and it is torch's (a bias without a weight was
    # once left without one: the autograd node looked for it at the weight's place).
    x = make_tensor((4, 3, 5, 5), torch.float32, "contiguous", gen)
    dy = make_tensor((4, 3, 5, 5), torch.float32, "contiguous", gen)
    p0 = torch.rand(3, generator=gen) + 0.5
    grads = []
    for fn in (fb.functional.batch_norm, F.batch_norm):
        xx, p = x.clone().requires_grad_(), p0.clone().requires_grad_()
        kw = {given: p}
        y = fn(xx, torch.zeros(3), torch.ones(3), training=training, **kw)
        grads.append(torch.autograd.grad(y, (xx, p), dy))
    (dxf, dpf), (dxt, dpt) = grads
    torch.testing.assert_close(dxf, dxt)
    torch.testing.assert_close(dpf, dpt)


# ------------------------------------------------------------------ gradcheck (float64)
GC_SHAPES = [(4, 3), (3, 2, 5), (2, 3, 3, 2), (2, 2, 2, 1, 3)]


@pytest.mark.parametrize("shape", GC_SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_gradcheck_functional(fb, gen, shape, training, affine):
    c = shape[1]
    x = torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
    rm = torch.randn(c, dtype=torch.float64, generator=gen)
    rv = torch.rand(c, dtype=torch.float64, generator=gen) + 0.5
    if affine:
        w = (torch.rand(c, dtype=torch.float64, generator=gen) + 0.5).requires_grad_()
        b = torch.randn(c, dtype=torch.float64, generator=gen, requires_grad=True)
        fn = lambda x, w, b: fb.functional.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training)  # noqa
        inputs = (x, w, b)
    else:
        fn = lambda x: fb.functional.batch_norm(x, rm.clone(), rv.clone(), training=training)  # noqa
        inputs = (x,)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("track", [True, False], ids=["track", "notrack"])
def test_gradcheck_module(fb, gen, dim, training, affine, track):
    shape = {1: (3, 2, 4), 2: (2, 2, 3, 2), 3: (2, 2, 1, 2, 3)}[dim]
    m = getattr(fb, f"BatchNorm{dim}d")(2, affine=affine, track_running_stats=track).double()
    with torch.no_grad():
        if affine:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_()
        if track:
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 1.5)
    m.train(training)
    x = torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
    if affine:
        w, b = m.weight, m.bias

        def fn(x, w_, b_):
            # differentiate w.r.t. the module's own parameters
            return torch.func.functional_call(m, {"weight": w_, "bias": b_}, (x,))

        inputs = (x, w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_())
    else:
        fn = m
        inputs = (x,)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_gradcheck_module_eval_without_running_stats(fb, gen):
    """track_running_stats=False in eval normalizes with batch statistics."""
    m = fb.BatchNorm2d(3, track_running_stats=False).double().eval()
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(m(x), F.batch_norm(x, None, None, m.weight, m.bias, training=True))
