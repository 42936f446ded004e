"""Result rows: building them, the printed table, JSON/CSV files, and comparison with an
earlier result file (regression check)."""
import csv
import json
import math

SCHEMA = 1
OP = "batch_norm2d"
# A row is identified by these; two files are compared row by row on them.
ROW_KEY = ("op", "provider", "mode", "shape", "dtype", "layout", "device")

SHORT = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "nchw": "nchw",
         "channels_last": "nhwc", "forward-train": "fwd", "backward": "bwd",
         "forward-backward": "fwd+bwd", "eval": "eval"}


def case_rows(case, stats, first_call, errors, meta, llc_bytes, peak_gbps=None):
    """One row per provider of one case, with the derived columns."""
    from .cases import shape_str
    common = dict(op=OP, mode=case.mode, shape=shape_str(case.shape), dtype=case.dtype,
                  layout=case.layout, device=case.device, **meta,
                  input_mib=case.input_bytes / 2**20,
                  working_set_mib=case.working_set_bytes / 2**20,
                  fits_llc=None if not llc_bytes else case.working_set_bytes <= llc_bytes,
                  min_traffic_bytes=case.min_traffic_bytes)
    copy = stats.get("copy_")
    rows = []
    for p in list(stats) + list(errors):
        row = dict(common, provider=p)
        if p in errors:
            row["error"] = errors[p]
            rows.append(row)
            continue
        s = stats[p]
        row.update(s, first_call_s=first_call.get(p))
        # The bandwidth this mode would need at its minimal traffic, in GB/s.
        traffic = case.input_bytes * 2 if p == "copy_" else case.min_traffic_bytes
        row["gbps"] = traffic / (s["median_ms"] * 1e-3) / 1e9
        if copy:
            # % of copy_'s bandwidth: 100% = moving the mode's minimal bytes as fast as copy_.
            # For forward-train and eval this is copy time / time.
            row["copy_time_ratio"] = copy["median_ms"] / s["median_ms"]
            copy_gbps = case.input_bytes * 2 / (copy["median_ms"] * 1e-3) / 1e9
            row["pct_copy_bw"] = 100 * row["gbps"] / copy_gbps
        if peak_gbps:
            row["pct_peak_bw"] = 100 * row["gbps"] / peak_gbps
        rows.append(row)
    fast = stats.get("fastbn")
    for row in rows:
        if row["provider"] == "fastbn" and fast:
            for other in ("eager", "compile"):
                if other in stats:
                    row[f"speedup_vs_{other}"] = stats[other]["median_ms"] / fast["median_ms"]
    return rows


def _ms(v):
    return f"{v:.3g}" if v >= 0.01 else f"{v:.2e}"


def _spread(row):
    return 50 * (row["p80_ms"] - row["p20_ms"]) / row["median_ms"]


def _columns(header, lines):
    """Header, rule and lines as aligned text lines: the first four columns (the case) left,
    the numbers right."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i >= 4 else str(c).ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines]


def table(rows):
    """Rows of one device -> text table, one line per case."""
    by_case = {}
    for r in rows:
        by_case.setdefault(tuple(r[k] for k in ROW_KEY if k != "provider"), {})[r["provider"]] = r
    # Known providers in their usual order, then any others.
    seen = {r["provider"] for r in rows}
    present = [p for p in ("copy_", "fastbn", "eager", "compile") if p in seen]
    present += sorted(seen - set(present))
    bn = [p for p in present if p != "copy_"]
    use_peak = any("pct_peak_bw" in r for r in rows)
    pct_key, pct_name = ("pct_peak_bw", "%peak") if use_peak else ("pct_copy_bw", "%copy")
    header = ["shape", "dtype", "layout", "mode", "MiB", "LLC"]
    header += [f"{p} ms" for p in present]
    header += [f"{p} {pct_name}" for p in bn]
    header += [f"x{p}" for p in ("eager", "compile") if p in present and "fastbn" in present]
    lines = []
    for key, by_p in by_case.items():
        any_row = next(iter(by_p.values()))
        fits = any_row["fits_llc"]
        cells = [any_row["shape"], SHORT.get(any_row["dtype"], any_row["dtype"]),
                 SHORT.get(any_row["layout"], any_row["layout"]),
                 SHORT.get(any_row["mode"], any_row["mode"]),
                 f"{any_row['input_mib']:.3g}", "?" if fits is None else ("yes" if fits else "no")]
        for p in present:
            r = by_p.get(p)
            cells.append("-" if r is None else "error" if "error" in r
                         else f"{_ms(r['median_ms'])} ±{_spread(r):.0f}%")
        for p in bn:
            r = by_p.get(p)
            cells.append(f"{r[pct_key]:.0f}%" if r and pct_key in r else "-")
        fast = by_p.get("fastbn", {})
        for p in ("eager", "compile"):
            if p in present and "fastbn" in present:
                v = fast.get(f"speedup_vs_{p}")
                cells.append(f"{v:.2f}" if v else "-")
        lines.append(cells)
    out = _columns(header, lines)
    errors = [r for r in rows if "error" in r]
    out += [f"error: {r['provider']} {r['shape']} {r['dtype']} {r['layout']} {r['mode']}: "
            f"{r['error']}" for r in errors]
    return "\n".join(out)


def _geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summary(rows):
    """fastbn's speedups per (mode, dtype, layout) over the shapes of a run: geometric mean
    and minimum over eager and over compile, and the number of shapes where fastbn was
    slower; fastbn's time as a multiple of copy_'s. One line per group, then the totals."""
    groups = {}
    for r in rows:
        if r["provider"] == "fastbn" and "error" not in r:
            groups.setdefault((r["device"], r["mode"], r["dtype"], r["layout"]), []).append(r)
    header = ["device", "mode", "dtype", "layout", "shapes", "xeager geo", "xeager min",
              "<eager", "xcompile geo", "xcompile min", "<compile", "/copy_ min", "/copy_ max"]
    lines, slower = [], {"eager": 0, "compile": 0}
    for (device, mode, dtype, layout), rs in groups.items():
        cells = [device, SHORT.get(mode, mode), SHORT.get(dtype, dtype),
                 SHORT.get(layout, layout), str(len(rs))]
        for p in ("eager", "compile"):
            v = [r[f"speedup_vs_{p}"] for r in rs if r.get(f"speedup_vs_{p}")]
            n = sum(x < 1 for x in v)
            slower[p] += n
            cells += [f"{_geomean(v):.2f}", f"{min(v):.2f}", str(n)] if v else ["-", "-", "-"]
        c = [1 / r["copy_time_ratio"] for r in rs if r.get("copy_time_ratio")]
        cells += [f"{min(c):.2f}", f"{max(c):.2f}"] if c else ["-", "-"]
        lines.append(cells)
    if not lines:
        return "no fastbn rows"
    total = sum(len(rs) for rs in groups.values())
    return "\n".join(_columns(header, lines) +
                     [f"fastbn slower than eager in {slower['eager']} of {total} cases, "
                      f"than compile in {slower['compile']}. /copy_: fastbn ms / copy_ ms."])


LEGEND = """\
ms: median time per call, ±: half the p20-p80 spread as % of the median. MiB: input size.
LLC: 'yes' if the mode's working set (input+output; x, dy, dx for bwd; x, y, dy, dx for
fwd+bwd) fits in the last-level cache (GPU L2; CPU L3, or the largest copy_ working set
measured at cache speed if smaller), so it can stay cached between calls.
%copy: bandwidth at the mode's minimal traffic as % of copy_'s bandwidth (100% = as fast as
reading and writing each needed tensor once at copy_ speed; for fwd/eval = copy_ ms / ms).
%peak (GPU): the same bandwidth as % of the device's theoretical peak.
xeager, xcompile: speedup of fastbn (eager ms / fastbn ms, compile ms / fastbn ms)."""


def write_json(path, machine, settings, rows):
    with open(path, "w") as f:
        json.dump({"schema": SCHEMA, "machine": machine, "settings": settings, "rows": rows},
                  f, indent=1)


def write_csv(path, rows):
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def load(path):
    with open(path) as f:
        data = json.load(f)
    if "rows" not in data:
        raise ValueError(f"{path}: not a fastbn.bench result file (no 'rows')")
    return data


def compare(old_rows, new_rows, threshold=0.10, check=("fastbn",)):
    """Compare medians row by row. A row regressed when it is more than `threshold` slower
    AND its p20 is above the old p80 (the two runs' middle 60% do not overlap); improvements
    symmetrically. Returns (text, number of regressions among the `check` providers)."""
    old = {tuple(r[k] for k in ROW_KEY): r for r in old_rows if "error" not in r}
    lines, regressions, ratios = [], 0, {}
    for r in new_rows:
        key = tuple(r[k] for k in ROW_KEY)
        o = old.get(key)
        if o is None or "error" in r:
            continue
        ratio = r["median_ms"] / o["median_ms"]
        ratios.setdefault(r["provider"], []).append(ratio)
        if ratio > 1 + threshold and r["p20_ms"] > o["p80_ms"]:
            status = "REGRESSION"
        elif ratio < 1 / (1 + threshold) and r["p80_ms"] < o["p20_ms"]:
            status = "faster"
        else:
            continue
        if status == "REGRESSION" and r["provider"] in check:
            regressions += 1
        lines.append(f"{status:>10}  {r['provider']:<8} {r['shape']:>14} "
                     f"{SHORT.get(r['dtype'])} {SHORT.get(r['layout']):>4} "
                     f"{SHORT.get(r['mode']):<7}  {o['median_ms']:.4g} -> {r['median_ms']:.4g} ms "
                     f"(x{ratio:.2f})")
    summary = [f"compared {sum(map(len, ratios.values()))} rows; geometric-mean time ratio "
               "new/old per provider (eager, compile and copy_ show machine drift): "
               + ", ".join(f"{p} {_geomean(v):.3f}"
                           for p, v in ratios.items())]
    if not ratios:
        summary = ["compared 0 rows: no row of the new results matches the old file"]
    verdict = (f"{regressions} regression(s) in {', '.join(check)} "
               f"(threshold {threshold:.0%} and non-overlapping p20-p80)"
               if regressions else f"no regression in {', '.join(check)}")
    return "\n".join(summary + lines + [verdict]), regressions
