"""The build's own promises: a clear error for a torch it was not built for, and indexing of
tensors past 2^31 elements."""
import subprocess
import sys

import pytest
import torch


def test_import_with_another_torch_says_built_for_x_you_have_y():
    code = "import torch; torch.__version__ = '9.9.9'; import fastbn"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "built for torch" in proc.stderr and "you have torch 9.9.9" in proc.stderr, proc.stderr


def test_tensor_past_2_pow_31_elements():
    """One channel of 2^31 + 17 bfloat16 values (4 GiB): ones, and a 3 at the far end. The
    training statistics and the output at the far end are only right with 64-bit indexing."""
    fastbn = pytest.importorskip("fastbn")
    n = 2**31 + 17
    x = torch.ones(1, 1, n, dtype=torch.bfloat16)
    x[0, 0, -1] = 3.0
    rm, rv = torch.zeros(1), torch.ones(1)
    y, mean, invstd = torch.ops.fastbn.batch_norm_train(x, None, None, rm, rv, None, 1.0, 1e-5)
    exp_mean = 1.0 + 2.0 / n
    exp_var = (n - 1) * (2.0 / n) ** 2 / n + (2.0 - 2.0 / n) ** 2 / n
    torch.testing.assert_close(mean.item(), exp_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(invstd.item(), (exp_var + 1e-5) ** -0.5, rtol=1e-3, atol=0)
    far = (3.0 - exp_mean) * (exp_var + 1e-5) ** -0.5
    torch.testing.assert_close(y[0, 0, -1].float().item(), far, rtol=1e-2, atol=0)
    torch.testing.assert_close(rv.item(), exp_var * n / (n - 1), rtol=1e-3, atol=0)
    del y
    y = torch.ops.fastbn.batch_norm_eval(x, None, None, torch.ones(1), torch.ones(1), 0.0)
    assert y[0, 0, -1].item() == 2.0 and y[0, 0, 0].item() == 0.0 and y[0, 0, 2**31].item() == 0.0
