"""Tracers. torch.fx.symbolic_trace of a model holding fastbn modules: they appear as
call_module nodes, as torch.nn's BatchNorm does, so the traced GraphModule follows
.train()/.eval() like eager; a fastbn module traced as the root records the operator.
torch.jit.trace records the operator."""

import copy
import warnings

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


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_symbolic_trace_of_the_module_itself(fb, gen, training):
    """As the root there is no parent to call it: the graph calls the operator, in the mode
    the module had when traced."""
    torch.manual_seed(0)
    module = fb.BatchNorm2d(4).train(training)
    eager = copy.deepcopy(module)
    traced = torch.fx.symbolic_trace(module)
    op = "fastbn.batch_norm_train.default" if training else "fastbn.batch_norm_eval.default"
    assert [str(n.target) for n in traced.graph.nodes if n.op == "call_function"][0] == op
    x = torch.randn(3, 4, 5, 6, generator=gen)
    torch.testing.assert_close(traced(x), eager(x))
    torch.testing.assert_close(traced.running_mean, eager.running_mean)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_jit_trace(fb, gen, training):
    torch.manual_seed(0)
    model = Net(fb.BatchNorm2d(4)).train(training)
    eager = copy.deepcopy(model)
    example = torch.randn(2, 3, 7, 6, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated
        traced = torch.jit.trace(copy.deepcopy(model), example, check_trace=False)
    op = "fastbn::batch_norm_train" if training else "fastbn::batch_norm_eval"
    assert op in str(traced.inlined_graph)
    x = torch.randn(5, 3, 7, 6, generator=gen)
    torch.testing.assert_close(traced(x), eager(x))
