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


@pytest.mark.parametrize("inference", [False, True], ids=["grad-mode", "inference-mode"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_meta_checks_still_run(fb, training, inference):
    """The argument checks run on meta too, also under inference mode, where no autograd
    kernel runs before the Meta kernel: a wrong channel count, one value per channel in
    training, and a CPU input with the module's tensors left on meta (which would otherwise
    come back as an uninitialized CPU tensor) raise."""
    with torch.device("meta"):
        module = fb.BatchNorm2d(3).train(training)
    bad = [(torch.empty(4, 5, 6, 6, device="meta"), ValueError, "weight should have shape"),
           (torch.randn(4, 3, 6, 6), RuntimeError, "is on meta but the input is on cpu")]
    if training:
        bad.append((torch.empty(1, 3, 1, 1, device="meta"), ValueError, "more than 1 value"))
    with torch.inference_mode(inference):
        for x, error, match in bad:
            with pytest.raises(error, match=match):
                module(x)


def test_meta_backward_op_checks(fb):
    x = torch.empty(4, 3, 6, 6, device="meta")
    stats = torch.empty(3, device="meta")
    with pytest.raises(ValueError, match="grad_output has shape"):
        fb.ops.batch_norm_backward(torch.empty(4, 3, 6, 5, device="meta"), x, None, stats, stats,
                                   True, [True, True, True])


def test_deferred_initialization(fb, gen):
    with torch.device("meta"):
        module = fb.BatchNorm2d(3)
        assert module(torch.empty(4, 3, 5, 6)).shape == (4, 3, 5, 6)  # shapes before memory
    module.to_empty(device="cpu")
    module.reset_parameters()
    expected = torch.nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 6, generator=gen)
    torch.testing.assert_close(module(x), expected(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(module, name), getattr(expected, name))
