"""Compiled autograd (torch._dynamo.compiled_autograd): fastbn's backward nodes become a traced
call in the compiled backward graph, whose gradients equal eager's (the same kernel runs), and
a compiled training step that calls backward() matches eager."""

import pytest
import torch
from torch._dynamo import compiled_autograd
from torch._dynamo.backends.common import aot_autograd

import bn_utils  # noqa: F401  (keeps the tests directory importable first)


def _grads(module, x, dy, compiler=None, input_grad=True):
    """Gradients of (x, weight, bias) — those that require grad — of module(x).backward(dy),
    under compiled autograd with compiler when one is given."""
    x = x.detach().requires_grad_(input_grad)
    module.zero_grad(set_to_none=True)
    if compiler is None:
        module(x).backward(dy)
    else:
        with compiled_autograd._enable(compiler):
            module(x).backward(dy)
    return [t.grad for t in (x, module.weight, module.bias) if t is not None and t.requires_grad]


def _module(fb, params, training):
    m = fb.BatchNorm2d(5, affine=params != "none").train(training)
    if params != "none":
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_()
    if params == "frozen":
        m.weight.requires_grad_(False)
    return m


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("params", ["affine", "frozen", "none"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compiled_backward_equals_eager(fb, gen, training, params, memory_format):
    torch._dynamo.reset()
    try:
        m = _module(fb, params, training)
        x = torch.randn(4, 5, 6, 7, generator=gen).contiguous(memory_format=memory_format)
        dy = torch.randn(4, 5, 6, 7, generator=gen)
        graphs = []

        def capture(gm, example_inputs):
            graphs.append(gm.code)
            return gm

        expected = _grads(m, x, dy)
        got = _grads(m, x, dy, torch.compile(backend=capture, fullgraph=True))
        assert len(graphs) == 1
        bound = "fastbn_batch_norm_backward" if training else "fastbn_batch_norm_eval_backward"
        assert bound in graphs[0], graphs[0]
        assert len(got) == len(expected) == {"affine": 3, "frozen": 2, "none": 1}[params]
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=0, atol=0)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compiled_backward_traces_the_backward_op(fb, gen, training):
    """AOTAutograd traces through the node's call down to fastbn::batch_norm_backward (it is
    not left opaque), and the graph it compiles gives eager's gradients."""
    torch._dynamo.reset()
    try:
        m = _module(fb, "affine", training)
        x = torch.randn(3, 5, 4, 4, generator=gen)
        dy = torch.randn(3, 5, 4, 4, generator=gen)
        codes = []

        def record(gm, example_inputs):
            codes.append(gm.code)
            return gm

        compiler = torch.compile(backend=aot_autograd(fw_compiler=record), fullgraph=True)
        got = _grads(m, x, dy, compiler)
        assert any("torch.ops.fastbn.batch_norm_backward.default(" in c for c in codes), codes
        for g, e in zip(got, _grads(m, x, dy)):
            torch.testing.assert_close(g, e, rtol=0, atol=0)
    finally:
        torch._dynamo.reset()


def test_one_compiler_across_modes_eps_and_masks(fb, gen):
    """The compiled graph is cached by what compiled_args collects: a later backward that
    differs only in the mode, in eps (eval) or in which inputs need a gradient must not
    reuse a graph traced for another, so each must still equal eager's."""
    torch._dynamo.reset()
    try:
        x = torch.randn(4, 5, 6, 7, generator=gen)
        dy = torch.randn(4, 5, 6, 7, generator=gen)
        # (eval with eps=0 keys like the training node but for the mode: the training node
        # keeps eps 0, which only the eval backward uses)
        cases = [(True, 1e-5, True), (False, 0.0, True), (False, 1e-5, True), (False, 0.5, True),
                 (True, 1e-5, False), (False, 0.5, False)]
        compiler = torch.compile(backend="eager", fullgraph=True)
        for training, eps, input_grad in cases:
            m = _module(fb, "affine", training)
            m.eps = eps
            with torch.no_grad():
                m.running_var.uniform_(0.01, 0.1)  # eps matters next to these variances
            expected = _grads(m, x, dy, input_grad=input_grad)
            got = _grads(m, x, dy, compiler, input_grad=input_grad)
            assert len(got) == len(expected) == 2 + input_grad
            for g, e in zip(got, expected):
                torch.testing.assert_close(g, e, rtol=0, atol=0)
    finally:
        torch._dynamo.reset()


def test_compiled_training_step_with_compiled_autograd(fb, gen):
    """torch.compile of a step that calls backward() with compiled_autograd on, the forward
    left eager (so that the autograd graph holds fastbn's node rather than the compiled
    forward's): the compiled backward graph calls the node's functional form, and gradients,
    running statistics and num_batches_tracked equal the eager step's."""
    torch._dynamo.reset()
    try:
        def net():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), fb.BatchNorm2d(4),
                                       torch.nn.ReLU())

        eager, model = net(), net()
        forward_left_eager = torch._dynamo.disable(model)
        graphs = []

        def capture(gm, example_inputs):
            graphs.append(gm.code)
            return gm

        def step(forward, x):
            loss = forward(x).square().sum()
            loss.backward()
            return loss

        with torch._dynamo.config.patch(compiled_autograd=True):
            compiled_step = torch.compile(step, backend=capture)
            for _ in range(2):
                x = torch.randn(2, 3, 6, 6, generator=gen)
                torch.testing.assert_close(compiled_step(forward_left_eager, x), step(eager, x))
        assert any("fastbn_batch_norm_backward" in code for code in graphs), graphs
        for (name, p), q in zip(model.named_parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=lambda s: f"{name}: {s}")
        bn, bn_eager = model[1], eager[1]
        torch.testing.assert_close(bn.running_mean, bn_eager.running_mean)
        torch.testing.assert_close(bn.running_var, bn_eager.running_var)
        assert bn.num_batches_tracked.item() == bn_eager.num_batches_tracked.item() == 2
    finally:
        torch._dynamo.reset()
