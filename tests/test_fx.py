"""torch.fx.symbolic_trace of a model holding fastbn modules: they appear as call_module nodes,
as torch.nn's BatchNorm does, so the traced GraphModule follows .train()/.eval() like eager."""

import copy

import pytest
import torch
import torch.fx

import bn_utils  # noqa: F401  (keeps the tests directory importable first)


class Net(torch.nn.Module):
    def __init__(self, bn):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = bn
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


@pytest.mark.parametrize("kind", ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"])
def test_symbolic_trace_keeps_the_module(fb, kind):
    model = Net(getattr(fb, kind)(4))
    graph = torch.fx.symbolic_trace(model).graph
    calls = [(n.op, n.target) for n in graph.nodes if n.op in ("call_module", "call_function")]
    assert calls == [("call_module", "conv"), ("call_module", "bn"), ("call_module", "relu")]


@pytest.mark.parametrize("traced_in", [True, False], ids=["traced-train", "traced-eval"])
def test_traced_module_follows_train_and_eval(fb, gen, traced_in):
    torch.manual_seed(0)
    eager = Net(fb.BatchNorm2d(4)).train(traced_in)
    traced = torch.fx.symbolic_trace(copy.deepcopy(eager))
    assert isinstance(traced.bn, fb.BatchNorm2d)
    for mode in (True, False, True):
        eager.train(mode)
        traced.train(mode)
        x = torch.randn(3, 3, 7, 6, generator=gen)
        xe, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, yt = eager(xe), traced(xt)
        torch.testing.assert_close(yt, ye)
        ye.sum().backward()
        yt.sum().backward()
        torch.testing.assert_close(xt.grad, xe.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(traced.bn, name), getattr(eager.bn, name))
    assert traced.bn.num_batches_tracked.item() == 2
