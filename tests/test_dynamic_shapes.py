"""Symbolic shapes: torch.compile(dynamic=True) and torch.export with a dynamic batch trace
fastbn's operators without specializing the batch (one graph serves every batch size), and
the compiled or exported model matches eager in train and eval; an AOTInductor package of the
exported eval graph calls fastbn's operator (through the dispatcher, with fastbn imported)."""

import copy

import pytest
import torch

import bn_utils  # noqa: F401  (keeps the tests directory importable first)


class Net(torch.nn.Module):
    def __init__(self, fb):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = fb.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def _net(fb, training):
    torch.manual_seed(0)
    net = Net(fb).train(training)
    with torch.no_grad():
        net.bn.running_mean.normal_()
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


BATCHES = (2, 3, 5, 8)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compile_dynamic_one_graph_for_every_batch(fb, gen, training, memory_format):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        model = _net(fb, training).to(memory_format=memory_format)
        eager = copy.deepcopy(model)
        compiled = torch.compile(model, dynamic=True, fullgraph=True, backend="aot_eager")
        for batch in BATCHES:
            x = torch.randn(batch, 3, 7, 6, generator=gen).contiguous(memory_format=memory_format)
            xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
            yc, ye = compiled(xc), eager(xe)
            torch.testing.assert_close(yc, ye)
            yc.square().sum().backward()
            ye.square().sum().backward()
            torch.testing.assert_close(xc.grad, xe.grad)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
        for (name, p), q in zip(model.named_parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=lambda s: f"{name}: {s}")
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(model.bn, name), getattr(eager.bn, name))
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_export_dynamic_batch(fb, gen, training):
    model = _net(fb, training)
    eager = copy.deepcopy(model)
    example = torch.randn(2, 3, 7, 6, generator=gen)
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    op = "fastbn.batch_norm_train.default" if training else "fastbn.batch_norm_eval.default"
    assert any(str(node.target) == op for node in program.graph.nodes)
    exported = program.module()
    for size in BATCHES:
        x = torch.randn(size, 3, 7, 6, generator=gen)
        torch.testing.assert_close(exported(x), eager(x))
    # the exported training graph updates its copy of the buffers as eager updates its own
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(exported.bn, name), getattr(eager.bn, name))


def test_aot_inductor_package(fb, gen, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    model = _net(fb, training=False)
    example = torch.randn(2, 3, 8, 8, generator=gen)
    program = torch.export.export(model, (example,),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch", min=2)}})
    path = torch._inductor.aoti_compile_and_package(program,
                                                    package_path=str(tmp_path / "net.pt2"))
    loaded = torch._inductor.aoti_load_package(path)
    for batch in (2, 5):
        x = torch.randn(batch, 3, 8, 8, generator=gen)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = loaded(x)
        assert "fastbn::batch_norm_eval" in {e.key for e in prof.key_averages()}
        torch.testing.assert_close(y, model(x))
