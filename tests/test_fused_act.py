"""The fused activation and residual: fastbn.BatchNormAct1d/2d/3d and
fastbn.functional.batch_norm(..., activation=, residual=) against torch.nn (BatchNorm, then
the add, then the activation) and the NumPy reference, forward and backward (input, weight,
bias and residual gradients), train and eval, every dtype variant, the layouts and the CPU
kernel paths (NCHW pieces, channel blocks, spans; channels_last whole vectors and periods), on
the C++ CPU backend and on the CUDA kernels under the SIMT emulator."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bn_utils import DTYPE_VARIANTS, assert_matches, make_tensor, to_np

ACTS = {
    "relu": lambda z, s: F.relu(z),
    "silu": lambda z, s: F.silu(z),
    "leaky_relu": lambda z, s: F.leaky_relu(z, s),
    None: lambda z, s: z,
}
SLOPE = 0.2
CLS = {2: (3, 4), 3: (2, 3), 4: (2, 2), 5: (3, 3)}


def _modules(fb, x, act, pdtype, gen):
    c, rank = x.shape[1], x.dim()
    base = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
            5: torch.nn.BatchNorm3d}[rank]
    fused = {2: fb.BatchNormAct1d, 3: fb.BatchNormAct1d, 4: fb.BatchNormAct2d,
             5: fb.BatchNormAct3d}[rank]
    tm = base(c)
    with torch.no_grad():
        tm.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        tm.bias.copy_(torch.randn(c, generator=gen) * 0.5)
        tm.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
        tm.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    fm = fused(c, act=act or "none", negative_slope=SLOPE)
    fm.load_state_dict(tm.state_dict())
    return fm.to(pdtype), tm.to(pdtype)


def _reference(ref, fm, x, r, dy, act, training, eps=1e-5):
    xn, dyn, w, b = to_np(x), to_np(dy), to_np(fm.weight), to_np(fm.bias)
    rn = None if r is None else to_np(r)
    if training:
        z, mean, invstd = ref.forward_train(xn, w, b, eps=eps)
    else:
        mean, var = to_np(fm.running_mean), to_np(fm.running_var)
        z, invstd = ref.forward_eval(xn, mean, var, w, b, eps=eps), 1.0 / np.sqrt(var + eps)
    if rn is not None:
        z = z + rn
    y = ref.activation(z, act, SLOPE)
    grads = ref.fused_backward(dyn, xn, mean, invstd, w, b, rn, act, SLOPE, training=training)
    scale = float(np.abs(w * invstd).max() * np.abs(dyn).max())
    return y, grads, scale, float(np.abs(dyn).max() * np.sqrt(xn.size / xn.shape[1]) * 4)


def run_fused(fb, ref, gen, shape, variant, layout, act, residual, training, backend="cpu"):
    dtype, pdtype = DTYPE_VARIANTS[variant]
    x = make_tensor(shape, dtype, layout, gen, scale=1.5, offset=0.3)
    r = make_tensor(shape, dtype, layout, gen) if residual else None
    dy = make_tensor(shape, dtype, "contiguous", gen)
    fm, tm = _modules(fb, x, act, pdtype, gen)
    fm.train(training)
    tm.train(training)
    y_ref, (dx_r, dw_r, db_r, dr_r), dx_scale, dw_scale = _reference(ref, fm, x, r, dy, act, training)

    xf = x.detach().requires_grad_()
    rf = None if r is None else r.detach().requires_grad_()
    with fb.backend(backend):
        yf = fm(xf, rf)
        yf.backward(dy)
    xt = x.detach().contiguous().requires_grad_()
    rt = None if r is None else r.detach().contiguous().requires_grad_()
    zt = tm(xt)
    yt = ACTS[act](zt + rt if rt is not None else zt, SLOPE)
    yt.backward(dy)

    label = f"{backend} {variant} {layout} act={act} residual={residual} training={training}"
    assert yf.shape == x.shape and yf.dtype == x.dtype
    assert_matches(yf, yt, y_ref, f"{label} output", in_dtype=dtype)
    assert_matches(xf.grad, xt.grad, dx_r, f"{label} grad input", in_dtype=dtype, scale=dx_scale)
    assert_matches(fm.weight.grad, tm.weight.grad, dw_r, f"{label} grad weight", in_dtype=dtype,
                   scale=dw_scale)
    assert_matches(fm.bias.grad, tm.bias.grad, db_r, f"{label} grad bias", in_dtype=dtype,
                   scale=dw_scale)
    if residual:
        assert_matches(rf.grad, rt.grad, dr_r, f"{label} grad residual", in_dtype=dtype)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(fm, name).double(), getattr(tm, name).double(),
                                   rtol=2e-3 if dtype in (torch.float16, torch.bfloat16) else 1e-5,
                                   atol=1e-5, msg=lambda m: f"{label} {name}: {m}")


# Shapes reaching each CPU path (see csrc/cpu/batch_norm_cpu.cpp): NCHW long runs (pieces and
# paired channel blocks), 7×7 with 128 channels (spans), one channel (pieces spread over the
# threads), short odd runs; channels_last with whole vectors (64 channels) and by periods (3).
SHAPES = [(4, 64, 20, 20), (4, 128, 7, 7), (6, 1, 9, 11), (3, 5, 3, 5), (4, 3, 10, 10), (8, 48)]
CASES = [
    pytest.param(shape, layout, variant, act, residual, training,
                 id=f"{'x'.join(map(str, shape))}-{layout}-{variant}-{act}-{'res' if residual else 'nores'}-{'train' if training else 'eval'}")
    for shape in SHAPES
    for layout in (("contiguous", "channels_last") if len(shape) == 4 else ("contiguous",))
    for variant in ("f32", "f64", "bf16-mixed", "f16")
    for act in ("relu", "silu", "leaky_relu", None)
    for residual in (False, True)
    for training in (True, False)
    if not (act is None and not residual)
]


@pytest.mark.parametrize("shape,layout,variant,act,residual,training", CASES)
def test_fused_cpu(fb, ref, gen, shape, layout, variant, act, residual, training):
    run_fused(fb, ref, gen, shape, variant, layout, act, residual, training)


SIMT_CASES = [
    pytest.param(shape, layout, variant, act, residual, training,
                 id=f"{'x'.join(map(str, shape))}-{layout}-{variant}-{act}-{'res' if residual else 'nores'}-{'train' if training else 'eval'}")
    for shape in [(2, 16, 6, 8), (3, 5, 3, 5)]
    for layout in ("contiguous", "channels_last")
    for variant in ("f32", "bf16-mixed")
    for act in ("relu", "silu", "leaky_relu")
    for residual in (False, True)
    for training in (True, False)
] + [pytest.param((2, 8, 4, 4), "strided", "f64", "silu", True, True, id="strided-f64-silu")]


@pytest.mark.parametrize("shape,layout,variant,act,residual,training", SIMT_CASES)
def test_fused_simt(fb, ref, gen, shape, layout, variant, act, residual, training):
    run_fused(fb, ref, gen, shape, variant, layout, act, residual, training, backend="simt")


def test_strided_and_permuted_inputs(fb, ref, gen):
    for layout in ("strided", "permuted"):
        run_fused(fb, ref, gen, (3, 6, 5, 7), "f32", layout, "relu", True, True)


def test_functional_matches_module(fb, gen):
    x = make_tensor((4, 8, 5, 5), torch.float32, "contiguous", gen)
    r = make_tensor((4, 8, 5, 5), torch.float32, "contiguous", gen)
    m = fb.BatchNormAct2d(8, act="silu")
    rm, rv = m.running_mean.clone(), m.running_var.clone()
    y = fb.functional.batch_norm(x, rm, rv, m.weight, m.bias, training=True, activation="silu",
                                 residual=r)
    torch.testing.assert_close(y, m(x, r), rtol=0, atol=0)
    torch.testing.assert_close(rm, m.running_mean, rtol=0, atol=0)


def test_state_dict_and_repr(fb):
    t = torch.nn.BatchNorm2d(5)
    m = fb.BatchNormAct2d(5, act="leaky_relu", negative_slope=0.1)
    assert isinstance(m, torch.nn.BatchNorm2d)
    assert m.state_dict().keys() == t.state_dict().keys()
    m.load_state_dict(t.state_dict(), strict=True)
    assert "act='leaky_relu'" in repr(m) and "negative_slope=0.1" in repr(m)


def test_no_extra_saved_tensor_without_residual(fb, gen):
    """The backward recomputes the activation's input: the graph keeps the input, weight,
    bias and statistics, never an input-sized tensor besides the input (and the residual)."""
    x = make_tensor((4, 8, 6, 6), torch.float32, "contiguous", gen).requires_grad_()
    m = fb.BatchNormAct2d(8, act="relu")
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        m(x).sum().backward()
    assert sorted(sizes, reverse=True)[:2] == [x.numel(), 8], sizes


BAD = [
    ("residual of another shape", lambda x: torch.zeros(4, 8, 6, 5), ValueError, "residual has shape"),
    ("residual of another dtype", lambda x: torch.zeros(4, 8, 6, 6, dtype=torch.float64), RuntimeError, "residual has dtype"),
    ("residual on meta", lambda x: torch.zeros(4, 8, 6, 6, device="meta"), RuntimeError, "residual is on"),
]


@pytest.mark.parametrize("what,make,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_residual_leaves_state(fb, gen, what, make, exc, match):
    x = make_tensor((4, 8, 6, 6), torch.float32, "contiguous", gen)
    m = fb.BatchNormAct2d(8)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(exc, match=match):
        m(x, make(x))
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_unknown_activation(fb, gen):
    with pytest.raises(ValueError, match="unknown activation"):
        fb.BatchNormAct2d(8, act="gelu")
    x = make_tensor((4, 8, 6, 6), torch.float32, "contiguous", gen)
    rm, rv = torch.zeros(8), torch.ones(8)
    with pytest.raises(ValueError, match="unknown activation"):
        fb.functional.batch_norm(x, rm, rv, training=True, activation="tanh")
    with pytest.raises(ValueError, match="activation must be"):
        torch.ops.fastbn.batch_norm_eval(x, None, None, rm, rv, 1e-5, None, 7, 0.01)
    torch.testing.assert_close(rm, torch.zeros(8), rtol=0, atol=0)
