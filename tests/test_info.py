"""`python -m fastbn.info` runs and reports the fastbn and torch versions."""

import os
import subprocess
import sys

import torch


def test_info_module_runs(fb):
    # run the same fastbn the tests import
    root = os.path.dirname(os.path.dirname(os.path.abspath(fb.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "fastbn.info"], capture_output=True, text=True, timeout=120, env=env, cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert fb.__version__ and fb.__version__ in out, out
    assert torch.__version__ in out, out
    assert "fastbn" in out.lower()
