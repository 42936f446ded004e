"""Meta tensors (shapes only), as torch.nn's BatchNorm handles them: a model built on the meta
device runs forward and backward for shape propagation, and deferred initialization
(to_empty + reset_parameters) gives a working module."""

import pytest
import torch

import bn_utils  # noqa: F401  (keeps the tests directory importable first)

SHAPES = {"BatchNorm1d": (4, 3, 5), "BatchNorm2d": (4, 3, 5, 6), "BatchNorm3d": (4, 3, 2, 5, 6)}
FORMATS = {"BatchNorm2d": torch.channels_last, "BatchNorm3d": torch.channels_last_3d}


CASES = [(kind, False) for kind in SHAPES] + [(kind, True) for kind in FORMATS]


@pytest.mark.parametrize("kind,channels_last", CASES,
                         ids=[f"{k}-{'cl' if cl else 'contiguous'}" for k, cl in CASES])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_meta_forward_backward_like_torch(fb, kind, channels_last, training):
    results = []
    for module_type in (getattr(fb, kind), getattr(torch.nn, kind)):
        with torch.device("meta"):
            module = module_type(3).train(training)
            x = torch.empty(SHAPES[kind])
        if channels_last:
            x = x.contiguous(memory_format=FORMATS[kind])
        x.requires_grad_()
        y = module(x)
        y.sum().backward()
        results.append((y, x.grad, module.weight.grad, module.bias.grad))
    for got, expected in zip(*results):
        assert got.device.type == "meta"
        assert (got.shape, got.dtype, got.stride()) == (expected.shape, expected.dtype,
                                                        expected.stride())


def test_meta_checks_still_run(fb):
    with torch.device("meta"):
        module = fb.BatchNorm2d(3)
        x = torch.empty(4, 5, 6, 6)
    with pytest.raises(ValueError, match="weight should have shape"):
        module(x)


def test_deferred_initialization(fb, gen):
    with torch.device("meta"):
        module = fb.BatchNorm2d(3)
    module.to_empty(device="cpu")
    module.reset_parameters()
    expected = torch.nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 6, generator=gen)
    torch.testing.assert_close(module(x), expected(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(module, name), getattr(expected, name))
