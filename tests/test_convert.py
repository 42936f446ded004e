"""fastbn.convert_model on a small CNN, and a short SGD training loop whose
losses must match an identical torch.nn model's; fastbn.revert_model back to torch.nn."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import bn_utils  # noqa: F401


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x):
        return self.body(x)


class SmallCNN(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.block = Block()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, momentum=None), nn.ReLU()),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.BatchNorm1d(16, affine=False), nn.ReLU(),
                                  nn.Linear(16, classes))
        self.seq_bn = nn.BatchNorm1d(5, track_running_stats=False)

    def forward(self, x):
        x = self.pool(self.features(self.block(x)))
        return self.seq_bn(self.head(x))


BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _bn_modules(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, BN_TYPES)}


def _warm(model, gen):
    """Non-default parameters and running stats."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BN_TYPES) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    model.train()
    model(torch.randn(6, 3, 8, 8, generator=gen))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_convert_model(fb, gen, training, dtype):
    original = SmallCNN()
    _warm(original, gen)
    original = original.to(dtype).train(training)
    reference = copy.deepcopy(original)
    keys = list(original.state_dict())
    values = {k: v.clone() for k, v in original.state_dict().items()}
    non_bn_types = {n: type(m) for n, m in original.named_modules() if not isinstance(m, BN_TYPES)}
    bn_before = {n: (type(m), m.training) for n, m in _bn_modules(original).items()}
    assert len(bn_before) == 4

    converted = fb.convert_model(original)

    # every exact nn.BatchNorm*d replaced by its fastbn twin, nothing else touched
    fast_types = {nn.BatchNorm1d: fb.BatchNorm1d, nn.BatchNorm2d: fb.BatchNorm2d, nn.BatchNorm3d: fb.BatchNorm3d}
    after = dict(converted.named_modules())
    for name, (t, mode) in bn_before.items():
        assert type(after[name]) is fast_types[t], name
        assert after[name].training == mode == training
    for name, t in non_bn_types.items():
        assert type(after[name]) is t, name
    assert converted.training == training
    # same parameter/buffer values, keys, dtype and device; options kept
    assert list(converted.state_dict()) == keys
    for k, v in converted.state_dict().items():
        assert v.dtype == values[k].dtype and v.device == values[k].device, k
        torch.testing.assert_close(v, values[k], rtol=0, atol=0)
    for name, m in _bn_modules(converted).items():
        r = dict(reference.named_modules())[name]
        assert (m.eps, m.momentum, m.affine, m.track_running_stats) == (r.eps, r.momentum, r.affine,
                                                                      r.track_running_stats)
    # same outputs as the unconverted model (and same running-stat updates)
    x = torch.randn(4, 3, 8, 8, generator=gen, dtype=dtype)
    torch.testing.assert_close(converted(x), reference(x))
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(converted.state_dict()[k], v, msg=lambda s: f"{k}: {s}")
    # state_dict round trip with the unconverted architecture
    SmallCNN().to(dtype).load_state_dict(converted.state_dict(), strict=True)


def test_convert_single_module_and_no_bn(fb):
    bn = nn.BatchNorm3d(4, eps=1e-3)
    new = fb.convert_model(bn)
    assert type(new) is fb.BatchNorm3d and new.eps == 1e-3
    torch.testing.assert_close(new.running_var, bn.running_var, rtol=0, atol=0)
    lin = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    out = fb.convert_model(lin)
    assert [type(m) for m in out] == [nn.Linear, nn.ReLU]


def test_convert_only_exact_types(fb):
    """Subclasses of nn.BatchNorm*d (user subclasses, SyncBatchNorm) are left alone."""

    class MyBN(nn.BatchNorm2d):
        pass

    model = nn.Sequential(MyBN(3), nn.SyncBatchNorm(3), nn.BatchNorm2d(3))
    out = fb.convert_model(model)
    assert type(out[0]) is MyBN
    assert type(out[1]) is nn.SyncBatchNorm
    assert type(out[2]) is fb.BatchNorm2d


def test_convert_keeps_parameter_names_and_values(fb):
    """Parameters keep their names and values (same tensors or equal copies)."""
    model = SmallCNN()
    params_before = {n: p for n, p in model.named_parameters()}
    converted = fb.convert_model(model)
    params_after = dict(converted.named_parameters())
    assert params_after.keys() == params_before.keys()
    for n, p in params_after.items():
        torch.testing.assert_close(p, params_before[n], rtol=0, atol=0)


def test_training_loop_matches_torch(fb, gen):
    """5 SGD steps on a fixed batch: identical losses, params, running stats."""
    torch_model = SmallCNN()
    fast_model = fb.convert_model(copy.deepcopy(torch_model))
    assert any(isinstance(m, fb.BatchNorm2d) for m in fast_model.modules())
    x = torch.randn(8, 3, 8, 8, generator=gen)
    target = torch.randint(0, 5, (8,), generator=gen)
    opt_t = torch.optim.SGD(torch_model.parameters(), lr=0.1, momentum=0.9)
    opt_f = torch.optim.SGD(fast_model.parameters(), lr=0.1, momentum=0.9)
    losses_t, losses_f = [], []
    for _ in range(5):
        for model, opt, losses in ((torch_model, opt_t, losses_t), (fast_model, opt_f, losses_f)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
    torch.testing.assert_close(torch.stack(losses_f), torch.stack(losses_t), rtol=1e-5, atol=1e-5)
    assert losses_f[-1] < losses_f[0]
    for (k, v_f), (k2, v_t) in zip(fast_model.state_dict().items(), torch_model.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v_f, v_t, rtol=1e-4, atol=1e-5, msg=lambda s: f"{k}: {s}")
    fast_model.eval()
    torch_model.eval()
    torch.testing.assert_close(fast_model(x), torch_model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_revert_model_round_trip(fb, gen, training):
    """revert_model undoes convert_model: torch.nn's exact classes again, sharing the same
    tensors, options and training flag, with the same outputs."""
    original = SmallCNN()
    _warm(original, gen)
    original.train(training)
    types = {n: type(m) for n, m in original.named_modules()}
    tensors = {k: v for k, v in original.state_dict(keep_vars=True).items()}
    reference = copy.deepcopy(original)

    reverted = fb.revert_model(fb.convert_model(original))

    assert {n: type(m) for n, m in reverted.named_modules()} == types
    for k, v in reverted.state_dict(keep_vars=True).items():
        assert v is tensors[k], k
    for name, m in _bn_modules(reverted).items():
        assert m.training == training
    x = torch.randn(4, 3, 8, 8, generator=gen)
    torch.testing.assert_close(reverted(x), reference(x))


def test_revert_for_tools_that_know_only_torch_nn(fb, gen):
    """torch.ao.quantization.fuse_modules matches torch.nn's classes only: after
    revert_model it folds the BatchNorm into the convolution."""
    model = fb.convert_model(Block()).eval()
    _warm(model, gen)
    model.eval()
    with pytest.raises(AssertionError, match="did not find fuser method"):
        torch.ao.quantization.fuse_modules(copy.deepcopy(model), [["body.0", "body.1"]])
    fused = torch.ao.quantization.fuse_modules(fb.revert_model(copy.deepcopy(model)),
                                               [["body.0", "body.1"]])
    assert isinstance(fused.body[1], nn.Identity)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)


def test_revert_then_jit_script(fb, gen):
    model = fb.convert_model(Block()).eval()
    # fastbn's forward is not TorchScript (which error depends on what the compiler reads first)
    with pytest.raises((RuntimeError, torch.jit.frontend.FrontendError)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
            torch.jit.script(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(fb.revert_model(copy.deepcopy(model)))
    x = torch.randn(2, 3, 8, 8, generator=gen)
    torch.testing.assert_close(scripted(x), model(x))


def test_revert_leaves_torch_modules_alone(fb):
    torch_bn = nn.BatchNorm2d(3)
    out = fb.revert_model(nn.Sequential(torch_bn, fb.BatchNorm1d(4)))
    assert [type(m) for m in out] == [nn.BatchNorm2d, nn.BatchNorm1d]
    assert out[0] is torch_bn
