"""The fastbn:: custom operators: torch.library.opcheck, direct results vs the
reference (saved statistics, in-place running-stat updates, output_mask),
double backward raising, fastbn.backend, and the eager entry points that skip torch.ops."""

import numpy as np
import pytest
import torch

from bn_utils import assert_tight, make_tensor, to_np

DTYPES = [torch.float32, torch.float64]


def _stats_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _args(gen, dtype, shape=(3, 4, 5, 2), pdtype=None, requires_grad=True):
    pdtype = pdtype or dtype
    c = shape[1]
    x = make_tensor(shape, dtype, "contiguous", gen).requires_grad_(requires_grad)
    w = (torch.rand(c, generator=gen) + 0.5).to(pdtype).requires_grad_(requires_grad)
    b = torch.randn(c, generator=gen).to(pdtype).requires_grad_(requires_grad)
    rm = (torch.randn(c, generator=gen) * 0.3).to(pdtype)
    rv = (torch.rand(c, generator=gen) + 0.5).to(pdtype)
    return x, w, b, rm, rv


# ------------------------------------------------------------------ opcheck
TRAIN_CASES = {
    "stats-momentum": lambda x, w, b, rm, rv: (x, w, b, rm, rv, torch.tensor(3), 0.1, 1e-5),
    "stats-momentum-none": lambda x, w, b, rm, rv: (x, w, b, rm, rv, torch.tensor(3), None, 1e-5),
    "stats-no-counter": lambda x, w, b, rm, rv: (x, w, b, rm, rv, None, 0.2, 1e-3),
    "no-stats": lambda x, w, b, rm, rv: (x, w, b, None, None, None, 0.1, 1e-5),
    "no-affine-stats": lambda x, w, b, rm, rv: (x, None, None, rm, rv, torch.tensor(0), 0.1, 1e-5),
    "no-affine-no-stats": lambda x, w, b, rm, rv: (x, None, None, None, None, None, 0.1, 1e-5),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_opcheck_train(fb, gen, dtype, case):
    args = TRAIN_CASES[case](*_args(gen, dtype))
    torch.library.opcheck(torch.ops.fastbn.batch_norm_train.default, args)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_opcheck_eval(fb, gen, dtype, affine):
    x, w, b, rm, rv = _args(gen, dtype)
    if not affine:
        w = b = None
    torch.library.opcheck(torch.ops.fastbn.batch_norm_eval.default, (x, w, b, rm, rv, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mask", [[True, True, True], [True, False, False], [False, True, True]], ids=str)
def test_opcheck_backward(fb, gen, dtype, training, mask):
    x, w, b, rm, rv = _args(gen, dtype, requires_grad=False)
    dy = make_tensor(x.shape, dtype, "contiguous", gen)
    if training:
        _, mean, invstd = torch.ops.fastbn.batch_norm_train(x, w, b, None, None, None, 0.1, 1e-5)
    else:
        mean, invstd = rm.to(_stats_dtype(dtype)), torch.rsqrt(rv.to(_stats_dtype(dtype)) + 1e-5)
    torch.library.opcheck(torch.ops.fastbn.batch_norm_backward.default, (dy, x, w, mean, invstd, training, mask))


def test_opcheck_channels_last_and_mixed(fb, gen):
    x, w, b, rm, rv = _args(gen, torch.bfloat16, pdtype=torch.float32)
    x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.fastbn.batch_norm_train.default, (x, w, b, rm, rv, torch.tensor(0), 0.1, 1e-5))
    torch.library.opcheck(torch.ops.fastbn.batch_norm_eval.default, (x, w, b, rm, rv, 1e-5))


# ------------------------------------------------------------------ direct op results
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("momentum", [0.25, None])
def test_train_op_results(fb, ref, gen, dtype, momentum):
    pdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    x, w, b, rm, rv = _args(gen, dtype, pdtype=pdtype, requires_grad=False)
    rm0, rv0 = to_np(rm), to_np(rv)
    nbt = torch.tensor(4)
    y, mean, invstd = torch.ops.fastbn.batch_norm_train(x, w, b, rm, rv, nbt, momentum, 1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    assert mean.dtype == invstd.dtype == _stats_dtype(dtype)
    assert mean.shape == invstd.shape == (x.shape[1],)
    torch.testing.assert_close(nbt, torch.tensor(5), rtol=0, atol=0)
    xn = to_np(x)
    y_ref, m_ref, s_ref = ref.forward_train(xn, to_np(w), to_np(b))
    new_m, new_v = ref.update_running_stats(
        rm0, rv0, m_ref, ref.batch_var(xn), x.numel() // x.shape[1], momentum=momentum, num_batches_tracked=5
    )
    tol = dict(rtol=1e-5, atol=1e-5) if dtype != torch.float64 else dict(rtol=1e-10, atol=1e-10)
    assert_tight(mean, m_ref, **tol)
    assert_tight(invstd, s_ref, **tol)
    assert_tight(rm, new_m, **tol)
    assert_tight(rv, new_v, **tol)
    ytol = {torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}.get(dtype, tol)
    assert_tight(y, y_ref, **ytol)


def test_backward_op_output_mask_and_values(fb, ref, gen):
    x, w, b, rm, rv = _args(gen, torch.float64, requires_grad=False)
    dy = make_tensor(x.shape, torch.float64, "contiguous", gen)
    _, mean, invstd = torch.ops.fastbn.batch_norm_train(x, w, b, None, None, None, 0.1, 1e-5)
    for training in (True, False):
        m_, s_ = (mean, invstd) if training else (rm, torch.rsqrt(rv + 1e-5))
        dx_r, dw_r, db_r = ref.backward(to_np(dy), to_np(x), to_np(m_), to_np(s_), to_np(w), training=training)
        full = torch.ops.fastbn.batch_norm_backward(dy, x, w, m_, s_, training, [True, True, True])[:3]
        for got, exp in zip(full, (dx_r, dw_r, db_r)):
            assert_tight(got, exp, rtol=1e-9, atol=1e-9)
        for mask in ([True, False, False], [False, True, False], [False, False, True], [False, True, True]):
            outs = torch.ops.fastbn.batch_norm_backward(dy, x, w, m_, s_, training, mask)
            for keep, got, exp in zip(mask, outs, full):
                if keep:
                    torch.testing.assert_close(got, exp, rtol=0, atol=0)
                else:
                    assert got.numel() == 0
    # weight=None: gradient of an implicit unit weight
    dx, dw, db, dr = torch.ops.fastbn.batch_norm_backward(dy, x, None, mean, invstd, True, [True, True, True])
    assert dr.numel() == 0  # no residual gradient asked for
    dx_r, dw_r, db_r = ref.backward(to_np(dy), to_np(x), to_np(mean), to_np(invstd), None, training=True)
    assert_tight(dx, dx_r, rtol=1e-9, atol=1e-9)
    assert_tight(dw, dw_r, rtol=1e-9, atol=1e-9)
    assert_tight(db, db_r, rtol=1e-9, atol=1e-9)


def test_eval_op_results(fb, ref, gen):
    x, w, b, rm, rv = _args(gen, torch.float64, requires_grad=False)
    y = torch.ops.fastbn.batch_norm_eval(x, w, b, rm, rv, 1e-3)
    assert_tight(y, ref.forward_eval(to_np(x), to_np(rm), to_np(rv), to_np(w), to_np(b), eps=1e-3),
                 rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ the graph
@pytest.mark.parametrize("training, name", [(True, "fastbn::BatchNormBackward"),
                                            (False, "fastbn::BatchNormEvalBackward")])
def test_graph_node(fb, gen, training, name):
    """The output's grad_fn is fastbn's node, its next functions the input's, the
    parameters' and the residual's (none here); the statistics returned by the training op
    carry no graph."""
    m = fb.BatchNorm2d(3).train(training)
    x = torch.randn(2, 3, 4, 4, generator=gen, requires_grad=True)
    y = m(x)
    assert y.grad_fn.name() == name
    assert len(y.grad_fn.next_functions) == 4
    assert all(f is not None for f, _ in y.grad_fn.next_functions[:3])
    assert y.grad_fn.next_functions[3][0] is None
    _, mean, invstd = fb.ops.batch_norm_train(x, m.weight, m.bias, None, None, None, 0.1, 1e-5)
    assert not mean.requires_grad and not invstd.requires_grad


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("weight, bias", [("grad", "grad"), ("grad", "frozen"), ("frozen", "grad"),
                                          (None, "grad"), ("grad", None), (None, None)])
def test_gradients_of_the_parameters_that_require_them(fb, gen, training, weight, bias):
    """Each parameter gets a gradient exactly when it requires one (absent, frozen or
    trainable, in any combination), equal to torch.nn.functional.batch_norm's."""
    x = torch.randn(4, 3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    dy = torch.randn(4, 3, 5, dtype=torch.float64, generator=gen)
    rm, rv = torch.randn(3, dtype=torch.float64, generator=gen), torch.rand(3, dtype=torch.float64) + 0.5

    def param(kind):
        if kind is None:
            return None
        return torch.randn(3, dtype=torch.float64, generator=gen).requires_grad_(kind == "grad")

    w, b = param(weight), param(bias)
    wanted = [x] + [p for p in (w, b) if p is not None and p.requires_grad]
    got = torch.autograd.grad(fb.functional.batch_norm(x, rm.clone(), rv.clone(), w, b, training),
                              wanted, dy)
    expected = torch.autograd.grad(
        torch.nn.functional.batch_norm(x, rm.clone(), rv.clone(), w, b, training), wanted, dy)
    assert len(got) == len(expected) == len(wanted)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("training, name", [(True, "fastbn::BatchNormBackward"),
                                            (False, "fastbn::BatchNormEvalBackward")])
def test_node_creation_hook_sees_the_node(fb, gen, training, name):
    """torch.autograd.graph.node_creation_hook fires for fastbn's node, as for torch's."""
    m = fb.BatchNorm2d(3).train(training)
    x = torch.randn(2, 3, 4, 4, generator=gen, requires_grad=True)
    seen = []
    with torch.autograd.graph.node_creation_hook(lambda node: seen.append(node.name())):
        m(x)
    assert name in seen


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("which", ["running_mean", "running_var"])
def test_running_stats_that_require_grad_are_refused(fb, gen, training, which):
    """As torch: batch norm is not differentiable in its running statistics; refused before
    they change."""
    x = torch.randn(4, 3, 5, generator=gen, requires_grad=True)
    stats = {"running_mean": torch.zeros(3), "running_var": torch.ones(3)}
    stats[which].requires_grad_()
    before = {k: v.detach().clone() for k, v in stats.items()}
    with pytest.raises(RuntimeError, match=f"not differentiable with respect to {which}"):
        fb.functional.batch_norm(x, stats["running_mean"], stats["running_var"], training=training)
    for k, v in stats.items():
        assert torch.equal(v.detach(), before[k])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_func_vjp_matches_torch(fb, gen, training):
    """torch.func.vjp through the functional gives torch's gradients."""
    x = torch.randn(4, 3, 5, dtype=torch.float64, generator=gen)
    w = torch.randn(3, dtype=torch.float64, generator=gen)
    b = torch.randn(3, dtype=torch.float64, generator=gen)
    dy = torch.randn(4, 3, 5, dtype=torch.float64, generator=gen)
    rm, rv = torch.randn(3, dtype=torch.float64, generator=gen), torch.rand(3, dtype=torch.float64) + 0.5
    grads = {}
    for lib, fn in (("fastbn", fb.functional.batch_norm), ("torch", torch.nn.functional.batch_norm)):
        stats = (rm.clone(), rv.clone())
        _, vjp = torch.func.vjp(lambda x, w, b: fn(x, *stats, w, b, training), x, w, b)
        grads[lib] = vjp(dy)
    for g, e in zip(grads["fastbn"], grads["torch"]):
        torch.testing.assert_close(g, e)


def test_backward_twice_without_retain_graph_raises(fb, gen):
    """The saved tensors are released after the first backward, as torch.nn's are."""
    x = torch.randn(2, 3, 4, 4, generator=gen, requires_grad=True)
    y = fb.BatchNorm2d(3)(x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_inplace_change_of_a_saved_input_raises(fb, gen):
    """Modifying the input in place after the forward makes the backward refuse."""
    x = torch.randn(2, 3, 4, 4, generator=gen, requires_grad=True)
    h = x * 2
    y = fb.BatchNorm2d(3)(h)
    h.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


# ------------------------------------------------------------------ double backward
def _double_backward(fn, x, params):
    y = fn(x)
    grads = torch.autograd.grad((y * y).sum(), [x] + params, create_graph=True)
    sum(g.pow(2).sum() for g in grads).backward()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dim", [1, 2])
def test_double_backward_raises_module(fb, gen, training, dim):
    m = getattr(fb, f"BatchNorm{dim}d")(3).double().train(training)
    shape = (4, 3, 5) if dim == 1 else (2, 3, 2, 3)
    x = torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        _double_backward(m, x, [m.weight, m.bias])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_double_backward_raises_functional(fb, gen, training):
    x = torch.randn(4, 3, 5, generator=gen, requires_grad=True)
    w = torch.ones(3, requires_grad=True)
    rm, rv = torch.zeros(3), torch.ones(3)
    fn = lambda x: fb.functional.batch_norm(x, rm, rv, w, None, training=training)  # noqa: E731
    with pytest.raises(RuntimeError, match="double backward"):
        _double_backward(fn, x, [w])


def test_first_order_grad_with_create_graph_is_correct(fb, gen):
    """create_graph=True itself works and gives the right first-order gradient;
    only differentiating that gradient again raises."""
    x = torch.randn(4, 3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    m = fb.BatchNorm1d(3).double()
    t = torch.nn.BatchNorm1d(3).double()
    g_f = torch.autograd.grad((m(x) ** 2).sum(), x, create_graph=True)[0]
    g_t = torch.autograd.grad((t(x) ** 2).sum(), x)[0]
    torch.testing.assert_close(g_f, g_t)


# ------------------------------------------------------------------ backend
def test_backend_cpu_context_manager(fb, gen):
    m = fb.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5, generator=gen)
    m.eval()
    y0 = m(x)
    with fb.backend("cpu"):
        y1 = m(x)
        with fb.backend("cpu"):
            y2 = m(x)
    y3 = m(x)
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    torch.testing.assert_close(y2, y0, rtol=0, atol=0)
    torch.testing.assert_close(y3, y0, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["no-such-backend", "", "cpu "])
def test_backend_unknown_name_raises(fb, name):
    with pytest.raises(ValueError, match="backend"):
        with fb.backend(name):
            pass


def test_backend_restored_after_exception(fb, gen):
    m = fb.BatchNorm1d(3)
    x = torch.randn(4, 3, generator=gen)
    with pytest.raises(KeyError):
        with fb.backend("cpu"):
            raise KeyError("boom")
    torch.testing.assert_close(m(x), torch.nn.functional.batch_norm(x, None, None, training=True))


# ------------------------------------------------------------------ fastbn kernels actually run
def _ops_called(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("dtype,pdtype,memory_format", [
    (torch.float32, torch.float32, torch.contiguous_format),
    (torch.bfloat16, torch.float32, torch.channels_last),
    (torch.float16, torch.float16, torch.contiguous_format),
    (torch.float64, torch.float64, torch.channels_last),
], ids=["f32", "bf16-mixed-channels_last", "f16", "f64-channels_last"])
def test_modules_and_functional_run_fastbn_ops(fb, gen, dtype, pdtype, memory_format):
    """The drop-ins run fastbn's operators (forward and backward), never
    torch's own batch-norm kernels."""
    m = fb.BatchNorm2d(3).to(pdtype)
    x = torch.randn(4, 3, 5, 5, generator=gen).to(dtype).contiguous(memory_format=memory_format).requires_grad_()

    def run():
        m.train()
        m(x).float().sum().backward()
        m.eval()
        m(x).float().sum().backward()
        rm, rv = torch.zeros(3, dtype=pdtype), torch.ones(3, dtype=pdtype)
        fb.functional.batch_norm(x, rm, rv, training=True).float().sum().backward()
        fb.functional.batch_norm(x, rm, rv, training=False).float().sum().backward()

    called = _ops_called(run)
    for op in ("fastbn::batch_norm_train", "fastbn::batch_norm_eval", "fastbn::batch_norm_backward"):
        assert op in called, (op, sorted(k for k in called if "batch" in k or "fastbn" in k))
    torch_bn = {k for k in called if k.startswith("aten::") and "batch_norm" in k}
    assert not torch_bn, torch_bn


# ------------------------------------------------------------------ eager entry points
def test_eager_forward_skips_torch_ops_with_the_same_results(fb, gen, monkeypatch):
    """In eager mode the forward ops go to fastbn._C's entry points (python_entry.cpp) rather
    than through torch.ops, with the same outputs, running-stat updates and gradients."""
    x, w, b, rm, rv = _args(gen, torch.float32)
    ops = torch.ops.fastbn
    want_rm, want_rv = rm.clone(), rv.clone()
    want = ops.batch_norm_train.default(x, w, b, want_rm, want_rv, None, 0.1, 1e-5)
    want_grads = torch.autograd.grad(want[0].sum(), (x, w, b))
    want_eval = ops.batch_norm_eval.default(x, w, b, rm, rv, 1e-5)

    monkeypatch.setattr(fb.ops, "_ops", None)  # a call through torch.ops would now fail
    got_rm, got_rv = rm.clone(), rv.clone()
    got = fb.ops.batch_norm_train(x, w, b, got_rm, got_rv, None, 0.1, 1e-5)
    got_grads = torch.autograd.grad(got[0].sum(), (x, w, b))
    got_eval = fb.ops.batch_norm_eval(x, w, b, rm, rv, 1e-5)
    for a, e in zip([*got, got_rm, got_rv, *got_grads, got_eval],
                    [*want, want_rm, want_rv, *want_grads, want_eval]):
        assert torch.equal(a, e)


def test_torch_function_modes_see_the_ops(fb, gen):
    """Under a TorchFunctionMode the calls go through torch.ops, so that the mode sees them
    (and could handle them), as it sees torch's own operators."""
    from torch.overrides import TorchFunctionMode

    class Record(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.funcs = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.funcs.append(str(func))
            return func(*args, **(kwargs or {}))

    m = fb.BatchNorm2d(4)
    x = torch.randn(3, 4, 5, 2, generator=gen)
    with Record() as record:
        m(x)
        m.eval()(x)
    assert "fastbn.batch_norm_train.default" in record.funcs, record.funcs
    assert "fastbn.batch_norm_eval.default" in record.funcs, record.funcs


def test_unexpected_argument_types_are_reported_by_torch_ops(fb, gen):
    """An argument of a type the entry points do not take makes them return NotImplemented,
    and torch.ops reports it as for any operator."""
    x, w, b, rm, rv = _args(gen, torch.float32)
    assert fb._C._batch_norm_eval(x, w, b, rm, rv, "1e-5") is NotImplemented
    assert fb._C._batch_norm_train(x, [1.0] * 4, b, rm, rv, None, 0.1, 1e-5) is NotImplemented
    with pytest.raises(RuntimeError, match="argument 'eps'"):
        fb.ops.batch_norm_eval(x, w, b, rm, rv, "1e-5")
    with pytest.raises(RuntimeError, match="argument 'weight'"):
        fb.ops.batch_norm_train(x, [1.0] * 4, b, rm, rv, None, 0.1, 1e-5)
