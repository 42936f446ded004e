"""The CPU statistics' one-pass shift, and the exact two-pass redo when the shift does not suit,
seen in the saved invstd.

The moments of a channel take one pass over d = x − K, K taken from the channel's first values
(a piece's first element for NCHW run by run, the mean of the first 8 samples' runs for NCHW
spans, of a band's first 8 rows for channels_last); when K lies more than about 4 standard
deviations from the mean, M2 = Σd² − (Σd)²/n cancels, and moments_from_deviations
(csrc/cpu/kernels_impl.h) orders two exact passes instead. The
outputs of test_modules.py cannot tell: on 1000 + 0.01·noise their error is the inputs'
rounding. The saved invstd can: with the redo it is within 3.3 float32 ulps (relative) of the
float64 value in every case here (torch's native kernels: 0.4-0.7 NCHW, 8-11 channels_last);
without it (measured by disabling the redo) 19-620 ulps.
"""
import pytest
import torch

from fastbn import ops

# (shape, layout, where the outlying values are): NCHW run by run (7×7 maps, 3 channels: too
# few for spans), whose shift is each piece's first element; NCHW spans (3×3 maps, 128 and 256
# channels), whose shift is the mean of the first 8 samples; channels_last, whose shift is the
# mean of a band's first 8 rows (of 64 channels in whole vectors, and of 24 by periods).
CASES = [((300, 3, 7, 7), "nchw", "first element"), ((300, 256, 3, 3), "nchw", "first samples"),
         ((4096, 128, 3, 3), "nchw", "first samples"),
         ((300, 64, 3, 3), "channels_last", "first rows"),
         ((300, 24, 3, 3), "channels_last", "first rows")]


def invstd_error(invstd, x):
    xd = x.double()
    want = 1 / torch.sqrt(xd.var((0, 2, 3), unbiased=False) + 1e-5)
    return ((invstd.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("shape, layout, where", CASES,
                         ids=["x".join(map(str, s)) + f"-{lay}" for s, lay, _ in CASES])
def test_outlying_shift_is_redone_exactly(shape, layout, where):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 1e-2 + 1000.0
    if where == "first element":
        x[0, :, 0, 0] = 1005.0
    elif where == "first samples":
        x[:8] = 1005.0
    else:  # the first 8 rows (N, H, W order) of the first band
        x.view(shape[0], shape[1], -1)[0, :, :8] = 1005.0
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    C = shape[1]
    _, _, invstd = ops.batch_norm_train(x, None, None, torch.zeros(C), torch.ones(C),
                                        torch.zeros((), dtype=torch.long), 0.1, 1e-5)
    _, _, torch_invstd = torch.ops.aten.native_batch_norm(
        x, None, None, torch.zeros(C), torch.ones(C), True, 0.1, 1e-5)
    err, torch_err = invstd_error(invstd, x), invstd_error(torch_invstd, x)
    ulp = torch.finfo(torch.float32).eps
    assert err <= 8 * ulp, f"invstd {err / ulp:.1f} ulps off (torch's {torch_err / ulp:.1f})"
