"""fastbn.BatchNorm1d/2d/3d against the NumPy reference and torch.nn.

Every step runs fastbn and torch.nn on identical state and input, then
compares outputs, input/weight/bias gradients, running statistics and
num_batches_tracked with the float64 reference (tight for float32/float64,
relative to torch.nn's own error for float16/bfloat16) and with torch.nn.

Parametrization: a full cross product of module x shape x layout x dtype on
the default configuration (test_core), and a full cross product of module x
affine x track_running_stats x momentum x eps x dtype with shapes and layouts
rotated through (test_config).
"""

import itertools

import numpy as np
import pytest
import torch

from bn_utils import (
    DTYPE_VARIANTS,
    assert_no_crash,
    HALF_DTYPES,
    assert_error_bound,
    assert_matches,
    assert_tight,
    channels_last_format,
    from_np,
    layouts_for_rank,
    make_tensor,
    max_abs_err,
    to_np,
)

CLS = {1: "BatchNorm1d", 2: "BatchNorm2d", 3: "BatchNorm3d"}

# odd / prime sizes, C=1, two values per channel ((2, C, 1..) and N=1 with 2
# spatial), 1x1 spatial, spatial sizes that are not a multiple of a vector width
SHAPES = {
    1: [(2, 1), (13, 4), (7, 3, 5), (1, 2, 2), (3, 5, 31), (2, 3, 67)],
    2: [(2, 3, 1, 1), (1, 2, 2, 1), (3, 1, 1, 7), (2, 4, 13, 1), (3, 5, 1, 67), (2, 3, 5, 7)],
    3: [(2, 2, 1, 1, 1), (1, 3, 1, 1, 2), (2, 1, 3, 1, 7), (3, 4, 1, 13, 1), (2, 3, 3, 2, 5), (1, 2, 31, 1, 1)],
}


def make_pair(fb, dim, c, pdtype, gen, **cfg):
    """(fastbn module, torch.nn module) with identical random params/buffers."""
    tm = getattr(torch.nn, CLS[dim])(c, **cfg)
    fm = getattr(fb, CLS[dim])(c, **cfg)
    assert isinstance(fm, type(tm)) and type(fm) is not type(tm)
    with torch.no_grad():
        if tm.affine:
            tm.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            tm.bias.copy_(torch.randn(c, generator=gen))
        if tm.track_running_stats:
            tm.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
            tm.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    fm.load_state_dict(tm.state_dict())
    return fm.to(pdtype), tm.to(pdtype)


def _snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def check_step(ref, fm, tm, x, dy, label=""):
    """One forward/backward of both modules on the same values of ``x``;
    torch.nn's state is first synchronised to fastbn's so that both start from
    identical state, and the reference is computed from that state."""
    tm.load_state_dict(fm.state_dict())
    tm.train(fm.training)
    for p in list(fm.parameters()) + list(tm.parameters()):
        p.grad = None
    pre = _snapshot(fm)
    eps = fm.eps
    c = x.shape[1]
    n = x.numel() // c

    x_before, dy_before = x.clone(), dy.clone()
    xf = x.detach().requires_grad_()
    # torch.nn runs on a contiguous copy: its CPU backward is wrong for some
    # ambiguous strides (e.g. N=1 permuted views), and its error on the
    # contiguous input is the fair baseline for the half-precision bounds
    xt = x.detach().contiguous().requires_grad_()
    yf = fm(xf)
    yt = tm(xt)
    yf.backward(dy)
    yt.backward(dy)

    assert yf.shape == x.shape and yf.dtype == x.dtype, (label, yf.shape, yf.dtype)
    fmt = channels_last_format(x)
    if fmt is not None:
        assert yf.is_contiguous(memory_format=fmt), f"{label}: output lost {fmt}"
    assert xf.grad.shape == x.shape and xf.grad.dtype == x.dtype
    # inputs are read-only
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)
    torch.testing.assert_close(dy, dy_before, rtol=0, atol=0)

    w = to_np(fm.weight)
    b = to_np(fm.bias)
    bn_training = fm.training or fm.running_mean is None
    xn, dyn = to_np(x), to_np(dy)
    if bn_training:
        y_ref, mean, invstd = ref.forward_train(xn, w, b, eps=eps)
        dx, dw, db = ref.backward(dyn, xn, mean, invstd, w, training=True)
    else:
        rm, rv = to_np(pre["running_mean"]), to_np(pre["running_var"])
        y_ref = ref.forward_eval(xn, rm, rv, w, b, eps=eps)
        dx, dw, db = ref.backward(dyn, xn, rm, 1.0 / np.sqrt(rv + eps), w, training=False)

    # magnitudes of the terms that cancel in the gradients
    inv = invstd if bn_training else 1.0 / np.sqrt(rv + eps)
    w1 = np.ones(c) if w is None else w
    xhat_max = np.abs(xn - (mean if bn_training else rm).reshape((1, c) + (1,) * (x.dim() - 2))).max() * inv.max()
    dy_max = np.abs(dyn).max() if dyn.size else 0.0
    dx_scale = float(np.abs(w1 * inv).max() * dy_max)
    dw_scale = float(dy_max * max(xhat_max, 1.0) * np.sqrt(n))

    assert_matches(yf, yt, y_ref, f"{label} output", in_dtype=x.dtype)
    assert_matches(xf.grad, xt.grad, dx, f"{label} grad input", in_dtype=x.dtype, scale=dx_scale)
    if fm.affine:
        assert fm.weight.grad.dtype == fm.weight.dtype
        assert_matches(fm.weight.grad, tm.weight.grad, dw, f"{label} grad weight", in_dtype=x.dtype, scale=dw_scale)
        assert_matches(fm.bias.grad, tm.bias.grad, db, f"{label} grad bias", in_dtype=x.dtype, scale=dw_scale)
    else:
        assert fm.weight is None and fm.bias is None

    if fm.track_running_stats:
        nbt = int(pre["num_batches_tracked"])
        if fm.training:
            nbt += 1
            new_m, new_v = ref.update_running_stats(
                to_np(pre["running_mean"]), to_np(pre["running_var"]), mean, ref.batch_var(xn), n,
                momentum=fm.momentum, num_batches_tracked=nbt,
            )
            assert_matches(fm.running_mean, tm.running_mean, new_m, f"{label} running_mean", in_dtype=x.dtype)
            assert_matches(fm.running_var, tm.running_var, new_v, f"{label} running_var", in_dtype=x.dtype)
        else:
            torch.testing.assert_close(fm.running_mean, pre["running_mean"], rtol=0, atol=0)
            torch.testing.assert_close(fm.running_var, pre["running_var"], rtol=0, atol=0)
        assert fm.num_batches_tracked.dtype == torch.int64
        torch.testing.assert_close(fm.num_batches_tracked, torch.tensor(nbt), rtol=0, atol=0)
        torch.testing.assert_close(fm.num_batches_tracked, tm.num_batches_tracked, rtol=0, atol=0)
    else:
        assert fm.running_mean is None and fm.running_var is None and fm.num_batches_tracked is None
    return yf


def run_case(fb, ref, gen, dim, shape, variant, layout, train_steps=2, eval_steps=1, **cfg):
    dtype, pdtype = DTYPE_VARIANTS[variant]
    fm, tm = make_pair(fb, dim, shape[1], pdtype, gen, **cfg)
    for step in range(train_steps):
        fm.train()
        x = make_tensor(shape, dtype, layout, gen, scale=1.0 + step, offset=0.5 * step)
        dy = make_tensor(shape, dtype, "contiguous", gen)
        check_step(ref, fm, tm, x, dy, label=f"train step {step}")
    for step in range(eval_steps):
        fm.eval()
        x = make_tensor(shape, dtype, layout, gen, scale=1.5, offset=0.25)
        dy = make_tensor(shape, dtype, "contiguous", gen)
        check_step(ref, fm, tm, x, dy, label=f"eval step {step}")


# ------------------------------------------------------------------ core
CORE = [
    pytest.param(dim, shape, layout, variant, id=f"{CLS[dim]}-{'x'.join(map(str, shape))}-{layout}-{variant}")
    for dim in (1, 2, 3)
    for shape in SHAPES[dim]
    for layout in layouts_for_rank(len(shape))
    for variant in DTYPE_VARIANTS
]


@pytest.mark.parametrize("dim,shape,layout,variant", CORE)
def test_core(fb, ref, gen, dim, shape, layout, variant):
    run_case(fb, ref, gen, dim, shape, variant, layout)


# NCHW maps shorter than 4 vectors with enough channels go by spans (span_blocks in
# csrc/cpu/batch_norm_cpu.cpp: 8 periods of lcm(S, W) lanes): 7×7 with 128 channels, 3×3 with
# 256, 5×5 with 136 (8 channels after the last whole period with 16 float lanes). SHAPES has
# too few channels for them. Every dtype; contiguous and strided (copied to contiguous).
SPAN_CASES = [
    pytest.param(shape, layout, variant, id=f"{'x'.join(map(str, shape))}-{layout}-{variant}")
    for shape in [(4, 128, 7, 7), (6, 256, 3, 3), (3, 136, 5, 5)]
    for layout in ("contiguous", "strided")
    for variant in DTYPE_VARIANTS
]


@pytest.mark.parametrize("shape,layout,variant", SPAN_CASES)
def test_spans(fb, ref, gen, shape, layout, variant):
    run_case(fb, ref, gen, 2, shape, variant, layout)


# ------------------------------------------------------------------ config
def _config_params():
    out = []
    variants = ["f32", "bf16-mixed", "f64", "f16"]
    combos = itertools.product((1, 2, 3), (True, False), (True, False), (0.1, None, 0.7), (1e-5, 1e-3), variants)
    for i, (dim, affine, track, momentum, eps, variant) in enumerate(combos):
        shapes = [s for s in SHAPES[dim] if s[0] * int(np.prod(s[2:])) >= 2]
        shape = shapes[(i // len(variants)) % len(shapes)]
        lays = layouts_for_rank(len(shape))
        layout = lays[(i // 3) % len(lays)]
        pid = (
            f"{CLS[dim]}-{'affine' if affine else 'noaffine'}-{'track' if track else 'notrack'}"
            f"-m{momentum}-eps{eps}-{variant}-{'x'.join(map(str, shape))}-{layout}"
        )
        out.append(pytest.param(dim, affine, track, momentum, eps, variant, shape, layout, id=pid))
    return out


@pytest.mark.parametrize("dim,affine,track,momentum,eps,variant,shape,layout", _config_params())
def test_config(fb, ref, gen, dim, affine, track, momentum, eps, variant, shape, layout):
    if momentum is None and not track:
        # momentum=None without running stats: nothing to average; must not crash
        assert_no_crash(
            "import torch, fastbn\n"
            "m = fastbn.BatchNorm1d(3, momentum=None, track_running_stats=False)\n"
            "m(torch.randn(4, 3)).sum().backward()\n",
            "BatchNorm1d(momentum=None, track_running_stats=False) in training",
        )
    run_case(
        fb, ref, gen, dim, shape, variant, layout, train_steps=3, eval_steps=1,
        affine=affine, track_running_stats=track, momentum=momentum, eps=eps,
    )


# ------------------------------------------------------------------ extra cases
@pytest.mark.parametrize("variant", ["f32", "bf16-mixed", "f16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_large_non_vector_width_sizes(fb, ref, gen, variant, layout):
    run_case(fb, ref, gen, 2, (3, 5, 17, 19), variant, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_large_non_vector_width_sizes_3d(fb, ref, gen, layout):
    run_case(fb, ref, gen, 3, (2, 3, 5, 7, 11), "f32", layout)


def test_odd_permuted_view(fb, ref, gen):
    """A transposed view (N and spatial dims swapped) of a 4D tensor."""
    base = torch.randn(7, 3, 2, 5, generator=gen)
    x = base.transpose(0, 2)  # (2, 3, 7, 5), non-contiguous
    assert not x.is_contiguous()
    fm, tm = make_pair(fb, 2, 3, torch.float32, gen)
    check_step(ref, fm, tm, x, torch.randn(x.shape, generator=gen), "transposed")
    fm.eval()
    check_step(ref, fm, tm, x, torch.randn(x.shape, generator=gen), "transposed eval")


def check_train_step_numerics(ref, fm, tm, x, gen):
    """One training step of fastbn and torch.nn on x: the output, the gradients and the
    running stats must be as close to the float64 reference as torch.nn's (assert_error_bound)."""
    rm0, rv0 = to_np(fm.running_mean), to_np(fm.running_var)
    dy = make_tensor(x.shape, x.dtype, "contiguous", gen)
    xf, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    yf, yt = fm(xf), tm(xt)
    yf.backward(dy)
    yt.backward(dy)
    xn = to_np(x)
    y_ref, mean, invstd = ref.forward_train(xn, to_np(fm.weight), to_np(fm.bias), eps=fm.eps)
    dx, dw, db = ref.backward(to_np(dy), xn, mean, invstd, to_np(fm.weight))
    # the normalized output must be meaningful at all (noise resolved)
    assert_tight(yt, y_ref, rtol=0, atol=0.1)
    assert_error_bound(yf, yt, y_ref, "output")
    assert_error_bound(xf.grad, xt.grad, dx, "grad input")
    assert_error_bound(fm.weight.grad, tm.weight.grad, dw, "grad weight")
    assert_error_bound(fm.bias.grad, tm.bias.grad, db, "grad bias")
    count = x.numel() // x.shape[1]
    new_m, new_v = ref.update_running_stats(rm0, rv0, mean, ref.batch_var(xn), count, momentum=0.1)
    assert_error_bound(fm.running_mean, tm.running_mean, new_m, "running_mean")
    assert_error_bound(fm.running_var, tm.running_var, new_v, "running_var")


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_large_offset_numerics(fb, ref, gen, dim):
    """1000 + small noise in float32 must normalize as well as torch.nn does."""
    shape = {1: (64, 4, 33), 2: (8, 4, 13, 11), 3: (4, 3, 5, 7, 9)}[dim]
    fm, tm = make_pair(fb, dim, shape[1], torch.float32, gen)
    x = make_tensor(shape, torch.float32, "contiguous", gen, scale=1e-2, offset=1000.0)
    check_train_step_numerics(ref, fm, tm, x, gen)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(16, 4, 7, 7), (4, 3, 96, 96), (300, 24, 3, 3), (8, 200, 5, 5),
                                   (8, 257, 5, 5)])
@pytest.mark.parametrize("outlier", [0.03, 5.0])
def test_first_element_outlier_numerics(fb, ref, gen, shape, layout, outlier):
    """The CPU statistics take one pass shifted by the first element of each piece of a
    channel (NCHW) or by the mean of the first 8 rows of each band (channels_last). A shift
    far out (5.0 is 500 standard deviations of the rest) must send its channels to the exact
    two-pass path instead of cancelling away the variance; one 3 deviations out stays on the
    one-pass path. (4, 3, 96, 96) has two pieces per channel, (300, 24, 3, 3) several bands;
    channels_last 4, 3, 24 and 200 channels go by periods of lcm(C, W) elements, and the 257
    of (8, 257, 5, 5) (a period too long for a panel at every vector width) span column
    chunks of every width and a scalar remainder (shifted by its first row). That the
    redo happens is seen in the saved invstd (tests/test_cpu_statistics.py): these outputs are
    as accurate either way."""
    fm, tm = make_pair(fb, 2, shape[1], torch.float32, gen)
    x = make_tensor(shape, torch.float32, layout, gen, scale=1e-2, offset=1000.0)
    with torch.no_grad():
        if layout == "channels_last":  # the first 8 rows (N, H, W order) of the first band
            x.permute(0, 2, 3, 1).reshape(-1, shape[1])[:8] = 1000.0 + outlier
        else:
            x[0, :, 0, 0] = 1000.0 + outlier
    check_train_step_numerics(ref, fm, tm, x, gen)


@pytest.mark.parametrize("shape", [(320, 128, 7, 7), (300, 256, 3, 3)])
@pytest.mark.parametrize("outlier", [0.03, 5.0])
def test_span_shift_outlier_numerics(fb, ref, gen, shape, outlier):
    """NCHW maps shorter than 4 vectors, with enough channels, are reduced by spans of several
    channels (csrc/cpu/kernels_impl.h, ncs_span_moments) in one pass shifted by the mean of
    each channel's first 8 samples. With those samples out (5.0: 500 standard deviations of
    the rest, 6 of the whole channel; 0.03: 3 of the rest) the statistics must stay as
    accurate as torch.nn's. (The shift's distance is at most about sqrt(N / 8) standard
    deviations: the outputs here would be as accurate without the exact two-pass redo that
    moments_from_deviations orders beyond about 4; tests/test_cpu_statistics.py sees the
    redo in the saved invstd.)"""
    fm, tm = make_pair(fb, 2, shape[1], torch.float32, gen)
    x = make_tensor(shape, torch.float32, "contiguous", gen, scale=1e-2, offset=1000.0)
    with torch.no_grad():
        x[:8] = 1000.0 + outlier
    check_train_step_numerics(ref, fm, tm, x, gen)


@pytest.mark.parametrize("shape", [(16, 4, 7, 7), (8, 200, 5, 5), (4, 64, 16, 16), (5, 24, 7, 9),
                                   (3, 3, 11, 13)])
@pytest.mark.parametrize("scale, offset", [(1.0, 0.0), (1.0, 3.0), (1.0, 1000.0), (1e-2, 1000.0)])
def test_channels_last_folded_and_centred_numerics(fb, ref, gen, shape, scale, offset):
    """channels_last applies y = x·scale + (shift − center·scale) (dx alike) when every
    channel's centre lies within 4 standard deviations of zero, the centred (x − center)·scale
    + shift otherwise: offsets 0 and 3 take the folded form, 1000 the centred one. Training
    step and eval (running stats = the batch's) as close to the float64 reference as torch.nn.
    Channels that do not fill whole vectors go by periods of lcm(C, W) elements (4, 200, 24
    and 3 channels; 24 and 3 with rows left over after the last period), whole vectors (64)."""
    fm, tm = make_pair(fb, 2, shape[1], torch.float32, gen)
    x = make_tensor(shape, torch.float32, "channels_last", gen, scale=scale, offset=offset)
    check_train_step_numerics(ref, fm, tm, x, gen)
    xn = to_np(x)
    _, mean, _ = ref.forward_train(xn)
    var = ref.batch_var(xn)
    for m in (fm, tm):
        with torch.no_grad():
            m.running_mean.copy_(from_np(mean))
            m.running_var.copy_(from_np(var))
        m.eval()
    y_ref = ref.forward_eval(xn, mean, var, to_np(fm.weight), to_np(fm.bias), eps=fm.eps)
    with torch.no_grad():
        assert_error_bound(fm(x), tm(x), y_ref, "eval output")


@pytest.mark.parametrize("shape", [(8, 200, 5, 5), (4, 64, 16, 16), (2, 24, 30, 30), (16, 512, 4, 4)])
def test_channels_last_statistics_precision(fb, ref, gen, shape):
    """The channels_last column sums go by blocks of 16 rows. Summed over whole bands (up to
    256 rows) in one float accumulator they drifted: the float32 output and dX were up to 16
    ulps (of their largest value) off the float64 reference, where torch.nn and fastbn's NCHW
    path are within about 2. One band of 200 rows of 200 channels (by periods of 2 rows with
    16 float lanes), four bands of 256 rows, a narrow row, and wide rows in bands of 128."""
    fm, _ = make_pair(fb, 2, shape[1], torch.float32, gen)
    x = make_tensor(shape, torch.float32, "channels_last", gen)
    dy = make_tensor(shape, torch.float32, "channels_last", gen)
    xg = x.clone().requires_grad_()
    y = fm(xg)
    y.backward(dy)
    xn = to_np(x)
    y_ref, mean, invstd = ref.forward_train(xn, to_np(fm.weight), to_np(fm.bias), eps=fm.eps)
    dx_ref, _, _ = ref.backward(to_np(dy), xn, mean, invstd, to_np(fm.weight))
    ulp = torch.finfo(torch.float32).eps
    for name, got, want in (("output", y, y_ref), ("grad input", xg.grad, dx_ref)):
        err = max_abs_err(got, want) / np.abs(want).max()
        assert err <= 4 * ulp, f"{name}: {err / ulp:.1f} ulps of the largest value"


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("momentum", [None, 0.1])
def test_several_steps_then_eval_match_torch(fb, gen, dim, momentum):
    """No re-synchronisation: 6 training steps then eval, fastbn and torch.nn
    stay equal (running stats, num_batches_tracked, outputs), incl. the
    cumulative average of momentum=None."""
    shape = {1: (6, 4, 9), 2: (3, 4, 5, 7), 3: (2, 4, 3, 5, 3)}[dim]
    fm, tm = make_pair(fb, dim, 4, torch.float32, gen, momentum=momentum)
    for step in range(6):
        x = make_tensor(shape, torch.float32, "contiguous", gen, scale=1 + step, offset=step - 2.0)
        torch.testing.assert_close(fm(x), tm(x))
        torch.testing.assert_close(fm.running_mean, tm.running_mean)
        torch.testing.assert_close(fm.running_var, tm.running_var)
        torch.testing.assert_close(fm.num_batches_tracked, tm.num_batches_tracked, rtol=0, atol=0)
    assert int(fm.num_batches_tracked) == 6
    fm.eval()
    tm.eval()
    x = make_tensor(shape, torch.float32, "contiguous", gen)
    torch.testing.assert_close(fm(x), tm(x))
    torch.testing.assert_close(fm.num_batches_tracked, torch.tensor(6), rtol=0, atol=0)


# ------------------------------------------------------------------ structure
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_params_buffers_state_dict_like_torch(fb, dim, affine, track):
    kw = dict(eps=1e-3, momentum=0.2, affine=affine, track_running_stats=track, device="cpu", dtype=torch.float64)
    fm = getattr(fb, CLS[dim])(5, **kw)
    tm = getattr(torch.nn, CLS[dim])(5, **kw)
    assert isinstance(fm, getattr(torch.nn, CLS[dim]))
    assert (fm.num_features, fm.eps, fm.momentum, fm.affine, fm.track_running_stats) == (5, 1e-3, 0.2, affine, track)
    assert [n for n, _ in fm.named_parameters()] == [n for n, _ in tm.named_parameters()]
    assert [n for n, _ in fm.named_buffers()] == [n for n, _ in tm.named_buffers()]
    sf, st = fm.state_dict(), tm.state_dict()
    assert list(sf) == list(st)
    for k in st:
        assert sf[k].dtype == st[k].dtype and sf[k].shape == st[k].shape, k
        torch.testing.assert_close(sf[k], st[k], rtol=0, atol=0)
    if not affine:
        assert fm.weight is None and fm.bias is None
    if not track:
        assert fm.running_mean is None and fm.running_var is None and fm.num_batches_tracked is None
        assert not any("running" in k or "num_batches" in k for k in sf)
    else:
        assert sf["num_batches_tracked"].dtype == torch.int64
    assert repr(fm).split("(", 1)[1] == repr(tm).split("(", 1)[1]


def test_training_step_bumps_version_counters_of_mutated_buffers(fb, gen):
    """The training op updates running_mean, running_var and num_batches_tracked in place; their
    version counters move (as num_batches_tracked's does in torch.nn), with or without grad
    mode, so that autograd notices a buffer saved for a backward and changed since. Eval
    leaves them."""
    fm = fb.BatchNorm2d(3)
    x = make_tensor((4, 3, 5, 2), torch.float32, "contiguous", gen)
    bufs = (fm.running_mean, fm.running_var, fm.num_batches_tracked)
    for grad in (True, False):
        before = [b._version for b in bufs]
        with torch.set_grad_enabled(grad):
            fm(x)
        assert [b._version - v for b, v in zip(bufs, before)] == [1, 1, 1]
    fm.eval()
    before = [b._version for b in bufs]
    fm(x)
    assert [b._version for b in bufs] == before


def test_parametrized_and_functional_call_params_are_used(fb, gen):
    """forward reads parameters and buffers from the module's tables for speed; a parametrized
    weight (a property, no longer in the table) and torch.func.functional_call's swapped
    tensors must still be the ones used, as in torch.nn."""
    from torch.nn.utils import parametrize

    class Doubled(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    fm, tm = make_pair(fb, 2, 3, torch.float32, gen)
    for m in (fm, tm):
        parametrize.register_parametrization(m, "weight", Doubled())
    x = make_tensor((4, 3, 5, 2), torch.float32, "contiguous", gen)
    torch.testing.assert_close(fm(x), tm(x))
    torch.testing.assert_close(fm.running_mean, tm.running_mean)

    fm, tm = make_pair(fb, 2, 3, torch.float32, gen)
    swapped = {"weight": torch.rand(3, generator=gen) + 1, "bias": torch.randn(3, generator=gen),
               "running_mean": torch.randn(3, generator=gen), "running_var": torch.rand(3, generator=gen) + 1}
    for training in (True, False):
        fm.train(training)
        tm.train(training)
        sf = {k: v.clone() for k, v in swapped.items()}
        st = {k: v.clone() for k, v in swapped.items()}
        yf = torch.func.functional_call(fm, sf, (x,))
        yt = torch.func.functional_call(tm, st, (x,))
        torch.testing.assert_close(yf, yt)
        torch.testing.assert_close(sf["running_mean"], st["running_mean"])


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_state_dict_round_trip_with_torch(fb, gen, dim):
    shape = {1: (4, 3, 5), 2: (4, 3, 5, 2), 3: (2, 3, 2, 3, 2)}[dim]
    # torch.nn -> fastbn
    tm = getattr(torch.nn, CLS[dim])(3)
    with torch.no_grad():
        tm.weight.uniform_(0.5, 1.5)
        tm.bias.normal_()
    for _ in range(3):
        tm(torch.randn(shape, generator=gen))
    fm = getattr(fb, CLS[dim])(3)
    assert fm.load_state_dict(tm.state_dict(), strict=True) is not None
    x = torch.randn(shape, generator=gen)
    for mode in (True, False):
        tm.train(mode)
        fm.train(mode)
        torch.testing.assert_close(fm(x), tm(x))
    torch.testing.assert_close(fm.num_batches_tracked, tm.num_batches_tracked, rtol=0, atol=0)
    # fastbn -> torch.nn
    fm2 = getattr(fb, CLS[dim])(3)
    with torch.no_grad():
        fm2.weight.uniform_(0.5, 1.5)
        fm2.bias.normal_()
    for _ in range(2):
        fm2(torch.randn(shape, generator=gen))
    tm2 = getattr(torch.nn, CLS[dim])(3)
    tm2.load_state_dict(fm2.state_dict(), strict=True)
    for k, v in fm2.state_dict().items():
        torch.testing.assert_close(tm2.state_dict()[k], v, rtol=0, atol=0)
    fm2.eval()
    tm2.eval()
    torch.testing.assert_close(fm2(x), tm2(x))


def test_state_dict_version_1_backfills_num_batches_tracked(fb):
    """Old (version 1) checkpoints without num_batches_tracked load like torch.nn."""
    tm = torch.nn.BatchNorm2d(3)
    fm = fb.BatchNorm2d(3)
    sd = tm.state_dict()
    del sd["num_batches_tracked"]
    sd._metadata = {"": {"version": 1}}
    tm.load_state_dict(sd)
    fm.load_state_dict(sd)
    torch.testing.assert_close(fm.num_batches_tracked, tm.num_batches_tracked, rtol=0, atol=0)


# ------------------------------------------------------------------ empty batch
EMPTY_CASES = [
    pytest.param(dim, training, variant, momentum, track, id=f"{CLS[dim]}-{'train' if training else 'eval'}-{variant}"
                 f"-m{momentum}-{'track' if track else 'notrack'}")
    for dim in (1, 2, 3)
    for training in (True, False)
    for variant in ("f32", "bf16-mixed")
    for momentum, track in ((0.1, True),)
] + [
    pytest.param(2, True, "f32", None, True, id="BatchNorm2d-train-f32-mNone-track"),
    pytest.param(2, True, "f64", 0.1, False, id="BatchNorm2d-train-f64-m0.1-notrack"),
    pytest.param(2, False, "f32", 0.1, False, id="BatchNorm2d-eval-f32-m0.1-notrack"),
]


@pytest.mark.parametrize("dim,training,variant,momentum,track", EMPTY_CASES)
def test_empty_batch(fb, gen, dim, training, variant, momentum, track):
    dtype, pdtype = DTYPE_VARIANTS[variant]
    shape = {1: (0, 3, 4), 2: (0, 3, 4, 5), 3: (0, 3, 2, 2, 2)}[dim]
    fm, tm = make_pair(fb, dim, 3, pdtype, gen, momentum=momentum, track_running_stats=track)
    fm.train(training)
    tm.train(training)
    pre = _snapshot(fm)
    xf = torch.empty(shape, dtype=dtype).requires_grad_()
    xt = torch.empty(shape, dtype=dtype).requires_grad_()
    yf, yt = fm(xf), tm(xt)
    assert yf.shape == shape and yf.dtype == dtype
    assert yf.requires_grad and yf.grad_fn is not None  # keeps the graph
    if track:
        # running stats untouched; num_batches_tracked exactly like torch.nn
        torch.testing.assert_close(fm.running_mean, pre["running_mean"], rtol=0, atol=0)
        torch.testing.assert_close(fm.running_var, pre["running_var"], rtol=0, atol=0)
        torch.testing.assert_close(fm.num_batches_tracked, tm.num_batches_tracked, rtol=0, atol=0)
    yf.sum().backward()
    yt.sum().backward()
    assert xf.grad.shape == shape
    for name in ("weight", "bias"):
        gf, gt = getattr(fm, name).grad, getattr(tm, name).grad
        assert gf is not None and gf.shape == (3,)
        torch.testing.assert_close(gf, torch.zeros_like(gf), rtol=0, atol=0)
        torch.testing.assert_close(gf, gt, rtol=0, atol=0)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_one_value_per_channel_allowed_in_eval(fb, gen, dim):
    shape = {1: (1, 3), 2: (1, 3, 1, 1), 3: (1, 3, 1, 1, 1)}[dim]
    fm, tm = make_pair(fb, dim, 3, torch.float32, gen)
    fm.eval()
    tm.eval()
    x = torch.randn(shape, generator=gen)
    torch.testing.assert_close(fm(x), tm(x))


def test_half_module_to_dtype_keeps_int_counter(fb):
    m = fb.BatchNorm2d(4).to(torch.bfloat16)
    assert m.weight.dtype == m.running_var.dtype == torch.bfloat16
    assert m.num_batches_tracked.dtype == torch.int64
    y = m(torch.randn(3, 4, 2, 2, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(m.num_batches_tracked, torch.tensor(1), rtol=0, atol=0)
