"""Figures of the minima study: per-seed dots with geometric means on log axes (shared
scale between the two measurement points), a forest plot of the paired ratios with their
95% intervals, and sharpness against test accuracy. Legends sit outside the data."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.minima.config import METRIC_LABELS, POINTS  # noqa: E402

POINT_LABELS = {"budget": "fixed budget", "equal_loss": "equal training loss"}
SHORT = {"alpha-SAM (a=2)": "a-SAM a=2", "AntiSAM (a=-1)": "AntiSAM a=-1",
         "alpha-SAM (rho<0, a=-1)": "a-SAM rho<0 a=-1", "DiagHessianSGD": "DiagHess-SGD",
         "AdaHessian": "AdaHessian"}


def _log_ticks(axis) -> None:
    """Plain-number labels at 1, 2, 5 x 10^k (``0.002``, ``5``), no minor labels, on a
    log axis."""
    axis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(mticker.NullFormatter())


def fig_seeds(df: pd.DataFrame, wl: str, out: Path, order: list[str],
              metrics: list[str]) -> str:
    """Rows: metrics; columns: the two points (shared y per row, log scale). Each seed a
    dot (one colour per seed, thin lines join a seed across optimizers), the geometric
    mean a black bar."""
    d = df[(df.workload == wl) & (df.status == "ok")]
    fig, axes = plt.subplots(len(metrics), 2, figsize=(11, 2.5 * len(metrics) + 0.6),
                             sharey="row", squeeze=False)
    seeds = sorted(set(d.seed))
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(seeds), 1)))
    for i, metric in enumerate(metrics):
        for j, point in enumerate(POINTS):
            ax = axes[i, j]
            p = d[d.point == point]
            for s, c in zip(seeds, colours):
                ys = [p[(p.optimizer == o) & (p.seed == s)][metric] for o in order]
                ys = [float(v.iloc[0]) if len(v) else math.nan for v in ys]
                xs = np.arange(len(order)) + (s - (len(seeds) - 1) / 2) * 0.06
                ys = [y if y > 0 else math.nan for y in ys]
                ax.plot(xs, ys, "-", color=c, lw=0.5, alpha=0.5)
                ax.plot(xs, ys, "o", color=c, ms=4, label=f"seed {s}" if (i, j) == (0, 0)
                        else None)
            for k, o in enumerate(order):
                v = p[p.optimizer == o][metric].to_numpy(float)
                v = v[np.isfinite(v) & (v > 0)]
                if v.size:
                    ax.plot([k - 0.3, k + 0.3], [math.exp(np.log(v).mean())] * 2, "k-", lw=2)
                missing = len(seeds) - int(np.isfinite(p[p.optimizer == o][metric]
                                                       .to_numpy(float)).sum())
                if missing:
                    ax.text(k, 0.02, f"{missing} missing", transform=ax.get_xaxis_transform(),
                            ha="center", va="bottom", fontsize=7, color="grey")
            ax.set_yscale("log")
            _log_ticks(ax.yaxis)
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels([SHORT.get(o, o) for o in order], rotation=30, ha="right",
                               fontsize=8)
            ax.grid(axis="y", alpha=0.3, which="both")
            if i == 0:
                ax.set_title(POINT_LABELS[point], fontsize=10)
            if j == 0:
                ax.set_ylabel(METRIC_LABELS.get(metric, metric), fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="k", lw=2))
    labels.append("geometric mean")
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8,
               frameon=False)
    fig.suptitle(f"{wl}: per-seed values (same colour = same seed = same init and batches)",
                 y=1 - 0.3 / fig.get_figheight(), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    name = f"{wl}_seeds.png"
    fig.savefig(out / name, dpi=80)
    plt.close(fig)
    return name


def fig_forest(comp: pd.DataFrame, out: Path, metrics: list[str]) -> str:
    """Geometric-mean ratio a/b with its 95% interval (log x axis, 1 = no difference)
    for each comparison, metric and point; one panel per workload, shared x axis.
    Filled: BH-adjusted p <= 0.05."""
    c = comp[comp.metric.isin(metrics)].copy()
    wls = list(dict.fromkeys(c.workload))
    labels = list(dict.fromkeys(f"{SHORT.get(r.a, r.a)} / {SHORT.get(r.b, r.b)}"
                                for r in c.itertuples()))
    fig, axes = plt.subplots(1, len(wls), figsize=(max(4.2 * len(wls) + 1.5, 7.5),
                                                   0.4 * len(labels) * len(metrics) + 1.5),
                             sharex=True, sharey=True, squeeze=False)
    marks = {"budget": "o", "equal_loss": "s"}
    colours = dict(zip(metrics, plt.cm.tab10.colors))
    offsets = {(m, p): (k - (2 * len(metrics) - 1) / 2) * 0.12
               for k, (m, p) in enumerate((m, p) for m in metrics for p in POINTS)}
    for ax, wl in zip(axes[0], wls):
        cw = c[c.workload == wl]
        for r in cw.itertuples():
            if not math.isfinite(r.effect):
                continue
            y = labels.index(f"{SHORT.get(r.a, r.a)} / {SHORT.get(r.b, r.b)}") + \
                offsets[(r.metric, r.point)]
            col = colours[r.metric]
            sig = r.p_bh <= 0.05
            ax.plot([math.exp(r.ci_low), math.exp(r.ci_high)], [y, y], "-", color=col, lw=1)
            ax.plot(math.exp(r.effect), y, marks[r.point], color=col, ms=5,
                    mfc=col if sig else "white")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        _log_ticks(ax.xaxis)
        ax.set_title(wl, fontsize=10)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3, which="both")
        ax.set_xlabel("geometric-mean ratio a / b (95% CI)", fontsize=8)
    handles = [plt.Line2D([], [], color=colours[m], lw=1, marker="o", label=METRIC_LABELS[m])
               for m in metrics]
    handles += [plt.Line2D([], [], color="grey", ls="", marker=marks[p], label=POINT_LABELS[p])
                for p in POINTS]
    handles.append(plt.Line2D([], [], color="grey", ls="", marker="o", mfc="white",
                              label="BH p > 0.05 (hollow)"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.75 / fig.get_figheight(), 1, 1))
    name = "paired_ratios.png"
    fig.savefig(out / name, dpi=80)
    plt.close(fig)
    return name


def fig_scatter(df: pd.DataFrame, out: Path, order: list[str], targets: dict[str, float],
                metric: str = "asharp_worst") -> str:
    """``metric`` (log x) against test accuracy at the fixed budget, one panel per
    workload; runs above the target loss (not minima) hollow grey."""
    d = df[(df.point == "budget") & (df.status == "ok")]
    wls = [w for w in targets if w in set(d.workload)]
    fig, axes = plt.subplots(1, len(wls), figsize=(max(4.2 * len(wls), 8), 4.2),
                             squeeze=False)
    colours = dict(zip(order, plt.cm.tab10.colors))
    for ax, wl in zip(axes[0], wls):
        w = d[d.workload == wl]
        for o in order:
            v = w[w.optimizer == o]
            mins = v[v.train_loss <= targets[wl]]
            rest = v[v.train_loss > targets[wl]]
            ax.scatter(mins[metric], mins.test_accuracy, s=18, color=colours[o],
                       label=SHORT.get(o, o) if wl == wls[0] else None)
            ax.scatter(rest[metric], rest.test_accuracy, s=18, facecolors="none",
                       edgecolors=colours[o], alpha=0.6)
        ax.set_xscale("log")
        _log_ticks(ax.xaxis)
        ax.set_title(f"{wl} (hollow: train loss > {targets[wl]})", fontsize=9)
        ax.set_xlabel(METRIC_LABELS[metric], fontsize=8)
        ax.set_ylabel("test accuracy", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    name = f"accuracy_vs_{metric}.png"
    fig.savefig(out / name, dpi=80)
    plt.close(fig)
    return name
