"""The SIMT emulator's own tests (csrc/simt, csrc/kernels/device_compat.cuh).

The C++ cases live in tests/simt/*.cpp; they are compiled once per session with g++ and each
case runs in its own process, so a crash fails only that case. The cases check their expected
results and error messages themselves. A last test compiles tests/simt/nvcc_probe.cu with the
real nvcc to prove device_compat.cuh maps onto CUDA too.
"""

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIMT_TESTS = ROOT / "tests" / "simt"
SOURCES = sorted(SIMT_TESTS.glob("*.cpp"))
CXXFLAGS = ["-std=c++17", "-O1", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Werror",
            "-DFASTBN_SIMT", "-pthread"]


def case_names(sources):
    pattern = re.compile(r"^SIMT_CASE\((\w+)\)", re.M)
    return sorted(name for src in sources for name in pattern.findall(src.read_text()))


def cuda_include():
    """CUDA's include directory (cuda_fp16.h & co. compile under g++ too)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and (Path(c) / "include" / "cuda_fp16.h").is_file():
            return str(Path(c) / "include")
    pytest.fail("CUDA headers not found (set CUDA_HOME): the emulator needs cuda_fp16.h")


def build(out_dir, sources, extra_flags=()):
    """Compiles the sources in parallel, links them, returns the binary."""
    flags = CXXFLAGS + list(extra_flags) + ["-I", str(ROOT / "csrc"), "-I", str(SIMT_TESTS),
                                            "-I", cuda_include()]

    def compile_one(src):
        obj = out_dir / (src.stem + ".o")
        r = subprocess.run(["g++", *flags, "-c", str(src), "-o", str(obj)], capture_output=True,
                           text=True)
        assert r.returncode == 0, f"compiling {src.name} failed:\n{r.stderr}"
        return obj

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        objs = list(pool.map(compile_one, sources))
    binary = out_dir / "simt_tests"
    r = subprocess.run(["g++", *flags, *map(str, objs), "-o", str(binary)], capture_output=True,
                       text=True)
    assert r.returncode == 0, f"linking failed:\n{r.stderr}"
    return binary


def run_case(binary, name):
    r = subprocess.run([str(binary), name], capture_output=True, text=True, timeout=300)
    output = r.stdout + r.stderr
    assert r.returncode == 0 and f"PASS {name}" in r.stdout, f"exit status {r.returncode}\n{output}"
    return output


@pytest.fixture(scope="session")
def simt_binary(tmp_path_factory):
    return build(tmp_path_factory.mktemp("simt"), SOURCES)


def test_every_case_is_registered(simt_binary):
    listed = subprocess.run([str(simt_binary), "--list"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert sorted(listed) == case_names(SOURCES)


@pytest.mark.parametrize("name", case_names(SOURCES))
def test_case(simt_binary, name):
    print(run_case(simt_binary, name))


def test_ucontext_fallback(tmp_path):
    """The portable context switch (used off x86-64) runs the same kernels."""
    sources = [SIMT_TESTS / f for f in ("main.cpp", "test_barrier.cpp", "test_memory.cpp")]
    binary = build(tmp_path, sources, ["-DSIMT_USE_UCONTEXT"])
    for name in ("barrier_block_reduction_all_orders", "barrier_deadlock_error_names_threads_and_sites",
                 "smem_static_is_per_block", "exception_in_kernel_propagates"):
        run_case(binary, name)


def test_device_compat_compiles_under_nvcc(tmp_path):
    """device_compat.cuh under real CUDA: the probe's kernels, launches and helpers compile, and
    the PTX shows the real primitives (not stubs)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH")
    cmd = [nvcc, "-c", "-arch=sm_80", "-std=c++17", "-Xcompiler", "-Wall", "-keep",
           "-keep-dir", str(tmp_path), "-I", str(ROOT / "csrc"), str(SIMT_TESTS / "nvcc_probe.cu"),
           "-o", str(tmp_path / "probe.o")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    ptx = "\n".join(p.read_text() for p in tmp_path.glob("*.ptx"))
    for needle in [".entry _ZN5probe5scale",          # FASTBN_LAUNCH'd kernel
                   ".entry _ZN5probe8grid_sum",       # FASTBN_LAUNCH_COOPERATIVE'd kernel
                   ".extern .shared .align 16",       # FASTBN_DYNAMIC_SMEM
                   "shfl.sync.bfly",                  # __shfl_xor_sync
                   "bar.sync",                        # __syncthreads / grid sync
                   "ld.global.cs",                    # fastbn::gload_stream
                   "ld.global.nc.v4.f32",             # fastbn::gload of Vec<float, 4>
                   "st.global.v4.f32"]:               # fastbn::gstore of Vec<float, 4>
        assert needle in ptx, f"{needle!r} not in the probe's PTX"
