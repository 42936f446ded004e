"""Shared helpers for the fastbn test suite (inputs, layouts, error bounds)."""

import importlib
import importlib.util
import os

import warnings

import numpy as np
import torch

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))

HALF_DTYPES = (torch.float16, torch.bfloat16)
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# (input dtype, parameter/buffer dtype): half inputs run with float32 params
# ("mixed", what autocast produces) and with same-dtype params (module.to(half)).
DTYPE_VARIANTS = {
    "f32": (torch.float32, torch.float32),
    "f64": (torch.float64, torch.float64),
    "f16-mixed": (torch.float16, torch.float32),
    "f16": (torch.float16, torch.float16),
    "bf16-mixed": (torch.bfloat16, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16),
}

# Tight tolerances for full-precision results compared with a float64 truth.
TIGHT = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-7, atol=1e-7),
}


def load_reference():
    """fastbn.reference; falls back to loading the file directly so the
    reference tests run even when fastbn's compiled part is unavailable."""
    try:
        return importlib.import_module("fastbn.reference")
    except Exception:  # fastbn/__init__ may fail to import its extension
        path = os.path.join(REPO_ROOT, "fastbn", "reference.py")
        spec = importlib.util.spec_from_file_location("_fastbn_reference_file", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def to_np(t):
    """Tensor (any float dtype, any layout) -> float64 ndarray."""
    if t is None:
        return None
    return t.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy().copy()


def from_np(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


# ---------------------------------------------------------------- layouts
def layouts_for_rank(rank):
    if rank == 4:
        return ["contiguous", "channels_last", "strided", "permuted"]
    if rank == 5:
        return ["contiguous", "channels_last_3d", "strided", "permuted"]
    return ["contiguous", "strided", "permuted"]


def relayout(x, layout):
    """Return a tensor equal to ``x`` with the given memory layout.

    - contiguous / channels_last / channels_last_3d: memory formats;
    - strided: a ``[..., ::2]``-style slice of a larger buffer (last dim, or
      the channel dim for 2D inputs) -> non-contiguous;
    - permuted: a permuted view of a tensor stored in reversed dim order.
    """
    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":
        assert x.dim() == 4
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last_3d":
        assert x.dim() == 5
        return x.contiguous(memory_format=torch.channels_last_3d)
    if layout == "strided":
        d = x.dim() - 1
        shape = list(x.shape)
        shape[d] = 2 * shape[d] + 1
        big = torch.full(shape, float("nan"), dtype=x.dtype)
        view = big.narrow(d, 0, 2 * x.shape[d]).unflatten(d, (x.shape[d], 2)).select(d + 1, 0)
        view.copy_(x)
        return view
    if layout == "permuted":
        rev = list(range(x.dim()))[::-1]
        base = x.permute(rev).contiguous()
        return base.permute(rev)
    raise ValueError(layout)


def make_tensor(shape, dtype, layout="contiguous", gen=None, scale=1.0, offset=0.0):
    """Seeded random float64 values cast to ``dtype`` with the given layout."""
    v = torch.randn(shape, dtype=torch.float64, generator=gen) * scale + offset
    return relayout(v.to(dtype), layout)


def channels_last_format(x):
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    return None


# ---------------------------------------------------------------- asserts
def assert_tight(actual, expected, dtype=None, msg="", **tol):
    """``actual`` (float32/float64 tensor) vs a float64 ndarray/tensor truth."""
    dtype = dtype or actual.dtype
    if not tol:
        tol = TIGHT[dtype]
    exp = expected if isinstance(expected, torch.Tensor) else from_np(expected)
    torch.testing.assert_close(
        actual.detach().to(torch.float64).cpu(), exp.to(torch.float64), msg=lambda m: f"{msg}\n{m}", **tol
    )


def max_abs_err(actual, expected):
    exp = expected if isinstance(expected, torch.Tensor) else from_np(expected)
    a = actual.detach().to(torch.float64).cpu()
    if a.numel() == 0:
        return 0.0
    return (a - exp.to(torch.float64)).abs().max().item()


def assert_error_bound(actual, baseline, expected, msg="", factor=2.0, floor_ulps=1.0, scale=1.0):
    """fastbn's max-abs error vs the float64 truth must stay within
    ``factor`` x torch.nn's own error on the same input, plus a tiny floor of
    ``floor_ulps`` units in the last place of the largest expected value (in
    ``actual``'s dtype) or of ``scale`` (the magnitude of the terms that cancel
    in the result) if larger."""
    exp = expected if isinstance(expected, torch.Tensor) else from_np(expected)
    assert actual.shape == baseline.shape == exp.shape, (actual.shape, baseline.shape, exp.shape)
    base_err = max_abs_err(baseline, exp)
    scale = max(exp.abs().max().item(), scale) if exp.numel() else scale
    # one ulp of the result dtype; float32/float64 results (float32 running
    # stats or weight grads of a half input) get the tight float32 tolerance
    unit = torch.finfo(actual.dtype).eps if actual.dtype in HALF_DTYPES else TIGHT[torch.float32]["rtol"]
    floor = floor_ulps * unit * scale
    bound = factor * base_err + floor
    torch.testing.assert_close(
        actual.detach().to(torch.float64).cpu(),
        exp.to(torch.float64),
        rtol=0.0,
        atol=bound,
        msg=lambda m: (
            f"{msg}: fastbn error exceeds {factor} x torch.nn error ({base_err:.3e}) "
            f"+ floor ({floor:.3e})\n{m}"
        ),
    )


def assert_matches(actual, baseline, expected, msg="", in_dtype=None, scale=1.0):
    """Compare ``actual`` (fastbn) with the float64 truth, tight for
    float32/float64 inputs (and also with torch.nn's ``baseline``), or through
    the error bound relative to torch.nn for float16/bfloat16 inputs (also for
    their float32 results: weight grads and running stats of mixed modules).
    ``scale`` (>= 1) scales the absolute tolerance for results computed by
    cancellation of larger terms (e.g. input gradients ~ w * invstd * dy)."""
    assert actual.dtype == baseline.dtype, (msg, actual.dtype, baseline.dtype)
    if actual.dtype in HALF_DTYPES or in_dtype in HALF_DTYPES:
        assert_error_bound(actual, baseline, expected, msg=msg, scale=scale)
    else:
        tol = dict(TIGHT[actual.dtype])
        tol["atol"] *= max(scale, 1.0)
        assert_tight(actual, expected, msg=f"{msg} (vs reference)", **tol)
        try:
            assert_tight(baseline, expected, **tol)
        except AssertionError:
            # torch.nn itself is wrong here (the reference is the authority)
            warnings.warn(f"{msg}: torch.nn deviates from the float64 reference; compared with the reference only")
        else:
            torch.testing.assert_close(
                actual.detach(), baseline.detach(), msg=lambda m: f"{msg} (vs torch.nn)\n{m}", **tol
            )


# ---------------------------------------------------------------- crash guard
_CRASH_PROBES = {}


def assert_no_crash(code, what):
    """Run ``code`` (which imports fastbn) in a subprocess first, so that a
    segfault in fastbn fails the test that needs it cleanly instead of
    killing the whole pytest run. Cached per snippet."""
    import subprocess
    import sys

    if code not in _CRASH_PROBES:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              cwd=os.getcwd())
        _CRASH_PROBES[code] = (proc.returncode, proc.stderr[-2000:])
    rc, err = _CRASH_PROBES[code]
    if rc < 0:
        raise AssertionError(f"fastbn crashed (signal {-rc}) on {what}; snippet:\n{code}\n{err}")
