"""The benchmark harness (python -m fastbn.bench): a tiny end-to-end run, its JSON rows and
printed table, and the regression check of --compare."""
import copy
import json
import os
import subprocess
import sys

import pytest

from fastbn.bench import allocator, cases, report

PROVIDERS = {"fastbn", "eager", "compile", "copy_"}
ROW_KEYS = {"op", "provider", "mode", "shape", "dtype", "layout", "device", "torch_version",
            "fastbn_version", "timestamp", "median_ms", "p20_ms", "p80_ms", "samples",
            "input_mib", "fits_llc", "gbps"}
TINY = ["--quick", "--shapes", "16x3x13x17", "--dtypes", "float32", "--layouts", "nchw",
        "--modes", "forward-train,backward", "--rounds", "2", "--blocks", "2",
        "--block-ms", "2"]


def bench(*args, cwd):
    env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS="1")
    return subprocess.run([sys.executable, "-m", "fastbn.bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One end-to-end run of the harness, all four providers (torch.compile included)."""
    out = tmp_path_factory.mktemp("bench")
    proc = bench(*TINY, "--out", str(out / "run"), "--csv", cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, json.loads((out / "run.json").read_text())


def test_rows_have_keys_providers_and_positive_times(tiny_run):
    _, _, data = tiny_run
    rows = data["rows"]
    assert {(r["mode"], r["provider"]) for r in rows} == {
        (m, p) for m in ("forward-train", "backward") for p in PROVIDERS}
    for r in rows:
        assert "error" not in r, r
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert (r["shape"], r["dtype"], r["layout"], r["device"]) == (
            "16x3x13x17", "float32", "nchw", "cpu")
        assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        # 2 rounds x 2 blocks, or 1 block per round for calls longer than a block.
        assert 2 <= r["samples"] <= 4 and r["fits_llc"] is True
        assert r["pct_copy_bw"] > 0
    for r in rows:
        if r["provider"] == "fastbn":
            assert r["speedup_vs_eager"] > 0 and r["speedup_vs_compile"] > 0
    assert data["machine"]["cpu_capability"] and data["machine"]["torch_threads"] >= 1
    assert data["settings"]["rounds"] == 2
    assert data["machine"]["cpu_allocator"].startswith("steady")


FAULTS = """
import resource, torch
from fastbn.bench import allocator
print(allocator.in_effect())
n = 48 << 20  # above glibc's largest mmap threshold (32 MiB)
for _ in range(3):  # outputs allocated, written and freed, as by the timed calls
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(n, dtype=torch.uint8).fill_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.parametrize("policy", ["steady", "system"])
def test_steady_allocator_policy_spares_large_outputs_their_page_faults(policy):
    """The environment the harness re-executes itself with under "steady" (checked in
    tiny_run) makes the third 48 MiB output reuse the memory of the previous ones."""
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    env.pop("FASTBN_BENCH_ALLOCATOR", None)
    if policy == "steady":
        env.update(GLIBC_TUNABLES=allocator._with_tunables(None),
                   FASTBN_BENCH_ALLOCATOR="steady")
    proc = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    effect, faults = proc.stdout.splitlines()[-2:]
    assert effect.startswith(policy)
    pages = (48 << 20) // 4096
    if policy == "steady":
        assert int(faults) < pages // 20, faults   # the freed block is reused
    else:
        assert int(faults) > pages // 2, faults    # a fresh mapping, faulted in page by page


def test_table_csv_and_plot_written(tiny_run):
    out, proc, data = tiny_run
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("shape"))
    for column in ("copy_ ms", "fastbn ms", "eager ms", "compile ms", "fastbn %copy",
                   "xeager", "xcompile"):
        assert column in header
    body = [line for line in lines if line.startswith("16x3x13x17")]
    assert len(body) == 2 and all(" f32 " in line and " nchw " in line for line in body)
    csv_lines = (out / "run.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(data["rows"]) and "median_ms" in csv_lines[0]
    try:
        import matplotlib  # noqa: F401
        assert (out / "run.png").stat().st_size > 0
    except ImportError:
        assert "matplotlib is not installed" in proc.stderr


def test_compare_identical_reports_no_regression(tiny_run):
    out, _, _ = tiny_run
    proc = bench("--results", "run.json", "--compare", "run.json", "--fail-on-regression",
                 cwd=out)
    assert proc.returncode == 0, proc.stderr
    assert "no regression in fastbn" in proc.stdout
    assert "compared 8 rows" in proc.stdout


def test_compare_faster_baseline_flags_regression(tiny_run):
    out, _, data = tiny_run
    faster = copy.deepcopy(data)
    for r in faster["rows"]:
        # A baseline 4x below the run's p20 with a narrow spread: a regression whatever the
        # noise of the run.
        base = r["p20_ms"] / 4
        r.update(median_ms=base, p20_ms=0.9 * base, p80_ms=1.1 * base, min_ms=0.9 * base)
    (out / "faster.json").write_text(json.dumps(faster))
    proc = bench("--results", "run.json", "--compare", "faster.json", "--fail-on-regression",
                 cwd=out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.count("REGRESSION  fastbn") == 2
    assert "2 regression(s) in fastbn" in proc.stdout
    # Without --fail-on-regression it reports but exits 0.
    assert bench("--results", "run.json", "--compare", "faster.json", cwd=out).returncode == 0


def test_results_alone_prints_table_and_summary(tiny_run):
    out, run_proc, data = tiny_run
    assert "summary (fastbn over the shapes of each group):" in run_proc.stdout
    proc = bench("--results", "run.json", cwd=out)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    groups = [line.split() for line in lines if line.startswith("cpu ")]
    assert [(g[1], g[2], g[3], g[4]) for g in groups] == [("fwd", "f32", "nchw", "1"),
                                                            ("bwd", "f32", "nchw", "1")]
    fast = {r["mode"]: r for r in data["rows"] if r["provider"] == "fastbn"}
    for g, mode in zip(groups, ("forward-train", "backward")):
        # One shape per group: geometric mean = minimum = that row's speedup.
        assert float(g[5]) == float(g[6]) == round(fast[mode]["speedup_vs_eager"], 2)
        assert int(g[7]) == (fast[mode]["speedup_vs_eager"] < 1)
    slower = sum(r["speedup_vs_eager"] < 1 for r in fast.values())
    assert f"fastbn slower than eager in {slower} of 2 cases" in proc.stdout


def _row(provider, median, p20, p80):
    return dict(op=report.OP, provider=provider, mode="eval", shape="1x2x3x4",
                dtype="float32", layout="nchw", device="cpu", median_ms=median,
                p20_ms=p20, p80_ms=p80)


def test_compare_needs_slowdown_beyond_noise():
    old = [_row("fastbn", 1.0, 0.9, 1.3), _row("eager", 1.0, 0.9, 1.1)]
    # 20% slower but the p20-p80 ranges overlap: noise, not a regression.
    _, n = report.compare(old, [_row("fastbn", 1.2, 1.1, 1.4), _row("eager", 1.0, 0.9, 1.1)])
    assert n == 0
    # Clearly slower: counted. An eager slowdown is shown but not counted by default.
    text, n = report.compare(old, [_row("fastbn", 1.5, 1.4, 1.6), _row("eager", 2, 1.9, 2.1)])
    assert n == 1 and text.count("REGRESSION") == 2
    _, n = report.compare(old, [_row("fastbn", 1.0, 0.9, 1.1), _row("eager", 2, 1.9, 2.1)],
                          check=("fastbn", "eager"))
    assert n == 1
    # Faster is reported as such.
    text, n = report.compare(old, [_row("fastbn", 0.5, 0.45, 0.55), _row("eager", 1, .9, 1.1)])
    assert n == 0 and "faster" in text


def test_suite_shapes_and_cache_fit():
    shapes = cases.expand_shapes(cases.DEFAULT_SHAPES, batch=16)
    assert shapes[:5] == [(16, 64, 112, 112), (16, 256, 56, 56), (16, 512, 28, 28),
                          (16, 1024, 14, 14), (16, 2048, 7, 7)]
    assert (32, 64, 56, 56) in shapes and (3, 5, 7, 11) in shapes and (16, 3, 13, 17) in shapes
    assert cases.expand_shapes(["anchor", "32x64x56x56"]) == [(32, 64, 56, 56)]
    with pytest.raises(ValueError):
        cases.parse_shape("8x64x56")
    l3 = 32 * 2**20
    big = cases.Case((16, 64, 112, 112), "float32", "nchw", "forward-train", "cpu")
    small = cases.Case((16, 2048, 7, 7), "float32", "nchw", "forward-train", "cpu")
    assert big.input_bytes == 16 * 64 * 112 * 112 * 4 and big.working_set_bytes > l3
    assert small.working_set_bytes <= l3
    bwd = cases.Case((32, 64, 56, 56), "bfloat16", "nchw", "backward", "cpu")
    assert bwd.min_traffic_bytes == 3 * bwd.input_bytes


def test_help_documents_the_choices(tmp_path):
    proc = bench("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for word in ("resnet50", "32x64x56x56", "float32", "bfloat16", "float16", "nchw",
                 "channels_last", "forward-train", "backward", "forward-backward", "eval",
                 "fastbn", "eager", "compile", "copy_", "--compare", "--fail-on-regression"):
        assert word in proc.stdout, word
    listing = bench("--list", cwd=tmp_path)
    assert listing.stdout.strip().endswith("192 cases x 4 providers")
