#!/usr/bin/env python3
"""Plots the LDP benchmark (crates/oak-sched/benches/ldp.rs) from its CSV files.

    cargo bench -p oak-sched --bench ldp       # writes target/ldp-bench/*.csv
    LDP_PEERS=random LDP_LOCATE=plain cargo bench -p oak-sched --bench ldp
                                               # the system before (random peers, no
                                               # refinement): target/ldp-bench/variant-*/
    python3 scripts/plot-ldp.py                # writes docs/ldp-*.png

The variant is drawn beside the system as it is when its CSV files exist.

Needs matplotlib: when it is missing, makes a venv in target/plot-venv, installs it there
with pip and runs itself again with that venv's Python.
"""

import csv
import glob
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "target", "ldp-bench")
DOCS = os.path.join(ROOT, "docs")
VENV = os.path.join(ROOT, "target", "plot-venv")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
except ImportError:
    py = os.path.join(VENV, "bin", "python")
    if os.path.abspath(sys.executable) == os.path.abspath(py):
        sys.exit("plot-ldp: matplotlib is missing even in " + VENV)
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "matplotlib"], check=True)
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])

COLORS = {"LDP": "#1f77b4", "before": "#9ecae1", "ROM": "#d62728"}
KINDS = ("S2U", "S2S")
# The system before its near peers and refined user locations (LDP_PEERS=random
# LDP_LOCATE=plain), drawn beside it when its CSV files exist.
BEFORE = "random-peers+plain-locate"
BEFORE_LABEL = "LDP before: random peers, no refinement"
LABELS = {"LDP": "LDP", "before": BEFORE_LABEL, "ROM": "ROM (best fit)"}


def read(pattern, variant=None):
    rows = []
    folder = DATA if variant is None else os.path.join(DATA, "variant-" + variant)
    for path in sorted(glob.glob(os.path.join(folder, pattern))):
        with open(path, newline="") as f:
            rows.extend(csv.DictReader(f))
    return rows


def sizes(rows):
    return sorted({int(r["n"]) for r in rows})


def pick(rows, n, threshold, kind, sched):
    return [
        r
        for r in rows
        if int(r["n"]) == n and r["threshold"] == threshold and r["kind"] == kind and r["scheduler"] == sched
    ]


def met_bars(ax, ns, series, threshold, kind, title):
    """Share met when feasible, one bar per series and size."""
    x = range(len(ns))
    w = 0.8 / len(series)
    for k, (sched, rows, key) in enumerate(series):
        vals = []
        for n in ns:
            r = pick(rows, n, threshold, kind, sched)
            vals.append(100 * float(r[0]["met_share"]) if r else float("nan"))
        xs = [i + (k - (len(series) - 1) / 2) * w for i in x]
        bars = ax.bar(xs, vals, w, label=LABELS[key], color=COLORS[key])
        for b, v in zip(bars, vals):
            if v == v:
                ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.0f}", ha="center", fontsize=6.5)
    ax.axhline(95, color="gray", linestyle="--", linewidth=1, label="target 95 %")
    ax.set_xticks(list(x), [f"{n:,}" for n in ns])
    ax.set_ylim(0, 140)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel("workers")
    ax.set_ylabel("% met (true RTT), of the feasible")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right", ncol=2)


def boxes(ax, ns, series, threshold, kind, value):
    """A box per series and size of `value(raw row)` over the placements made."""
    x = range(len(ns))
    data, pos, colors = [], [], []
    w = 0.8 / len(series)
    for i, n in enumerate(ns):
        for k, (sched, raw, key) in enumerate(series):
            v = [
                value(r)
                for r in raw
                if int(r["n"]) == n
                and r["threshold"] == threshold
                and r["kind"] == kind
                and r["scheduler"] == sched
                and r["achieved_ms"]
            ]
            data.append(v or [float("nan")])
            pos.append(i + (k - (len(series) - 1) / 2) * w)
            colors.append(COLORS[key])
    bp = ax.boxplot(data, positions=pos, widths=w * 0.85, whis=(10, 90), showfliers=False, patch_artist=True)
    for patch, c in zip(bp["boxes"], colors):
        patch.set_facecolor(c)
        patch.set_alpha(0.75)
    for m in bp["medians"]:
        m.set_color("black")
    ax.set_yscale("log")
    ax.set_xticks(list(x), [f"{n:,}" for n in ns])
    ax.set_xlabel("workers")


def plain_ticks(ax, ticks, top):
    """Log axis with plain tick labels, room on top for the legend."""
    ax.set_ylim(min(ticks) * 0.93, top)
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def box_legend(ax, series, loc):
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[key], alpha=0.75) for _, _, key in series]
    lines, labels = ax.get_legend_handles_labels()
    ax.legend(handles + lines, [LABELS[key] for _, _, key in series] + labels, fontsize=7, loc=loc)


def fig10(summary, raw):
    ns = sizes(summary)
    before = read("summary-*.csv", BEFORE)
    before_raw = read("experiments-*.csv", BEFORE)
    series = [("LDP", summary, "LDP")] + ([("LDP", before, "before")] if before else []) + [("ROM", summary, "ROM")]
    raws = [("LDP", raw, "LDP")] + ([("LDP", before_raw, "before")] if before_raw else []) + [("ROM", raw, "ROM")]
    fixed = [float(r["threshold_ms"]) for r in raw if r["threshold"] == "fixed"]
    fixed_ms = fixed[0] if fixed else float("nan")
    fig, axes = plt.subplots(4, 2, figsize=(13, 17))
    for col, kind in enumerate(KINDS):
        met_bars(
            axes[0][col],
            ns,
            series,
            "relative",
            kind,
            f"{kind}, threshold = best true RTT × U(1, 2): met when feasible (always)",
        )
        ax = axes[1][col]
        boxes(ax, ns, raws, "relative", kind, lambda r: float(r["achieved_ms"]) / float(r["best_ms"]))
        ax.axhline(1.1, color="gray", linestyle="--", linewidth=1, label="target p90 ≤ 1.1")
        ax.axhline(2.0, color="gray", linestyle=":", linewidth=1, label="largest threshold (2 × best)")
        plain_ticks(ax, [1, 1.5, 2, 3, 5, 10, 20], 120)
        ax.set_ylabel("achieved / best true RTT\n(box: IQR, whiskers: p10–p90)")
        ax.set_title(f"{kind}, threshold = best × U(1, 2): achieved RTT relative to the best worker", fontsize=10)
        box_legend(ax, raws, "upper left")

        feas = []
        for n in ns:
            r = pick(summary, n, "fixed", kind, "LDP")
            feas.append(100 * int(r[0]["feasible"]) / max(1, int(r[0]["experiments"])) if r else float("nan"))
        ax = axes[2][col]
        met_bars(ax, ns, series, "fixed", kind, f"{kind}, threshold = {fixed_ms:g} ms: met when feasible")
        ax.set_xticks(list(range(len(ns))), [f"{n:,}\n{f:.0f} %" for n, f in zip(ns, feas)])
        ax.set_xlabel("workers (below: % of experiments feasible)")

        ax = axes[3][col]
        boxes(ax, ns, raws, "fixed", kind, lambda r: float(r["achieved_ms"]))
        ax.axhline(fixed_ms, color="gray", linestyle="--", linewidth=1, label=f"threshold {fixed_ms:g} ms")
        plain_ticks(ax, [2, 3, 5, 10, 20, 50], 250)
        ax.set_ylabel("achieved true RTT, ms\n(box: IQR, whiskers: p10–p90)")
        ax.set_title(f"{kind}, threshold = {fixed_ms:g} ms: achieved RTT (as the paper's Fig. 10)", fontsize=10)
        box_legend(ax, raws, "upper left")
    fig.suptitle("LDP vs ROM (best fit), simulated: relative threshold (primary, harder) and fixed threshold")
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    out = os.path.join(DOCS, "ldp-fig10.png")
    fig.savefig(out, dpi=100)
    print("wrote", out)


def decision(summary):
    ns = sizes(summary)
    fig, ax = plt.subplots(figsize=(10, 5))
    for sched in ("LDP", "ROM"):
        for q, style in (("p50", "-o"), ("p99", "--s")):
            ys = []
            for n in ns:
                r = [s for s in summary if int(s["n"]) == n and s["scheduler"] == sched]
                # Both experiment kinds and thresholds: the largest.
                ys.append(max(float(s[f"decision_{q}_us"]) for s in r) / 1000)
            ax.plot(ns, ys, style, color=COLORS[sched], label=f"{sched} {q}")
    ax.plot([500, 10_000], [1, 10], "k^", markersize=9, label="targets: 1 ms @ 500, 10 ms @ 10,000")
    paper = [(10, 16), (50, 26), (100, 42), (500, 140)]
    ax.plot([p[0] for p in paper], [p[1] for p in paper], ":x", color="gray", label="paper's LDP (Fig. 10)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("workers")
    ax.set_ylabel("decision time per placement (ms)")
    ax.set_title("Placement decision time (one core, shared machine)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    out = os.path.join(DOCS, "ldp-decision-time.png")
    fig.savefig(out, dpi=110)
    print("wrote", out)


CLASSES = [
    ("vivaldi_error_lt5ms", "< 5 ms"),
    ("vivaldi_error_5_10ms", "5–10 ms"),
    ("vivaldi_error_10_20ms", "10–20 ms"),
    ("vivaldi_error_ge20ms", "≥ 20 ms"),
]


def curves_of(folder):
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "vivaldi-*.csv"))):
        n = os.path.basename(path)[len("vivaldi-") : -len(".csv")]
        with open(path, newline="") as f:
            rows.extend(dict(r, n=n) for r in csv.DictReader(f))
    return rows


def before_folder():
    """The variant with random peers (its Vivaldi does not depend on the user location)."""
    for v in (BEFORE, "random-peers"):
        folder = os.path.join(DATA, "variant-" + v)
        if glob.glob(os.path.join(folder, "summary-*.csv")):
            return v, folder
    return None, None


def vivaldi(curves, summary):
    ns = sizes(summary)
    variant, folder = before_folder()
    old_curves = curves_of(folder) if folder else []
    old = read("summary-*.csv", variant) if variant else []
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5.5))
    for i, n in enumerate(ns):
        for rows, style, label in ((curves, "-", f"{n:,} workers"), (old_curves, "--", None)):
            rows = [r for r in rows if int(r["n"]) == n]
            if not rows:
                continue
            ts = sorted({float(r["t_s"]) for r in rows})
            ys = [
                100 * statistics.median(float(r["median_rel_err_app"]) for r in rows if float(r["t_s"]) == t)
                for t in ts
            ]
            ax.plot([t / 60 for t in ts], ys, style, color=f"C{i}", label=label, linewidth=1.5 if style == "-" else 1)
    ax.plot([], [], "-", color="gray", label="8 nearest + 8 random peers")
    if old_curves:
        ax.plot([], [], "--", color="gray", label="before: 16 random peers")
    ax.axhline(15, color="gray", linestyle=":", linewidth=1, label="target 15 %")
    ax.set_yscale("log")
    plain_ticks(ax, [5, 6, 8, 10, 15, 20, 30, 50], 60)
    ax.set_xlabel("simulated minutes from a cold start")
    ax.set_ylabel("median relative error (%), random worker pairs")
    ax.set_title("Vivaldi convergence (application-level coordinates)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    # The error after the simulated time, by the pair's true RTT: one colour per size, as
    # in the left panel; solid as the system is, dashed before (random peers).
    xs = range(len(CLASSES))
    for i, n in enumerate(ns):
        for rows, style, label in ((summary, "-o", f"{n:,}"), (old, "--x", None)):
            r = [s for s in rows if int(s["n"]) == n]
            if r:
                ys = [100 * float(r[0][col]) if r[0][col] else float("nan") for col, _ in CLASSES]
                bx.plot(xs, ys, style, color=f"C{i}", label=label)
    bx.plot([], [], "-o", color="gray", label="8 nearest + 8 random peers")
    if old:
        bx.plot([], [], "--x", color="gray", label="before: 16 random peers")
    bx.axhline(15, color="gray", linestyle=":", linewidth=1, label="15 %")
    bx.set_xticks(list(xs), [c for _, c in CLASSES])
    bx.set_xlabel("true RTT of the pair")
    bx.set_ylabel("median relative error (%) after the simulated time")
    bx.set_title("Vivaldi error by the pair's true RTT (workers: colours as left)")
    bx.grid(True, alpha=0.3)
    bx.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    out = os.path.join(DOCS, "ldp-vivaldi.png")
    fig.savefig(out, dpi=110)
    print("wrote", out)


def main():
    summary = read("summary-*.csv")
    if not summary:
        sys.exit(f"plot-ldp: no summary-*.csv in {DATA}; run `cargo bench -p oak-sched --bench ldp` first")
    raw = read("experiments-*.csv")
    curves = curves_of(DATA)
    os.makedirs(DOCS, exist_ok=True)
    fig10(summary, raw)
    decision(summary)
    vivaldi(curves, summary)


if __name__ == "__main__":
    main()
