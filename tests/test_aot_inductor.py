"""Deployment through torch.export + AOTInductor: the compiled package calls fastbn's operator
(through the dispatcher, with fastbn imported) and matches eager, for any batch size."""

import torch

import bn_utils  # noqa: F401  (keeps the tests directory importable first)


class Net(torch.nn.Module):
    def __init__(self, fb):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = fb.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def test_aot_inductor_package(fb, gen, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    torch.manual_seed(0)
    model = Net(fb).eval()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
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
