"""PNG plot of result rows: % of copy_ bandwidth (of peak on a GPU) per shape, one panel per
mode × (dtype, layout), one bar per provider. Needs matplotlib (pip install matplotlib)."""

CLIP = 160  # % — taller bars (in-cache cases, a disturbed copy_) are clipped and labelled


def available():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def plot(rows, path, title=""):
    """Write the plot of `rows` (one device) to `path`; False if there is nothing to plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "pct_peak_bw" if any("pct_peak_bw" in r for r in rows) else "pct_copy_bw"
    rows = [r for r in rows if key in r and r["provider"] != "copy_"]
    if not rows:
        return False
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    columns = list(dict.fromkeys((r["dtype"], r["layout"]) for r in rows))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    row = {(r["mode"], r["dtype"], r["layout"], r["shape"], r["provider"]): r for r in rows}

    panel_width = max(2.6, 0.16 * len(shapes) * len(providers))
    fig, axes = plt.subplots(len(modes), len(columns), squeeze=False, sharey="row",
                             figsize=(1.0 + len(columns) * panel_width, 1.2 + 2.8 * len(modes)))
    width = 0.8 / len(providers)
    for i, mode in enumerate(modes):
        for j, (dtype, layout) in enumerate(columns):
            ax = axes[i][j]
            beyond_cache = set()
            for k, p in enumerate(providers):
                xs, ys = [], []
                for s, shape in enumerate(shapes):
                    r = row.get((mode, dtype, layout, shape, p))
                    if r:
                        xs.append(s + (k - (len(providers) - 1) / 2) * width)
                        ys.append(r[key])
                        if r["fits_llc"] is False:
                            beyond_cache.add(shape)
                ax.bar(xs, ys, width, label=p)
            ax.axhline(100, color="gray", lw=0.8, ls="--")
            if any(b.get_height() > CLIP for b in ax.patches):
                ax.set_ylim(0, CLIP)
                for b in ax.patches:
                    if b.get_height() > CLIP:
                        ax.text(b.get_x() + b.get_width() / 2, CLIP * 0.98,
                                f"{b.get_height():.0f}", rotation=90, ha="center", va="top",
                                fontsize=5)
            ax.set_title(f"{mode}\n{dtype}, {layout}", fontsize=8)
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels([s + (" *" if s in beyond_cache else "") for s in shapes],
                               rotation=60, ha="right", fontsize=6)
            ax.tick_params(axis="y", labelsize=7)
            if j == 0:
                ax.set_ylabel("% of copy_ bandwidth" if key == "pct_copy_bw"
                              else "% of peak bandwidth", fontsize=8)
    axes[0][-1].legend(fontsize=7)
    line = "copy_ speed" if key == "pct_copy_bw" else "peak bandwidth"
    fig.suptitle((title + "\n" if title else "") + f"higher is better; dashed line: {line}; "
                 "* working set exceeds the last-level cache", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
