"""Every CPU kernel table this machine can run passes the CPU correctness tests.

The CPU kernels are compiled once per instruction set (default: SSE2 or the architecture's
baseline, AVX2, AVX-512, AVX-512 with BF16 conversion) and the best table the CPU supports is
picked when the first CPU op runs; FASTBN_CPU_ISA caps the choice. The rest of the suite runs
the best table only, so here each table below it runs the CPU correctness tests (module
against torch.nn and the NumPy reference, functional and op contracts, thread independence)
in a subprocess with FASTBN_CPU_ISA set. On an AVX-512 BF16 machine that is the code a user
with an AVX2 or an older CPU gets.
"""
import os
import pathlib
import subprocess
import sys

import pytest

import fastbn.info

ROOT = pathlib.Path(__file__).resolve().parents[1]
ORDER = ["avx512bf16", "avx512", "avx2", "default"]  # most capable first
BEST = fastbn.info.cpu_kernel_isa()
LOWER = ORDER[ORDER.index(BEST) + 1:]
SUITE = ["tests/test_modules.py", "tests/test_functional.py", "tests/test_ops.py",
         "tests/test_cpu_threads.py"]


def run(isa, *args):
    env = dict(os.environ, FASTBN_CPU_ISA=isa)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)


def test_best_table_is_in_use():
    assert BEST in ORDER
    assert run(BEST, "-c", "import fastbn.info; print(fastbn.info.cpu_kernel_isa())"
               ).stdout.strip() == BEST


def test_unknown_cap_is_an_error():
    out = run("avx3", "-c", "import torch, fastbn; fastbn.BatchNorm2d(3)(torch.randn(2, 3, 4, 4))")
    assert out.returncode != 0
    assert "FASTBN_CPU_ISA=avx3: expected one of avx512bf16, avx512, avx2, default" in out.stderr


@pytest.mark.skipif(not LOWER, reason=f"{BEST} is the only kernel table this CPU runs")
@pytest.mark.parametrize("isa", LOWER)
def test_lower_table_passes_cpu_suite(isa):
    picked = run(isa, "-c", "import fastbn.info; print(fastbn.info.cpu_kernel_isa())")
    assert picked.stdout.strip() == isa, picked.stderr[-2000:]
    out = run(isa, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITE)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout.splitlines()[-1], out.stdout[-2000:]
