"""Which elementwise form the CPU paths with per-lane parameters apply (channels_last, and
contiguous maps short enough to go by spans), seen exactly in their rounding.

The normalize pass computes y = x·scale + (shift − center·scale) (folded) when every
channel's |center|·invstd ≤ 4, else (x − center)·scale + shift (centred); see FoldCheck in
csrc/cpu/batch_norm_cpu.cpp. Channels_last folds in training and eval; spans fold in eval only
(in training the check would come after each block's output is written). The contiguous case
goes by spans whatever the vector width (the choice depends on the shape only, and its eval
folds where the rows path never would); its training case guards the centred form there. Both are accurate enough to pass the error bounds of
test_modules.py, so those tests cannot tell which one ran. Here each form is emulated in
float64 from the float32 parameters the kernel uses, rounded to float32 once per operation
the kernel rounds (an FMA is one rounding; the baseline kernel table has none), and the
output must equal the expected form's emulation bit for bit and differ from the other's.
"""
import pytest
import torch
from bn_utils import make_tensor

import fastbn
import fastbn.info
from fastbn import ops

FUSED = fastbn.info.cpu_kernel_isa() != "default"


def fma32(a, b, c):
    """float32 a·b + c as the kernel rounds it. float64 holds the product of two float32
    exactly, so a·b + c in float64 then float32 is one rounding, bar a double-rounding tie."""
    a, b, c = a.double(), b.double(), c.double()
    return (a * b + c).float() if FUSED else ((a * b).float().double() + c).float()


def forms(x, center, invstd, weight, bias):
    """(centred, folded) outputs from float32 per-channel center and invstd."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    c, scale, shift = center.float(), weight.float() * invstd.float(), bias.float()
    folded_shift = (shift.double() - c.double() * scale.double()).float()
    d = (x.double() - c.double().view(shape)).float()
    centred = fma32(d, scale.view(shape), shift.view(shape))
    folded = fma32(x.float(), scale.view(shape), folded_shift.view(shape))
    return centred, folded


def check_form(y, centred, folded, want_folded):
    want, other = (folded, centred) if want_folded else (centred, folded)
    assert torch.equal(y, want), f"{(y != want).sum()} elements differ from the expected form"
    assert not torch.equal(y, other), "the test cannot tell the two forms apart"


# (layout, shape): 3×3 maps with 128 channels go by spans with any vector width.
CASES = [("channels_last", (8, 64, 6, 6)), ("contiguous", (8, 128, 3, 3))]


def params(channels, gen):
    return torch.rand(channels, generator=gen) + 0.5, torch.randn(channels, generator=gen)


@pytest.mark.parametrize("layout, shape", CASES)
@pytest.mark.parametrize("offset, folded", [(0.0, True), (3.0, True), (1000.0, False)])
def test_eval_form(gen, layout, shape, offset, folded):
    x = make_tensor(shape, torch.float32, layout, gen, offset=offset)
    channels = x.shape[1]
    m = fastbn.BatchNorm2d(channels).eval()
    weight, bias = params(channels, gen)
    with torch.no_grad():
        m.running_mean.copy_(offset + 0.1 * torch.randn(channels, generator=gen))
        m.running_var.copy_(1 + 0.1 * torch.rand(channels, generator=gen))
        m.weight.copy_(weight)
        m.bias.copy_(bias)
        y = m(x)
    invstd = (1 / (m.running_var.double() + m.eps).sqrt()).float()  # as fast_rsqrt on the CPU
    check_form(y, *forms(x, m.running_mean, invstd, weight, bias), want_folded=folded)


@pytest.mark.parametrize("layout, shape", CASES)
@pytest.mark.parametrize("offset, folded", [(0.0, True), (3.0, True), (1000.0, False)])
def test_training_form(gen, layout, shape, offset, folded):
    x = make_tensor(shape, torch.float32, layout, gen, offset=offset)
    weight, bias = params(x.shape[1], gen)
    y, mean, invstd = ops.batch_norm_train(x, weight, bias, None, None, None, 0.1, 1e-5)
    check_form(y, *forms(x, mean, invstd, weight, bias),
               want_folded=folded and layout == "channels_last")
