"""Rejected calls raise before anything is touched.

fastbn checks every argument before running: running_mean, running_var and
num_batches_tracked keep their values (torch.nn increments
num_batches_tracked and then raises for some of these; fastbn must not).
Covers the module path and fastbn.functional.batch_norm, train and eval.
"""

import pytest
import torch

RAISES = (ValueError, RuntimeError)
CLS = {1: "BatchNorm1d", 2: "BatchNorm2d", 3: "BatchNorm3d"}
MATCH_RANK = r"expected .*D input"
MATCH_CHANNELS = r"(?i)(channel|element|shape|size|feature)"
MATCH_ONE_VALUE = r"more than 1 value per channel"
MATCH_UNSUPPORTED = r"(?i)(dtype|type|support)"
MATCH_DTYPE = r"(?i)(dtype|type)"
MATCH_DEVICE = r"(?i)(device|meta)"


def _module(fb, dim, c=3, dtype=torch.float32, **kw):
    m = getattr(fb, CLS[dim])(c, **kw)
    with torch.no_grad():
        if m.affine:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_()
        if m.track_running_stats:
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(7)
    return m.to(dtype)


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _assert_unchanged(m, before):
    after = m.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0, msg=lambda s: f"{k} changed: {s}")


def _shape(dim, n=4, c=3):
    return {1: (n, c, 5), 2: (n, c, 2, 3), 3: (n, c, 2, 1, 3)}[dim]


# (dim, bad input shape)
WRONG_RANK = [(1, (4, 3, 2, 2)), (1, (3,)), (2, (4, 3, 5)), (2, (4, 3, 2, 2, 2)), (3, (4, 3, 2, 2)), (3, (4, 3))]


@pytest.mark.parametrize("dim,shape", WRONG_RANK, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_wrong_rank(fb, dim, shape, training):
    m = _module(fb, dim).train(training)
    before = _state(m)
    with pytest.raises(ValueError, match=MATCH_RANK):
        m(torch.randn(shape))
    _assert_unchanged(m, before)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "kw", [{}, {"affine": False}, {"track_running_stats": False}], ids=["default", "noaffine", "notrack"]
)
def test_module_channel_mismatch(fb, dim, training, kw):
    m = _module(fb, dim, **kw).train(training)
    before = _state(m)
    with pytest.raises(RAISES, match=MATCH_CHANNELS):
        m(torch.randn(_shape(dim, c=4)))
    _assert_unchanged(m, before)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_one_value_per_channel_training(fb, dim, momentum):
    m = _module(fb, dim, momentum=momentum)
    before = _state(m)
    shape = {1: (1, 3), 2: (1, 3, 1, 1), 3: (1, 3, 1, 1, 1)}[dim]
    with pytest.raises(ValueError, match=MATCH_ONE_VALUE):
        m(torch.randn(shape))
    _assert_unchanged(m, before)  # torch.nn would have incremented num_batches_tracked
    if dim == 1:  # (N=1, C, L=1) as well
        with pytest.raises(ValueError, match=MATCH_ONE_VALUE):
            m(torch.randn(1, 3, 1))
        _assert_unchanged(m, before)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_module_one_value_per_channel_eval_without_running_stats(fb, dim):
    """Eval with track_running_stats=False uses batch statistics: one value
    per channel is then an error too (like torch.nn)."""
    m = _module(fb, dim, track_running_stats=False).eval()
    before = _state(m)
    shape = {1: (1, 3), 2: (1, 3, 1, 1), 3: (1, 3, 1, 1, 1)}[dim]
    with pytest.raises(ValueError, match=MATCH_ONE_VALUE):
        m(torch.randn(shape))
    _assert_unchanged(m, before)


@pytest.mark.parametrize("bad_dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_unsupported_dtype(fb, bad_dtype, training):
    m = _module(fb, 2).train(training)
    before = _state(m)
    x = torch.randn(_shape(2)).mul(3).to(bad_dtype)
    with pytest.raises(RAISES, match=MATCH_UNSUPPORTED):
        m(x)
    _assert_unchanged(m, before)


# (input dtype, module dtype): combinations outside "same dtype" and
# "float16/bfloat16 input with float32 params"
MISMATCHED = [
    (torch.float64, torch.float32),
    (torch.float32, torch.float64),
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
    (torch.bfloat16, torch.float16),
    (torch.float16, torch.float64),
]


@pytest.mark.parametrize("in_dtype,mod_dtype", MISMATCHED, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_mismatched_dtype(fb, in_dtype, mod_dtype, training):
    m = _module(fb, 2, dtype=mod_dtype).train(training)
    before = _state(m)
    with pytest.raises(RAISES, match=MATCH_DTYPE):
        m(torch.randn(_shape(2), dtype=in_dtype))
    _assert_unchanged(m, before)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_mismatched_device(fb, training):
    m = _module(fb, 2).train(training)
    before = _state(m)
    with pytest.raises(RAISES, match=MATCH_DEVICE):
        m(torch.randn(_shape(2), device="meta"))
    _assert_unchanged(m, before)


def test_module_rejected_then_accepted(fb):
    """After a rejected call, the next valid call counts from the old state."""
    m = _module(fb, 2)
    with pytest.raises(ValueError, match=MATCH_ONE_VALUE):
        m(torch.randn(1, 3, 1, 1))
    m(torch.randn(_shape(2)))
    torch.testing.assert_close(m.num_batches_tracked, torch.tensor(8), rtol=0, atol=0)


# ------------------------------------------------------------------ functional
def _fargs(c=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    rm = torch.randn(c, generator=g).to(dtype)
    rv = (torch.rand(c, generator=g) + 0.5).to(dtype)
    w = (torch.rand(c, generator=g) + 0.5).to(dtype)
    b = torch.randn(c, generator=g).to(dtype)
    return rm, rv, w, b


def _bad_functional_cases():
    """name -> builds (input, running_mean, running_var, weight, bias, match)."""
    x = lambda *s, **k: torch.randn(*s, **k)  # noqa: E731
    cases = {}

    def case(name):
        def deco(f):
            cases[name] = f
            return f
        return deco

    @case("rank1")
    def _():
        rm, rv, w, b = _fargs()
        return x(3), rm, rv, w, b, r"(?i)(dim|rank|D input|shape|channel|element)"

    @case("weight_channels")
    def _():
        rm, rv, w, b = _fargs()
        return x(4, 3, 5), rm, rv, torch.ones(4), b, MATCH_CHANNELS

    @case("bias_channels")
    def _():
        rm, rv, w, b = _fargs()
        return x(4, 3, 5), rm, rv, w, torch.zeros(2), MATCH_CHANNELS

    @case("running_mean_channels")
    def _():
        rm, rv, w, b = _fargs()
        return x(4, 3, 5), torch.zeros(4), rv, w, b, MATCH_CHANNELS

    @case("running_var_channels")
    def _():
        rm, rv, w, b = _fargs()
        return x(4, 3, 5), rm, torch.ones(5), w, b, MATCH_CHANNELS

    @case("int_input")
    def _():
        rm, rv, w, b = _fargs()
        return torch.randint(0, 5, (4, 3, 5)), rm, rv, w, b, MATCH_UNSUPPORTED

    @case("complex_input")
    def _():
        rm, rv, w, b = _fargs()
        return x(4, 3, 5, dtype=torch.complex64), rm, rv, w, b, MATCH_UNSUPPORTED

    @case("f64_input_f32_weight")
    def _():
        rm, rv, _, _ = _fargs(dtype=torch.float64)
        _, _, w, b = _fargs()
        return x(4, 3, 5, dtype=torch.float64), rm, rv, w, b, MATCH_DTYPE

    @case("f64_input_f32_running_stats")
    def _():
        rm, rv, _, _ = _fargs()
        _, _, w, b = _fargs(dtype=torch.float64)
        return x(4, 3, 5, dtype=torch.float64), rm, rv, w, b, MATCH_DTYPE

    @case("f32_input_f64_running_stats")
    def _():
        rm, rv, _, _ = _fargs(dtype=torch.float64)
        _, _, w, b = _fargs()
        return x(4, 3, 5), rm, rv, w, b, MATCH_DTYPE

    @case("bf16_input_f16_weight")
    def _():
        rm, rv, _, _ = _fargs()
        _, _, w, b = _fargs(dtype=torch.float16)
        return x(4, 3, 5).bfloat16(), rm, rv, w, b, MATCH_DTYPE

    @case("meta_weight")
    def _():
        rm, rv, w, b = _fargs()
        return x(4, 3, 5), rm, rv, w.to("meta"), b, MATCH_DEVICE

    @case("meta_input")
    def _():
        rm, rv, w, b = _fargs()
        return x(4, 3, 5, device="meta"), rm, rv, w, b, MATCH_DEVICE

    return cases


BAD_FUNCTIONAL = _bad_functional_cases()


@pytest.mark.parametrize("name", sorted(BAD_FUNCTIONAL))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_functional_rejects(fb, name, training):
    inp, rm, rv, w, b, match = BAD_FUNCTIONAL[name]()
    rm0, rv0 = rm.clone(), rv.clone()
    with pytest.raises(RAISES, match=match):
        fb.functional.batch_norm(inp, rm, rv, w, b, training=training, momentum=0.5)
    torch.testing.assert_close(rm, rm0, rtol=0, atol=0)
    torch.testing.assert_close(rv, rv0, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1), (1, 3, 1, 1, 1)], ids=str)
def test_functional_one_value_per_channel_training(fb, shape):
    rm, rv, w, b = _fargs()
    rm0, rv0 = rm.clone(), rv.clone()
    with pytest.raises(ValueError, match=MATCH_ONE_VALUE):
        fb.functional.batch_norm(torch.randn(shape), rm, rv, w, b, training=True)
    torch.testing.assert_close(rm, rm0, rtol=0, atol=0)
    torch.testing.assert_close(rv, rv0, rtol=0, atol=0)
    # allowed in eval, like torch
    torch.testing.assert_close(
        fb.functional.batch_norm(torch.ones(shape), rm, rv, w, b, training=False),
        torch.nn.functional.batch_norm(torch.ones(shape), rm, rv, w, b, training=False),
    )


def test_op_rejects_without_touching_state(fb):
    """The raw training op checks before incrementing num_batches_tracked."""
    rm, rv, w, b = _fargs()
    nbt = torch.tensor(3)
    before = (rm.clone(), rv.clone(), nbt.clone())
    bad = [
        torch.randn(4, 4, 5),  # channel mismatch
        torch.randn(1, 3),  # one value per channel
        torch.randn(4, 3, 5, dtype=torch.float64),  # dtype mismatch
        torch.randint(0, 5, (4, 3, 5)),  # unsupported dtype
    ]
    for x in bad:
        with pytest.raises(RAISES):
            torch.ops.fastbn.batch_norm_train(x, w, b, rm, rv, nbt, 0.1, 1e-5)
        for t, t0 in zip((rm, rv, nbt), before):
            torch.testing.assert_close(t, t0, rtol=0, atol=0)


def test_functional_eval_requires_running_stats(fb):
    """Like torch.nn.functional.batch_norm: eval mode needs running stats."""
    x = torch.randn(4, 3, 5)
    with pytest.raises(RAISES, match="running_mean"):
        torch.nn.functional.batch_norm(x, None, None, training=False)
    with pytest.raises(RAISES, match="running_mean"):
        fb.functional.batch_norm(x, None, None, training=False)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_forward_mode_ad_is_refused(fb, training, grad):
    """fastbn has no forward-mode derivative (jvp): a dual input raises, with or without grad
    mode, before the running statistics move, instead of coming back without its tangent."""
    import warnings

    import torch.autograd.forward_ad as fwAD

    m = _module(fb, 2).train(training)
    before = _state(m)
    x = torch.randn(4, 3, 5, 5)
    with fwAD.dual_level(), torch.set_grad_enabled(grad):
        with warnings.catch_warnings():  # the first make_dual scripts torch's jvp decompositions
            warnings.simplefilter("ignore", FutureWarning)
            dual = fwAD.make_dual(x, torch.randn_like(x))
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            m(dual)
    _assert_unchanged(m, before)
