"""The CPU backend's results (training forward, backward, eval) do not depend on the number of threads.

The decomposition into pieces, bands and rows depends only on the shape and dtype, and the
paths the threading picks (whole channels per thread, pieces spread over the threads, channel
blocks written sample by sample, paired blocks reduced sample by sample) sum every channel the
same way: outputs, statistics and
gradients are equal bit for bit with 1 and 2 threads. The shapes are large enough to be
split over threads (more than 192 KiB) and cover short runs (7×7 maps) in one piece and in
several, by spans of several channels, long runs, channel counts that do and do not divide among the threads,
channels_last with its folded and its centred transform and with few bands (made an even
number of equal ones), and outputs large enough to be streamed past the cache, with runs that
start on a cache line and runs that do not. Each result is also checked against torch.nn in
float64.
"""
import pytest
import torch

import fastbn

SHAPES = [
    (64, 3, 7, 7),      # short runs, C odd: pieces spread over 2 threads, channel blocks on 1
    (32, 96, 7, 7),     # short runs, whole channels per thread: 32 samples, so paired blocks on
                        # 2 threads, channel blocks on 1
    (700, 3, 7, 7),     # short runs, several pieces per channel
    (4, 5, 56, 56),     # long runs, pieces spread over the threads
    (40, 3, 28, 28),    # one piece per channel, C odd: pieces spread over 2 threads, channel
                        # blocks on 1
    (8, 64, 28, 28),    # long runs, one piece per channel: paired channel blocks (sample by
                        # sample) on 2 threads, channel blocks on 1
    (256, 64, 3, 3),    # runs of a vector or two (AVX2/SSE float, every double width) or of
    (128, 64, 4, 4),    # exactly one (AVX-512 float): paired blocks from 32 samples
]
# Outputs of 20.25 MiB (float32; 10.1 MiB bfloat16, 40.5 MiB float64) are written with
# non-temporal stores where the last-level cache holds at most 40.5 MiB (the forwards' input
# and output) or 60.75 MiB (the backward's three tensors), and those of 40.5 MiB (float64 here,
# float32 in the 32x64x72x72 case) on any machine: their passes exceed the 64 MiB cap.
LARGE = (16, 64, 72, 72)
# (shape, layout, offset of the data): 3·randn + 5 takes channels_last's folded transform,
# + 1000 its centred one (see tests/test_cpu_forms.py).
CASES = [(s, "nchw", 5.0) for s in SHAPES + [LARGE]] + [
    ((8, 64, 28, 28), "channels_last", 5.0), ((64, 3, 7, 7), "channels_last", 5.0),
    # 588 rows of 512 channels: 3 bands of at most 256 rows become 4 equal ones (nsc_bands)
    ((12, 512, 7, 7), "channels_last", 5.0),
    (LARGE, "channels_last", 5.0), ((32, 64, 72, 72), "channels_last", 5.0),
    ((8, 64, 28, 28), "channels_last", 1000.0), ((32, 64, 72, 72), "channels_last", 1000.0)] + [
    # Channels that do not fill whole vectors, reduced and written by periods of lcm(C, W)
    # elements (nsc_periodic), with rows left over after the last whole period: C = 3 (16
    # rows per period with 16 float lanes), 8, 24, 40 and 200 (2 rows). (Their centred
    # transform: test_channels_last_folded_and_centred_numerics in test_modules.py.)
    (s, "channels_last", 5.0) for s in [(9, 3, 61, 67), (5, 8, 63, 65), (15, 24, 29, 31),
                                        (7, 40, 33, 35), (5, 200, 21, 23)]] + [
    # Whole vectors and a scalar remainder of channels (a period of 257 channels is too long).
    ((9, 257, 11, 13), "channels_last", 5.0)] + [
    # NCHW maps shorter than 4 vectors go by spans (blocks of whole periods of lcm(S, W)
    # lanes, the channels after the last whole period run by run: span_blocks in
    # csrc/cpu/batch_norm_cpu.cpp) from 8 periods of channels: with AVX-512 float lanes 7×7
    # with 256 channels (blocks of 16) and 200 (8 left over), 5×5 with 160 (blocks of 32),
    # 3×3 with 136 (runs shorter than a vector: blocks of 112, 8 left over); float64 too.
    (s, "nchw", 5.0) for s in [(16, 256, 7, 7), (8, 200, 7, 7), (40, 160, 5, 5),
                               (48, 136, 3, 3)]]


def params(channels):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(channels, generator=gen) + 0.5, torch.rand(channels, generator=gen) * 2 - 1


def run(x, dy, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        m = fastbn.BatchNorm2d(x.shape[1])
        if x.dtype == torch.float64:
            m.double()
        with torch.no_grad():
            for p, v in zip((m.weight, m.bias), params(x.shape[1])):
                p.copy_(v)
        xg = x.detach().clone().requires_grad_()
        y = m(xg)
        y.backward(dy)
        with torch.no_grad():
            y_eval = m.eval()(x)
        return [y, m.running_mean, m.running_var, xg.grad, m.weight.grad, m.bias.grad, y_eval]
    finally:
        torch.set_num_threads(before)


# Streamed outputs (32 MiB and more) whose runs start and end mid-line (14×14 and 7×7 maps):
# only the lines no plain store touches stream (map_run in csrc/cpu/kernels_impl.h).
STREAMED_MID_LINE = [((43, 1024, 14, 14), torch.float32), ((168, 1024, 7, 7), torch.float32),
                     ((86, 1024, 14, 14), torch.bfloat16)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape,layout,offset", CASES,
                         ids=["x".join(map(str, s)) + f"-{lay}-{off:g}" for s, lay, off in CASES])
def test_results_equal_for_one_and_two_threads(shape, layout, offset, dtype):
    check(shape, layout, offset, dtype)


@pytest.mark.parametrize("shape,dtype", STREAMED_MID_LINE,
                         ids=["x".join(map(str, s)) + f"-{d}" for s, d in STREAMED_MID_LINE])
def test_streamed_runs_that_start_mid_line(shape, dtype):
    check(shape, "nchw", 5.0, dtype)


# A streamed channels_last output written by periods (24 channels: 2 rows per period of 48
# float lanes), whose bands end mid-line and mid-period: only whole lines of whole periods
# stream (for_periods in csrc/cpu/kernels_impl.h).
def test_streamed_periods():
    check((63, 24, 75, 77), "channels_last", 5.0, torch.float32)


def check(shape, layout, offset, dtype):
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = (torch.randn(shape, generator=gen) * 3 + offset).to(dtype=dtype, memory_format=fmt)
    dy = torch.randn(shape, generator=gen).to(dtype=dtype, memory_format=fmt)
    one, two = run(x, dy, 1), run(x, dy, 2)
    for a, b in zip(one, two):
        assert torch.equal(a, b), (a - b).abs().max()

    ref = torch.nn.BatchNorm2d(shape[1]).double()
    with torch.no_grad():
        for p, v in zip((ref.weight, ref.bias), params(shape[1])):
            p.copy_(v)
    xr = x.detach().double().requires_grad_()
    yr = ref(xr)
    yr.backward(dy.double())
    with torch.no_grad():
        yr_eval = ref.eval()(x.double())
    want = [yr, ref.running_mean, ref.running_var, xr.grad, ref.weight.grad, ref.bias.grad,
            yr_eval]
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else (
        dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9))
    for got, exp in zip(one, want):
        torch.testing.assert_close(got.double(), exp, **tol)
