#!/usr/bin/env python3
"""Plots the LDP benchmark (crates/oak-sched/benches/ldp.rs) from its CSV files.

    cargo bench -p oak-sched --bench ldp       # writes target/ldp-bench/*.csv
    python3 scripts/plot-ldp.py                # writes docs/ldp-*.png

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
except ImportError:
    py = os.path.join(VENV, "bin", "python")
    if os.path.abspath(sys.executable) == os.path.abspath(py):
        sys.exit("plot-ldp: matplotlib is missing even in " + VENV)
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "matplotlib"], check=True)
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])

COLORS = {"LDP": "#1f77b4", "ROM": "#d62728", "what-if": "#9ecae1"}
KINDS = ("S2U", "S2S")
# The what-if drawn beside the system as it is, when its CSV files exist.
WHAT_IF = "near-peers+refine"
WHAT_IF_LABEL = "LDP what-if: near peers + refined user location"


def read(pattern, variant=None):
    rows = []
    folder = DATA if variant is None else os.path.join(DATA, "what-if-" + variant)
    for path in sorted(glob.glob(os.path.join(folder, pattern))):
        with open(path, newline="") as f:
            rows.extend(csv.DictReader(f))
    return rows


def sizes(rows):
    return sorted({int(r["n"]) for r in rows})


def fig10(summary, raw):
    ns = sizes(summary)
    x = range(len(ns))
    extra = read("summary-*.csv", WHAT_IF)
    series = [("LDP", summary, "LDP"), ("ROM", summary, "ROM")]
    if extra:
        series.insert(1, ("LDP", extra, "what-if"))
    w = 0.8 / len(series)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for col, kind in enumerate(KINDS):
        ax = axes[0][col]
        for k, (sched, rows, key) in enumerate(series):
            vals = []
            for n in ns:
                r = [s for s in rows if int(s["n"]) == n and s["kind"] == kind and s["scheduler"] == sched]
                vals.append(100 * float(r[0]["met_share"]) if r else 0)
            xs = [i + (k - (len(series) - 1) / 2) * w for i in x]
            label = WHAT_IF_LABEL if key == "what-if" else sched
            bars = ax.bar(xs, vals, w, label=label, color=COLORS[key])
            for b, v in zip(bars, vals):
                ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.0f}", ha="center", fontsize=8)
        ax.axhline(95, color="gray", linestyle="--", linewidth=1, label="target 95 %")
        ax.set_xticks(list(x), [f"{n:,}" for n in ns])
        ax.set_ylim(0, 135)
        ax.set_yticks(range(0, 101, 20))
        ax.set_xlabel("workers")
        ax.set_ylabel("% meeting the threshold (true RTT)")
        ax.set_title(f"{kind}: threshold met when a feasible worker exists")
        ax.legend(fontsize=7, loc="upper right")

        ax = axes[1][col]
        data, pos, colors = [], [], []
        for i, n in enumerate(ns):
            for k, sched in enumerate(("LDP", "ROM")):
                v = [
                    float(r["achieved_ms"]) / float(r["best_ms"])
                    for r in raw
                    if int(r["n"]) == n and r["kind"] == kind and r["scheduler"] == sched and r["achieved_ms"]
                ]
                data.append(v or [float("nan")])
                pos.append(i + (k - 0.5) * 0.38)
                colors.append(COLORS[sched])
        bp = ax.boxplot(data, positions=pos, widths=0.32, whis=(10, 90), showfliers=False, patch_artist=True)
        for patch, c in zip(bp["boxes"], colors):
            patch.set_facecolor(c)
            patch.set_alpha(0.6)
        for m in bp["medians"]:
            m.set_color("black")
        ax.axhline(1.1, color="gray", linestyle="--", linewidth=1, label="target p90 ≤ 1.1")
        ax.axhline(2.0, color="gray", linestyle=":", linewidth=1, label="largest threshold (2 × best)")
        ax.set_yscale("log")
        ax.set_xticks(list(x), [f"{n:,}" for n in ns])
        ax.set_xlabel("workers")
        ax.set_ylabel("achieved / best true RTT (box: IQR, whiskers: p10–p90)")
        ax.set_title(f"{kind}: achieved RTT relative to the best worker")
        boxes = [plt.Rectangle((0, 0), 1, 1, color=COLORS[s], alpha=0.6) for s in ("LDP", "ROM")]
        lines, labels = ax.get_legend_handles_labels()
        ax.legend(boxes + lines, ["LDP", "ROM"] + labels, fontsize=7, loc="upper left")
    fig.suptitle("LDP vs ROM (best fit), simulated: threshold = best true RTT × U(1, 2)")
    fig.tight_layout()
    out = os.path.join(DOCS, "ldp-fig10.png")
    fig.savefig(out, dpi=110)
    print("wrote", out)


def decision(summary):
    ns = sizes(summary)
    fig, ax = plt.subplots(figsize=(10, 5))
    for sched in ("LDP", "ROM"):
        for q, style in (("p50", "-o"), ("p99", "--s")):
            ys = []
            for n in ns:
                r = [s for s in summary if int(s["n"]) == n and s["scheduler"] == sched]
                # Both experiment kinds: the larger of the two.
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


def vivaldi(curves, summary):
    ns = sizes(curves)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    for n in ns:
        rows = [r for r in curves if int(r["n"]) == n]
        ts = sorted({float(r["t_s"]) for r in rows})
        ys = [100 * statistics.median(float(r["median_rel_err_app"]) for r in rows if float(r["t_s"]) == t) for t in ts]
        ax.plot([t / 60 for t in ts], ys, label=f"{n:,} workers")
    ax.axhline(15, color="gray", linestyle="--", linewidth=1, label="target 15 %")
    ax.set_yscale("log")
    ax.set_xlabel("simulated minutes from a cold start")
    ax.set_ylabel("median relative error (%), random worker pairs")
    ax.set_title("Vivaldi convergence (application-level coordinates)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    # The error after the simulated time, by the pair's true RTT: one colour per size, as
    # in the left panel; solid as the system is, dashed with the near-peers what-if.
    near = read("summary-*.csv", "near-peers")
    xs = range(len(CLASSES))
    for i, n in enumerate(sizes(summary)):
        color = f"C{i}"
        for rows, style, label in ((summary, "-o", f"{n:,}"), (near, "--x", None)):
            r = [s for s in rows if int(s["n"]) == n]
            if r:
                bx.plot(xs, [100 * float(r[0][col]) for col, _ in CLASSES], style, color=color, label=label)
    bx.plot([], [], "-o", color="gray", label="as is: 16 random peers")
    if near:
        bx.plot([], [], "--x", color="gray", label="what-if: 8 nearest + 8 random peers")
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
    curves = []
    for path in sorted(glob.glob(os.path.join(DATA, "vivaldi-*.csv"))):
        n = os.path.basename(path)[len("vivaldi-") : -len(".csv")]
        with open(path, newline="") as f:
            curves.extend(dict(r, n=n) for r in csv.DictReader(f))
    os.makedirs(DOCS, exist_ok=True)
    fig10(summary, raw)
    decision(summary)
    vivaldi(curves, summary)


if __name__ == "__main__":
    main()
