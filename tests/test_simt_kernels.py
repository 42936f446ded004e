"""The CUDA kernels, executed on the CPU by the SIMT emulator (fastbn.backend("simt")).

Every kernel path (persistent, two kernels, apply-only), layout, vector width and dtype runs
against the NumPy reference and torch.nn, under two schedule orders that must give bitwise
identical results (a race shows up as a difference), with the global-memory traffic of each
path checked against its budget.
"""
import contextlib

import pytest
import torch

from bn_utils import DTYPE_VARIANTS, HALF_DTYPES, assert_matches, load_reference, to_np

fastbn = pytest.importorskip("fastbn")
from fastbn import _C  # noqa: E402

if "simt" not in fastbn._backend.available_backends():  # a build without CUDA headers
    pytest.skip("this fastbn build has no SIMT backend (CUDA toolkit headers were not found)",
                allow_module_level=True)

ref = load_reference()

# A simulated GPU on which every launch below is persistent when it can be...
ROOMY = (4, 16, 48 * 1024)
# ...one whose shared memory holds no tile and where only one block is resident: the
# two-kernel fallback...
TINY = (1, 1, 2 * 1024)
# ...and one with little shared memory: the persistent kernel with several splits per channel.
SMALL_SMEM = (8, 16, 12 * 1024)

ORDERS = [("forward", "forward", 0), ("reverse", "reverse", 0), ("random", "random", 7)]


@contextlib.contextmanager
def simt(device=ROOMY, order=ORDERS[0]):
    _C._simt_set_device(*device)
    _C._simt_set_schedule(*order)
    _C._take_launch_log()
    try:
        with fastbn.backend("simt"):
            yield
    finally:
        _C._simt_reset_device()
        _C._simt_set_schedule(*ORDERS[0])


def make_input(shape, dtype, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


def train_step(x, dy, weight, bias, running, momentum=0.1):
    """fastbn's train forward + backward through the ops; returns every result."""
    rm, rv, nbt = (t.clone() for t in running)
    y, mean, invstd = torch.ops.fastbn.batch_norm_train(x, weight, bias, rm, rv, nbt, momentum, 1e-5)
    dx, dw, db, _ = torch.ops.fastbn.batch_norm_backward(dy, x, weight, mean, invstd, True, [True, True, True])
    return dict(y=y, mean=mean, invstd=invstd, rm=rm, rv=rv, nbt=nbt, dx=dx, dw=dw, db=db)


def check_against_reference_and_torch(x, dy, weight, bias, running, out, momentum=0.1):
    """fastbn's results vs the float64 reference and torch.nn's own (for half inputs, within
    a small multiple of torch's error)."""
    xr = x.detach().clone().requires_grad_()
    wr, br = weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    rm, rv = running[0].clone(), running[1].clone()
    yt = torch.nn.functional.batch_norm(xr, rm, rv, wr, br, True, momentum, 1e-5)
    dxt, dwt, dbt = torch.autograd.grad(yt, (xr, wr, br), dy)
    y_ref, mean_ref, invstd_ref = ref.forward_train(to_np(x), to_np(weight), to_np(bias), 1e-5)
    dx_ref, dw_ref, db_ref = ref.backward(to_np(dy), to_np(x), mean_ref, invstd_ref, to_np(weight), training=True)
    n = x.numel() // x.shape[1]
    rm_ref, rv_ref = ref.update_running_stats(to_np(running[0]), to_np(running[1]), mean_ref,
                                              ref.batch_var(to_np(x)), n, momentum)
    half = x.dtype in HALF_DTYPES
    for name, got, base, exp in [("y", out["y"], yt, y_ref), ("dx", out["dx"], dxt, dx_ref),
                                 ("dweight", out["dw"], dwt, dw_ref), ("dbias", out["db"], dbt, db_ref),
                                 ("running_mean", out["rm"], rm, rm_ref), ("running_var", out["rv"], rv, rv_ref)]:
        assert_matches(got, base, exp, msg=name, in_dtype=x.dtype, scale=8.0 if name.startswith("d") else 1.0)
    if not half:
        torch.testing.assert_close(out["mean"].double(), torch.from_numpy(mean_ref), rtol=1e-5, atol=1e-6)
    assert out["nbt"].item() == running[2].item() + 1


def run_both_orders(device, fn):
    """Runs fn under two schedule orders; results must be bitwise identical. Returns the first
    results and the launch log."""
    results, logs = [], []
    for order in (ORDERS[0], ORDERS[2] if device == TINY else ORDERS[1]):
        with simt(device, order):
            results.append(fn())
            logs.append(_C._take_launch_log())
    first, second = results
    for key in first:
        assert torch.equal(first[key], second[key]), f"{key} differs between schedule orders: a race"
    assert logs[0] == logs[1]
    return first, logs[0]


def params(C, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    weight = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    bias = torch.randn(C, generator=g, dtype=torch.float64).to(dtype)
    running = (torch.randn(C, generator=g, dtype=torch.float64).to(dtype),
               (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype), torch.tensor(3))
    return weight, bias, running


# (shape, layout, expected vector width in elements for float32): aligned shapes use 16-byte
# vectors; S % 4 != 0 (NCS) or C % 4 != 0 (NSC) forces the scalar path.
CASES = [
    ((4, 8, 8, 8), "contiguous", 4),
    ((3, 5, 7, 7), "contiguous", 1),
    ((4, 8, 8, 8), "channels_last", 4),
    ((3, 67, 3, 5), "channels_last", 1),   # C % 4 != 0, two channel tiles at V = 1
    ((2, 3, 4, 5, 6), "channels_last", 1),  # channels_last_3d
    ((16, 24), "contiguous", 4),             # BatchNorm1d input (N, C): rows of C
]
PATHS = {"persistent": ROOMY, "two_kernels": TINY}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("shape,layout,vec", CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("variant", ["f32", "f64", "bf16-mixed", "f16"])
def test_train_forward_backward(path, shape, layout, vec, variant):
    dtype, pdtype = DTYPE_VARIANTS[variant]
    x = make_input(shape, dtype, layout)
    dy = make_input(shape, dtype, layout, seed=5)
    weight, bias, running = params(shape[1], pdtype)
    out, log = run_both_orders(PATHS[path], lambda: train_step(x, dy, weight, bias, running))
    assert [p for p, _, _ in log] == [path, path], log
    expected_vec = 128 // torch.finfo(dtype).bits if vec > 1 else 1  # 16-byte vectors
    assert all(v == expected_vec for _, v, _ in log), log
    check_against_reference_and_torch(x, dy, weight, bias, running, out)
    if layout == "channels_last":
        assert out["y"].stride() == x.stride() and out["dx"].stride() == x.stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_persistent_with_several_splits_per_channel(dtype):
    """Small shared memory: each channel's tile spans several blocks, merged after grid sync."""
    shape = (8, 3, 32, 32)
    x, dy = make_input(shape, dtype, "contiguous"), make_input(shape, dtype, "contiguous", seed=5)
    weight, bias, running = params(3, torch.float32)
    out, log = run_both_orders(SMALL_SMEM, lambda: train_step(x, dy, weight, bias, running))
    assert all(p == "persistent" and splits > 1 for p, _, splits in log), log
    check_against_reference_and_torch(x, dy, weight, bias, running, out)


def test_two_kernels_with_several_splits_and_momentum_none():
    """Several blocks per channel: partials, the self-resetting counter (two calls in a row
    reuse it), the last block's merge; momentum=None read from the counter on the device."""
    shape = (8, 2, 32, 32)
    x, dy = make_input(shape, torch.float32, "contiguous"), make_input(shape, torch.float32, "contiguous", seed=5)
    weight, bias, running = params(2, torch.float32)
    first, log = run_both_orders(TINY, lambda: train_step(x, dy, weight, bias, running, momentum=None))
    assert all(p == "two_kernels" and splits > 1 for p, _, splits in log), log
    second, _ = run_both_orders(TINY, lambda: train_step(x, dy, weight, bias, running, momentum=None))
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # cumulative average: factor 1/num_batches_tracked = 1/4 after the increment
    check_against_reference_and_torch(x, dy, weight, bias, running, first, momentum=0.25)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_eval_forward_and_backward(layout, dtype):
    shape = (4, 8, 6, 6)
    x, dy = make_input(shape, dtype, layout), make_input(shape, dtype, layout, seed=5)
    weight, bias, (rm, rv, _) = params(8, torch.float32 if dtype != torch.float64 else dtype)
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    mean, invstd = rm.to(stats), (rv.to(stats) + 1e-5).rsqrt()

    def run():
        y = torch.ops.fastbn.batch_norm_eval(x, weight, bias, rm, rv, 1e-5)
        dx_only = torch.ops.fastbn.batch_norm_backward(dy, x, weight, mean, invstd, False, [True, False, False])[0]
        dx, dw, db, _ = torch.ops.fastbn.batch_norm_backward(dy, x, weight, mean, invstd, False, [True, True, True])
        return dict(y=y, dx_only=dx_only, dx=dx, dw=dw, db=db)

    out, log = run_both_orders(ROOMY, run)
    assert [p for p, _, _ in log] == ["apply_only", "apply_only", "persistent"], log
    with fastbn.backend("cpu"):
        cpu = run()
    tol = dict(rtol=2e-3, atol=2e-3) if dtype == torch.float16 else {}
    for key in out:
        torch.testing.assert_close(out[key], cpu[key], **tol, msg=lambda m: f"{key}: {m}")
    y_ref = ref.forward_eval(to_np(x), to_np(rm), to_np(rv), to_np(weight), to_np(bias), 1e-5)
    assert_matches(out["y"], torch.nn.functional.batch_norm(x, rm, rv, weight, bias, False, 0.1, 1e-5),
                   y_ref, msg="eval y", in_dtype=dtype)


def test_empty_batch_and_one_channel():
    weight, bias, running = params(1, torch.float32)
    with simt():
        out = train_step(torch.randn(0, 1, 3, 3), torch.randn(0, 1, 3, 3), weight, bias, running)
    assert out["y"].shape == (0, 1, 3, 3) and out["dw"].abs().sum() == 0
    torch.testing.assert_close(out["rm"], running[0])  # no statistics: untouched
    x, dy = make_input((5, 1, 3, 7), torch.float32, "contiguous"), make_input((5, 1, 3, 7), torch.float32, "contiguous", seed=3)
    out, _ = run_both_orders(ROOMY, lambda: train_step(x, dy, weight, bias, running))
    check_against_reference_and_torch(x, dy, weight, bias, running, out)


def test_module_training_loop_matches_cpu_backend():
    """A small CNN trained a few steps on the SIMT backend matches the CPU backend."""
    torch.manual_seed(0)

    def model():
        torch.manual_seed(0)
        return fastbn.convert_model(torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4), torch.nn.BatchNorm1d(4)))

    x, target = torch.randn(6, 3, 8, 8), torch.randn(6, 4)
    losses = {}
    for backend in ("cpu", "simt"):
        m = model()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        losses[backend] = []
        with fastbn.backend(backend):
            for _ in range(3):
                loss = torch.nn.functional.mse_loss(m(x), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses[backend].append(loss.item())
    torch.testing.assert_close(losses["simt"], losses["cpu"], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ memory-traffic budgets

def traffic(device, fn):
    with simt(device):
        _C._simt_reset_traffic()
        fn()
        t = _C._simt_traffic()
        log = _C._take_launch_log()
    return t, log


def overhead_budget(C, splits, elem=4):
    """Per-channel bytes a launch may move besides the tensors: parameters, running stats,
    saved stats, partials per split, Coefs — O(C · splits), never O(N·S)."""
    return 64 * elem * C * (splits + 2)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_traffic_persistent_forward_reads_x_once(layout):
    shape = (8, 16, 16, 16)
    x = make_input(shape, torch.float32, layout)
    w, b, (rm, rv, nbt) = params(16, torch.float32)
    t, log = traffic(ROOMY, lambda: torch.ops.fastbn.batch_norm_train(x, w, b, rm, rv, nbt, 0.1, 1e-5))
    (path, _, splits), = log
    assert path == "persistent"
    nbytes = x.numel() * 4
    assert nbytes <= t["bytes_read"] <= nbytes + overhead_budget(16, splits), t
    assert nbytes <= t["bytes_written"] <= nbytes + overhead_budget(16, splits), t
    assert t["launches"] == 1


def test_traffic_two_kernels_forward_reads_x_at_most_twice():
    shape = (8, 16, 16, 16)
    x = make_input(shape, torch.float32, "contiguous")
    w, b, (rm, rv, nbt) = params(16, torch.float32)
    t, log = traffic(TINY, lambda: torch.ops.fastbn.batch_norm_train(x, w, b, rm, rv, nbt, 0.1, 1e-5))
    (path, _, splits), = log
    assert path == "two_kernels"
    nbytes = x.numel() * 4
    assert 2 * nbytes <= t["bytes_read"] <= 2 * nbytes + overhead_budget(16, splits), t
    assert nbytes <= t["bytes_written"] <= nbytes + overhead_budget(16, splits), t
    assert t["launches"] == 2


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_traffic_persistent_backward_reads_x_and_dy_once(layout):
    shape = (8, 16, 8, 8)
    x, dy = make_input(shape, torch.float32, layout), make_input(shape, torch.float32, layout, seed=2)
    w = params(16, torch.float32)[0]
    _, mean, invstd = torch.ops.fastbn.batch_norm_train(x, w, None, None, None, None, 0.1, 1e-5)
    t, log = traffic(ROOMY, lambda: torch.ops.fastbn.batch_norm_backward(dy, x, w, mean, invstd, True, [True, True, True]))
    (path, _, splits), = log
    assert path == "persistent"
    nbytes = x.numel() * 4
    assert 2 * nbytes <= t["bytes_read"] <= 2 * nbytes + overhead_budget(16, splits), t
    assert nbytes <= t["bytes_written"] <= nbytes + overhead_budget(16, splits), t


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_traffic_eval_one_read_one_write(layout):
    shape = (8, 16, 16, 16)
    x = make_input(shape, torch.bfloat16, layout)
    w, b, (rm, rv, _) = params(16, torch.float32)
    t, log = traffic(ROOMY, lambda: torch.ops.fastbn.batch_norm_eval(x, w, b, rm, rv, 1e-5))
    (path, _, splits), = log
    assert path == "apply_only"
    nbytes = x.numel() * 2
    assert nbytes <= t["bytes_read"] <= nbytes + overhead_budget(16, splits), t
    assert t["bytes_written"] == nbytes, t


def test_emulator_errors_reach_python():
    """A simulated device too small for any launch: the emulator's error is a Python error,
    not a crash, and the backend works again afterwards."""
    x = make_input((4, 8, 4, 4), torch.float32, "contiguous")
    w, b, (rm, rv, nbt) = params(8, torch.float32)
    with pytest.raises(RuntimeError):
        with simt((1, 0, 48 * 1024)):
            torch.ops.fastbn.batch_norm_eval(x, w, b, rm, rv, 1e-5)
    with simt():
        y = torch.ops.fastbn.batch_norm_eval(x, w, b, rm, rv, 1e-5)
    torch.testing.assert_close(y, torch.nn.functional.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5))
