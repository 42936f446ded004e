"""python -m fastbn.bench: the command line (see --help)."""
import argparse
import datetime
import os
import sys
import textwrap
import time
import zlib

import torch

from . import cases as C
from . import allocator, contenders, machine, plot, report, timing


def _describe(table, width):
    """{name: text} -> '  name  text' lines wrapped at 88 columns, for --help."""
    return "\n".join(textwrap.fill(text, 88, initial_indent=f"  {name:<{width}} ",
                                    subsequent_indent=" " * (width + 3))
                      for name, text in table.items())


EPILOG = f"""\
shapes (--shapes, comma-separated; presets or NxCxHxW):
{_describe(C.PRESETS, 10)}
  default: {','.join(C.DEFAULT_SHAPES)}; --quick: {','.join(C.QUICK_SHAPES)}
dtypes (--dtypes): {', '.join(C.DTYPES)}; default {','.join(C.DEFAULT_DTYPES)},
  --quick {','.join(C.QUICK_DTYPES)}. Weights and statistics are float32 for every input
  dtype (the mixed-precision setup autocast produces).
layouts (--layouts): nchw (contiguous), channels_last (NHWC in memory); default both.
modes (--modes), default all:
{_describe(C.MODES, 17)}
providers (--providers), default all:
{_describe(contenders.PROVIDERS, 8)}

Timing: for each case all providers are built and warmed up, then timed interleaved:
--rounds rounds, in each every provider (in an order shuffled every round) runs one untimed
block, then times --blocks blocks of about --block-ms each (calls per block calibrated).
Median and p20/p80 over all timed blocks. Output: a table on stdout, PREFIX.json (rows +
machine), PREFIX.png (plot, needs matplotlib), PREFIX.csv with --csv.

examples:
  python -m fastbn.bench                         # full suite, ~15 min on 2 cores
  python -m fastbn.bench --quick                 # about a minute
  python -m fastbn.bench --shapes 16x256x56x56 --dtypes bfloat16 --modes eval
  python -m fastbn.bench --quick --compare old.json --fail-on-regression
  python -m fastbn.bench --results new.json --compare old.json   # compare two files
"""


def csv_list(choices=None):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if choices is not None and t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from "
                                             f"{', '.join(choices)}")
        return items
    return parse


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m fastbn.bench", description=__doc__.split(":")[0] +
                                 ": time fastbn.BatchNorm2d against torch eager, torch.compile "
                                 "and copy_.", epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small suite and short timing (about a minute)")
    ap.add_argument("--shapes", type=csv_list(), help="presets or NxCxHxW, comma-separated")
    ap.add_argument("--batch", type=int, default=C.DEFAULT_BATCH,
                    help="batch size N of the resnet50 preset (default %(default)s)")
    ap.add_argument("--dtypes", type=csv_list(list(C.DTYPES)))
    ap.add_argument("--layouts", type=csv_list(list(C.LAYOUTS)))
    ap.add_argument("--modes", type=csv_list(list(C.MODES)))
    ap.add_argument("--providers", type=csv_list(list(contenders.PROVIDERS)),
                    help="default: all (leave out compile to skip the slow compiles)")
    ap.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                    help="all (default) = cpu, plus cuda when torch.cuda.is_available()")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 10, --quick 5)")
    ap.add_argument("--blocks", type=int, help="timed blocks per provider per round "
                    "(default 3, --quick 2)")
    ap.add_argument("--block-ms", type=float, help="target block length (default 10, --quick 5)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--cpu-allocator", choices=list(allocator.POLICIES), default="steady",
                    help="how large CPU outputs get memory: " + "; ".join(
                        f"{k}: {v}" for k, v in allocator.POLICIES.items()))
    ap.add_argument("--out", metavar="PREFIX",
                    help="write PREFIX.json and PREFIX.png (default fastbn-bench-DEVICE-TIME "
                         "in the current directory)")
    ap.add_argument("--csv", action="store_true", help="also write PREFIX.csv")
    ap.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    ap.add_argument("--compare", metavar="OLD.json",
                    help="compare the results with an earlier result file")
    ap.add_argument("--results", metavar="NEW.json",
                    help="read this result file instead of running the suite: with --compare, "
                         "compare it; alone, print its table and summary")
    ap.add_argument("--threshold", type=float, default=0.10,
                    help="slowdown that counts as a regression (default %(default)s = 10%%; "
                         "the p20-p80 ranges must not overlap either)")
    ap.add_argument("--check-providers", type=csv_list(), default=["fastbn"],
                    help="providers whose regressions count (default fastbn; eager/compile/"
                         "copy_ changes are machine drift)")
    ap.add_argument("--fail-on-regression", action="store_true",
                    help="exit with status 1 if --compare finds a regression")
    args = ap.parse_args(argv)
    q = args.quick
    args.shapes = args.shapes or (C.QUICK_SHAPES if q else C.DEFAULT_SHAPES)
    try:
        args.shape_list = C.expand_shapes(args.shapes, args.batch)
    except ValueError as e:
        ap.error(str(e))
    args.dtypes = args.dtypes or (C.QUICK_DTYPES if q else C.DEFAULT_DTYPES)
    args.layouts = args.layouts or C.DEFAULT_LAYOUTS
    args.modes = args.modes or C.DEFAULT_MODES
    args.providers = args.providers or contenders.DEFAULT_PROVIDERS
    args.rounds = args.rounds or (5 if q else 10)
    args.blocks = args.blocks or (2 if q else 3)
    args.block_ms = args.block_ms or (5.0 if q else 10.0)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is False")
    args.devices = (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
                    ) if args.device == "all" else [args.device]
    return args


class Progress:
    """One status line on stderr (rewritten in place on a terminal)."""

    def __init__(self, total, stream=sys.stderr):
        self.total, self.stream, self.t0 = total, stream, time.perf_counter()
        self.tty = stream.isatty()

    def update(self, done, label):
        elapsed = time.perf_counter() - self.t0
        eta = f", eta {elapsed / done * (self.total - done):4.0f}s" if done else ""
        line = f"[{done + 1:>3}/{self.total}] {elapsed:4.0f}s{eta}  {label}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
        self.stream.write(f"done in {time.perf_counter() - self.t0:.0f}s\n")
        self.stream.flush()


def case_label(case):
    return (f"{C.shape_str(case.shape)} {case.dtype} {case.layout} {case.mode} "
            f"({case.device})")


def run(args, cases, info):
    """Time every case; returns the rows."""
    torch.manual_seed(0)
    if "compile" in args.providers:
        contenders.configure_compile()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = dict(torch_version=info["torch_version"], fastbn_version=info["fastbn_version"],
                fastbn_git=info.get("fastbn_git"), fastbn_cpu_kernels=info.get("fastbn_cpu_kernels"),
                timestamp=stamp)
    rows, bench, group = [], None, None
    progress = Progress(len(cases))
    for i, case in enumerate(cases):
        progress.update(i, case_label(case))
        if case.group != group:
            if bench:
                bench.close()
            group, bench = case.group, contenders.Workbench(case.shape, case.dtype,
                                                            case.layout, case.device)
        clock = timing.Clock(case.device)
        fns, first_call, errors = contenders.prepare(bench, args.providers, case.mode,
                                                     clock.sync)
        # Each case its own order of contenders (repeatable: seeded by the case).
        stats = timing.measure(fns, clock, rounds=args.rounds, blocks=args.blocks,
                               block_s=args.block_ms / 1e3,
                               seed=zlib.crc32(case_label(case).encode()))
        on_gpu = case.device.startswith("cuda")
        rows += report.case_rows(case, stats, first_call, errors, meta,
                                 machine.last_level_cache(info, case.device),
                                 info.get("gpu_peak_gbps") if on_gpu else None)
        del fns
    if bench:
        bench.close()
    progress.close()
    return rows


def print_report(rows, devices):
    """The table of each device, the legend and the summary."""
    for device in devices:
        print(f"\n{device}:")
        print(report.table([r for r in rows if r["device"] == device]))
    print(report.LEGEND)
    print("\nsummary (fastbn over the shapes of each group):")
    print(report.summary(rows))


def main(argv=None, reexec=False):
    """Runs the command line; reexec=True (the `python -m` entry point only) lets the
    "steady" CPU allocator policy restart the process with its glibc settings."""
    args = parse_args(argv)
    if reexec and not (args.results or args.list):
        allocator.reexec_with(args.cpu_allocator, sys.argv[1:] if argv is None else list(argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.results:
        new_rows = report.load(args.results)["rows"]
        if not args.compare:
            print_report(new_rows, sorted({r["device"] for r in new_rows}))
    else:
        cases = C.build_cases(args.shape_list, args.dtypes, args.layouts, args.modes,
                              args.devices)
        if args.list:
            print("\n".join(case_label(c) for c in cases))
            print(f"{len(cases)} cases x {len(args.providers)} providers")
            return 0
        prefix = args.out or datetime.datetime.now().strftime(
            f"fastbn-bench-{'-'.join(args.devices)}-%Y%m%d-%H%M%S")
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        info = machine.machine_info(args.devices)
        info["cpu_allocator"] = allocator.in_effect()
        if (info["loadavg_start"] or 0) > 0.5:
            print(f"warning: load average {info['loadavg_start']:.1f} before the run: other "
                  "processes compete for the cores, expect noisy and slow timings",
                  file=sys.stderr)
        t0 = time.perf_counter()
        new_rows = run(args, cases, info)
        elapsed = time.perf_counter() - t0
        print(machine.describe(info))
        print_report(new_rows, args.devices)
        settings = dict(argv=sys.argv[1:] if argv is None else list(argv), quick=args.quick,
                        shapes=[C.shape_str(s) for s in args.shape_list], dtypes=args.dtypes,
                        layouts=args.layouts, modes=args.modes, providers=args.providers,
                        devices=args.devices, threads=torch.get_num_threads(),
                        rounds=args.rounds, blocks=args.blocks, block_ms=args.block_ms,
                        batch=args.batch, elapsed_s=round(elapsed, 1),
                        loadavg_end=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                        compile_threads=1 if "compile" in args.providers else None)
        report.write_json(prefix + ".json", info, settings, new_rows)
        written = [prefix + ".json"]
        if args.csv:
            report.write_csv(prefix + ".csv", new_rows)
            written.append(prefix + ".csv")
        if not args.no_plot:
            if plot.available():
                for device in args.devices:
                    path = prefix + (".png" if len(args.devices) == 1 else f"-{device}.png")
                    if plot.plot([r for r in new_rows if r["device"] == device], path,
                                 machine.describe(info).splitlines()[0]):
                        written.append(path)
            else:
                print("no plot: matplotlib is not installed (pip install matplotlib), "
                      "or pass --no-plot", file=sys.stderr)
        print(f"wrote {', '.join(written)} ({elapsed:.0f}s)")
    if args.compare:
        text, regressions = report.compare(report.load(args.compare)["rows"], new_rows,
                                           args.threshold, args.check_providers)
        print(f"\ncompared with {args.compare}:")
        print(text)
        if regressions and args.fail_on_regression:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(reexec=True))
