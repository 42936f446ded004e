"""torch.compile(fullgraph=True) of a small conv + fastbn.BatchNorm2d + relu
model: no graph breaks, and the compiled model matches eager (outputs,
gradients, running statistics, num_batches_tracked) in train and eval.
Two compilations per case (train graph with backward, eval graph)."""

import copy

import pytest
import torch

import bn_utils  # noqa: F401  (keeps the tests directory importable first)


class Net(torch.nn.Module):
    def __init__(self, fb, momentum=0.1):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.bn = fb.BatchNorm2d(6, momentum=momentum)
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _step_matches(eager, compiled, x, dy, forward_op):
    """Forward + backward through eager and compiled on copies of x: same output and input
    gradient, and the compiled graph still calls fastbn's operators."""
    xe = x.clone().requires_grad_()
    xc = x.clone().requires_grad_()
    ye = eager(xe)
    ye.backward(dy)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        yc = compiled(xc)
        yc.backward(dy)
    called = {e.key for e in prof.key_averages()}
    assert forward_op in called and "fastbn::batch_norm_backward" in called, sorted(called)
    torch.testing.assert_close(yc, ye)
    torch.testing.assert_close(xc.grad, xe.grad)


@pytest.mark.parametrize(
    "momentum,memory_format",
    [(0.1, torch.contiguous_format), (None, torch.channels_last)],
    ids=["m0.1-contiguous", "mNone-channels_last"],
)
def test_compile_fullgraph_matches_eager(fb, gen, monkeypatch, momentum, memory_format):
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    torch._dynamo.reset()
    try:
        eager = Net(fb, momentum).to(memory_format=memory_format)
        with torch.no_grad():
            eager.bn.weight.uniform_(0.5, 1.5)
            eager.bn.bias.normal_()
        model = copy.deepcopy(eager)
        compiled = torch.compile(model, fullgraph=True)

        x = torch.randn(4, 3, 7, 5, generator=gen).contiguous(memory_format=memory_format)
        dy = torch.randn(4, 6, 7, 5, generator=gen)

        # train (two steps: running stats evolve the same way)
        for step in range(2):
            for m in (eager, model):
                m.zero_grad(set_to_none=True)
            _step_matches(eager, compiled, x + step, dy, "fastbn::batch_norm_train")
            ge, gc = _grads(eager), _grads(model)
            assert ge.keys() == gc.keys()
            for k in ge:
                torch.testing.assert_close(gc[k], ge[k], msg=lambda s: f"grad {k}: {s}")
            torch.testing.assert_close(model.bn.running_mean, eager.bn.running_mean)
            torch.testing.assert_close(model.bn.running_var, eager.bn.running_var)
            torch.testing.assert_close(model.bn.num_batches_tracked, eager.bn.num_batches_tracked, rtol=0, atol=0)
        torch.testing.assert_close(model.bn.num_batches_tracked, torch.tensor(2), rtol=0, atol=0)

        # eval
        eager.eval()
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), eager(x))
        _step_matches(eager, compiled, x, dy, "fastbn::batch_norm_eval")
        torch.testing.assert_close(model.bn.num_batches_tracked, torch.tensor(2), rtol=0, atol=0)
        torch.testing.assert_close(model.bn.running_mean, eager.bn.running_mean)
    finally:
        torch._dynamo.reset()


def test_compile_no_graph_breaks_explain(fb, gen):
    """torch._dynamo.explain traces (no compilation) and must report one graph."""
    torch._dynamo.reset()
    try:
        model = Net(fb)
        x = torch.randn(2, 3, 5, 5, generator=gen)
        for mode in (True, False):
            model.train(mode)
            explanation = torch._dynamo.explain(model)(x)
            assert explanation.graph_break_count == 0, explanation.break_reasons
            assert explanation.graph_count == 1
    finally:
        torch._dynamo.reset()
