"""The fused activation in models: fastbn.fuse_activations (FX) on torchvision's and timm's
resnet18, convert_model on timm's BatchNormAct2d, training steps against torch.nn, and the
fused operators under opcheck, torch.compile and torch.export."""
import copy
import warnings

import pytest
import torch

from bn_utils import make_tensor

torchvision = pytest.importorskip("torchvision", reason="torchvision is installed by .ci/run")
timm = pytest.importorskip("timm", reason="timm is installed by .ci/run")


def _fused_modules(model, fb):
    return [m for m in model.modules() if isinstance(m, fb.modules._FastBatchNormAct)]


def test_fuse_torchvision_resnet18_graph(fb):
    model = torchvision.models.resnet18(num_classes=10)
    fused = fb.fuse_activations(copy.deepcopy(model))
    # the stem's bn1 → relu, and in each of the 8 blocks bn1 → relu and bn2 → += → relu
    mods = _fused_modules(fused, fb)
    assert len(mods) == 17 and all(m.act == "relu" for m in mods)
    residual_calls = [n for n in fused.graph.nodes
                      if n.op == "call_module" and len(n.args) == 2]
    assert len(residual_calls) == 8
    assert not any(n.op == "call_function" and "add" in str(n.target) for n in fused.graph.nodes)
    assert fused.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(4, 3, 64, 64)
    unfused = fb.convert_model(copy.deepcopy(model))
    for train in (True, False):
        a, b, u = (copy.deepcopy(m).train(train) for m in (model, fused, unfused))
        want = a(x)
        # as close to torch.nn as the unfused fastbn (the last stage normalizes 2×2 maps)
        bound = 2 * (u(x) - want).abs().max().item() + 1e-5
        torch.testing.assert_close(b(x), want, rtol=0, atol=bound)


def _train(model, xs, ys, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for i in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xs[i]), ys[i])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _max_state_diff(a, b):
    return max((a.state_dict()[k].double() - v.double()).abs().max().item()
               for k, v in b.state_dict().items() if v.is_floating_point())


@pytest.mark.parametrize("family", ["torchvision", "timm"])
def test_training_matches_torch(fb, family):
    torch.manual_seed(0)
    if family == "torchvision":
        model = torchvision.models.resnet18(num_classes=10)
    else:
        model = timm.create_model("resnet18", num_classes=10, pretrained=False)
    steps = 3
    xs = [torch.randn(4, 3, 48, 48) for _ in range(steps)]
    ys = [torch.randint(0, 10, (4,)) for _ in range(steps)]
    reference = copy.deepcopy(model)
    unfused = fb.convert_model(copy.deepcopy(model))
    fused = fb.fuse_activations(fb.convert_model(copy.deepcopy(model)))
    assert len(_fused_modules(fused, fb)) == 17
    ref_losses = _train(reference, xs, ys, steps)
    unfused_losses = _train(unfused, xs, ys, steps)
    fused_losses = _train(fused, xs, ys, steps)
    unfused_gap = max(abs(a - b) for a, b in zip(unfused_losses, ref_losses))
    fused_gap = max(abs(a - b) for a, b in zip(fused_losses, ref_losses))
    assert fused_gap <= 2 * unfused_gap + 1e-4, (ref_losses, unfused_losses, fused_losses)
    # parameters and running statistics: as close to torch.nn as the unfused fastbn is
    assert _max_state_diff(fused, reference) <= 2 * _max_state_diff(unfused, reference) + 1e-4


@pytest.mark.parametrize("act_layer,expected,slope", [
    (torch.nn.ReLU, "relu", None), (torch.nn.SiLU, "silu", None),
    ("leaky_relu", "leaky_relu", 0.01)])
def test_convert_timm_batchnormact(fb, gen, act_layer, expected, slope):
    from timm.layers import BatchNormAct2d
    m = BatchNormAct2d(8, act_layer=act_layer)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_()
    x = make_tensor((4, 8, 5, 5), torch.float32, "contiguous", gen)
    want = copy.deepcopy(m)(x)
    c = fb.convert_model(m)
    assert type(c) is fb.BatchNormAct2d and c.act == expected
    assert c.weight is m.weight and c.running_mean is m.running_mean
    assert c.state_dict().keys() == m.state_dict().keys()
    torch.testing.assert_close(c(x), want, rtol=1e-5, atol=1e-5)


def test_convert_timm_unsupported_act_keeps_it(fb, gen):
    from timm.layers import BatchNormAct2d
    m = torch.nn.Sequential(BatchNormAct2d(8, act_layer=torch.nn.GELU),
                            BatchNormAct2d(8, apply_act=False))
    x = make_tensor((4, 8, 5, 5), torch.float32, "contiguous", gen)
    want = copy.deepcopy(m)(x)
    c = fb.convert_model(m)
    assert isinstance(c[0], fb.BatchNorm2d) and isinstance(c[0].act, torch.nn.GELU)
    assert type(c[1]) is fb.BatchNorm2d
    torch.testing.assert_close(c(x), want, rtol=1e-5, atol=1e-5)
    assert c.state_dict().keys() == m.state_dict().keys()


def test_unknown_batchnorm_subclass_warns(fb):
    class MyBN(torch.nn.BatchNorm2d):
        pass

    model = torch.nn.Sequential(MyBN(4), torch.nn.BatchNorm2d(4), torch.nn.SyncBatchNorm(4))
    with pytest.warns(UserWarning, match="MyBN is a BatchNorm subclass fastbn does not know"):
        fb.convert_model(model)
    assert type(model[0]) is MyBN and type(model[1]) is fb.BatchNorm2d
    assert type(model[2]) is torch.nn.SyncBatchNorm


def test_fuse_functional_and_method_forms(fb, gen):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = (torch.nn.BatchNorm2d(6) for _ in range(3))

        def forward(self, x, r):
            y = torch.nn.functional.leaky_relu(self.a(x), 0.2)
            y = torch.relu(self.b(y) + r)
            return torch.nn.functional.silu(self.c(y)).sum() + self.c.weight.sum() * 0 + self.b(x).relu().sum()

    net = Net()
    x = make_tensor((3, 6, 4, 4), torch.float32, "contiguous", gen)
    r = make_tensor((3, 6, 4, 4), torch.float32, "contiguous", gen)
    fused = fb.fuse_activations(copy.deepcopy(net))
    acts = sorted(m.act for m in _fused_modules(fused, fb))
    # b is called twice: left unfused; a and c are fused
    assert acts == ["leaky_relu", "silu"], acts
    assert fused.a.negative_slope == 0.2
    torch.testing.assert_close(fused(x, r), net(x, r), rtol=1e-4, atol=1e-4)


def _op_args(gen, dtype=torch.float32, layout="contiguous"):
    x = make_tensor((3, 6, 5, 4), dtype, layout, gen)
    r = make_tensor((3, 6, 5, 4), dtype, layout, gen)
    w = torch.rand(6, generator=gen) + 0.5
    b = torch.randn(6, generator=gen)
    return x, r, w, b, torch.zeros(6), torch.ones(6)


@pytest.mark.parametrize("act", [1, 2, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck_fused(fb, gen, act, layout):
    x, r, w, b, rm, rv = _op_args(gen, layout=layout)
    torch.library.opcheck(torch.ops.fastbn.batch_norm_train.default,
                          (x, w, b, rm, rv, torch.tensor(0), 0.1, 1e-5, r, act, 0.2))
    torch.library.opcheck(torch.ops.fastbn.batch_norm_eval.default,
                          (x, w, b, rm, rv, 1e-5, r, act, 0.2))
    _, mean, invstd = torch.ops.fastbn.batch_norm_train(x, w, b, None, None, None, 0.1, 1e-5, r, act, 0.2)
    dy = torch.randn_like(x)
    for training in (True, False):
        torch.library.opcheck(torch.ops.fastbn.batch_norm_backward.default,
                              (dy, x, w, mean, invstd, training, [True, True, True], b, r, act,
                               0.2, True))


def test_compile_fullgraph_fused(fb, gen):
    x, r, *_ = _op_args(gen)
    m = fb.BatchNormAct2d(6, act="silu")
    m_eager = copy.deepcopy(m)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    xc, rc = x.clone().requires_grad_(), r.clone().requires_grad_()
    xe, re = x.clone().requires_grad_(), r.clone().requires_grad_()
    for train in (True, False):
        m.train(train)
        m_eager.train(train)
        yc, ye = compiled(xc, rc), m_eager(xe, re)
        torch.testing.assert_close(yc, ye, rtol=1e-6, atol=1e-6)
        yc.sum().backward()
        ye.sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rc.grad, re.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.running_mean, m_eager.running_mean)


def test_export_fused_eval(fb, gen):
    x, r, *_ = _op_args(gen)
    m = fb.BatchNormAct2d(6, act="relu").eval()
    ep = torch.export.export(m, (x, r))
    assert any("fastbn.batch_norm_eval" in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(x, r), m(x, r), rtol=0, atol=0)
