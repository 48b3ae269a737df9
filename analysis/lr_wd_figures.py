"""Figures of :mod:`analysis.lr_wd_heatmap`: heatmaps with one colour scale per metric
across the optimizers, learning-rate curves with per-seed dots, and the cell-by-cell
SA-SAM / other lambda_max ratios with their BH-significant cells marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import colors, ticker

from analysis.lr_wd_stats import CHANCE, seed_matrix
from curvature import plots

__all__ = ["fig_heatmaps", "fig_lr_curves", "fig_cell_ratios"]


def _annotate(ax: Any, m: np.ndarray, fmt: str, norm: Any, cmap: Any, extra=None) -> None:
    for (i, j), v in np.ndenumerate(m):
        if not np.isfinite(v):
            ax.text(j, i, "diverged", ha="center", va="center", fontsize=6, color="red")
            continue
        r, g, b, _ = cmap(norm(v))
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
        text = fmt.format(v) + (extra[i][j] if extra is not None else "")
        ax.text(j, i, text, ha="center", va="center", fontsize=6,
                color="white" if dark else "black")


def _cells(ax: Any, s: Any, first_col: bool, last_row: bool) -> None:
    ax.set_xticks(range(len(s.lrs)), labels=[f"{x:g}" for x in s.lrs], rotation=45, fontsize=7)
    ax.set_yticks(range(len(s.wds)), labels=[f"{x:g}" for x in s.wds], fontsize=7)
    ax.grid(False)
    if last_row:
        ax.set_xlabel("learning rate", fontsize=8)
    if first_col:
        ax.set_ylabel("weight decay", fontsize=8)


def fig_heatmaps(df: pd.DataFrame, s: Any, out: Path) -> str:
    """Rows: train loss, test accuracy, Tr(H_test), lambda_max(H_test); columns: optimizers.
    One colour scale per row (shared by all optimizers, one colour bar)."""
    opts = [o for o in s.optimizers if o in set(df.optimizer)]
    metrics = [("train_loss", "train loss (geo. mean)", "log", "{:.2g}", "viridis"),
               ("test_accuracy", "test accuracy (mean)", "lin", "{:.2f}", "viridis"),
               ("trace_test", "Tr(H_test) (mean)", "symlog", "{:.2g}", "magma"),
               ("lambda_max_test", "λmax(H_test) (geo. mean)", "log", "{:.2g}", "magma")]
    with plots.style():
        fig, axes = plt.subplots(len(metrics), len(opts), figsize=(2.6 * len(opts) + 1.2,
                                 2.3 * len(metrics)), squeeze=False, layout="constrained")
    for r, (col, label, scale, fmt, cmap_name) in enumerate(metrics):
        mats = {}
        for o in opts:
            m = seed_matrix(df, o, col, s)
            with np.errstate(all="ignore"), pd.option_context("mode.chained_assignment", None):
                if scale == "log":
                    m = np.exp(np.nanmean(np.log(np.where(m > 0, m, np.nan)), axis=0))
                else:
                    m = np.nanmean(m, axis=0)
            mats[o] = m
        allv = np.concatenate([m[np.isfinite(m)] for m in mats.values()])
        if allv.size == 0:
            allv = np.array([0.0, 1.0])
        lo, hi = float(allv.min()), float(allv.max())
        if scale == "log":
            norm = colors.LogNorm(vmin=lo, vmax=max(hi, lo * 1.01))
        elif scale == "symlog":
            norm = colors.SymLogNorm(linthresh=1.0, vmin=min(lo, -1.0), vmax=max(hi, 1.0))
        else:
            norm = colors.Normalize(vmin=lo, vmax=max(hi, lo + 1e-9))
        cmap = plt.get_cmap(cmap_name)
        for c, o in enumerate(opts):
            ax = axes[r, c]
            im = ax.imshow(mats[o], cmap=cmap, norm=norm, aspect="auto")
            _annotate(ax, mats[o], fmt, norm, cmap)
            _cells(ax, s, c == 0, r == len(metrics) - 1)
            if r == 0:
                ax.set_title(o, fontsize=10)
        cb = fig.colorbar(im, ax=list(axes[r]), shrink=0.9, pad=0.01)
        cb.set_label(label, fontsize=8)
    fig.suptitle(f"{s.workload}: {s.seeds} seeds per cell; curvature of the loss on the "
                 "test set; one colour scale per row", fontsize=10)
    name = "heatmaps.png"
    plots.save_figure(fig, out / name, dpi=80)
    return name


def fig_lr_curves(df: pd.DataFrame, s: Any, out: Path) -> str:
    """One panel per optimizer: test accuracy (top) and train loss (bottom, log) against
    the learning rate; dots are seeds (averaged over weight decays), the line their mean
    (geometric mean for the loss)."""
    opts = [o for o in s.optimizers if o in set(df.optimizer)]
    with plots.style():
        fig, axes = plt.subplots(2, len(opts), figsize=(2.4 * len(opts), 5.2), sharey="row",
                                 squeeze=False, layout="constrained")
    x = np.asarray(s.lrs)
    rng = np.random.default_rng(0)
    for c, o in enumerate(opts):
        acc = seed_matrix(df, o, "test_accuracy", s, fill=CHANCE).mean(axis=1)  # [seed, lr]
        loss = seed_matrix(df, o, "train_loss", s)
        with np.errstate(all="ignore"):
            loss = np.exp(np.nanmean(np.log(loss), axis=1))
        for row, (m, geo) in enumerate(((acc, False), (loss, True))):
            ax = axes[row, c]
            jitter = np.exp(rng.uniform(-0.08, 0.08, size=m.shape))
            ax.scatter((x[None, :] * jitter).ravel(), m.ravel(), s=9, color=f"C{c}", alpha=0.6,
                       linewidths=0)
            with np.errstate(all="ignore"):
                centre = np.exp(np.nanmean(np.log(m), axis=0)) if geo else np.nanmean(m, axis=0)
            ax.plot(x, centre, color="black", lw=1.2, marker="o", ms=3)
            ax.set_xscale("log")
            ax.set_xticks(x, labels=[f"{v:g}" for v in x], rotation=45, fontsize=7)
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            if geo:
                ax.set_yscale("log")
                ax.axhline(s.failed_loss, color="red", lw=0.8, ls=":")
            if c == 0:
                ax.set_ylabel("test accuracy" if row == 0 else "final train loss (log)")
            if row == 0:
                ax.set_title(o, fontsize=10)
            else:
                ax.set_xlabel("learning rate")
    fig.suptitle("Dots: seeds (mean over weight decays; diverged = chance 0.1); line: mean "
                 "(top), geometric mean (bottom); red dotted: 'did not train' threshold",
                 fontsize=9)
    name = "lr_sensitivity.png"
    plots.save_figure(fig, out / name, dpi=90)
    return name


def fig_cell_ratios(cells: pd.DataFrame, s: Any, out: Path) -> str:
    """Per cell: geometric-mean ratio lambda_max(SA-SAM) / lambda_max(other) over seeds,
    one diverging log colour scale centred at 1 for all panels; '*' = BH-adjusted paired
    t p <= 0.05."""
    lam = cells[cells.metric == "lambda_max_test"] if len(cells) else cells
    comps = list(dict.fromkeys(lam.comparison)) if len(lam) else []
    with plots.style():
        fig, axes = plt.subplots(1, max(len(comps), 1), figsize=(2.7 * max(len(comps), 1) + 1,
                                 2.6), squeeze=False, layout="constrained")
    mats, stars = {}, {}
    for comp in comps:
        m = np.full((len(s.wds), len(s.lrs)), np.nan)
        st = [["" for _ in s.lrs] for _ in s.wds]
        for r in lam[lam.comparison == comp].itertuples():
            i, j = s.wds.index(r.weight_decay), s.lrs.index(r.lr)
            m[i, j] = r.ratio
            st[i][j] = "*" if r.p_bh <= 0.05 else ""
        mats[comp], stars[comp] = m, st
    allv = np.concatenate([m[np.isfinite(m)] for m in mats.values()]) if mats else np.ones(1)
    allv = allv if allv.size else np.ones(1)
    span = float(max(np.abs(np.log10(allv)).max(), 0.05))
    norm = colors.LogNorm(vmin=10 ** -span, vmax=10 ** span)
    cmap = plt.get_cmap("RdBu_r")
    im = None
    for c, comp in enumerate(comps):
        ax = axes[0, c]
        im = ax.imshow(mats[comp], cmap=cmap, norm=norm, aspect="auto")
        _annotate(ax, mats[comp], "{:.2g}", norm, cmap, stars[comp])
        _cells(ax, s, c == 0, True)
        ax.set_title(comp, fontsize=9)
    if im is not None:
        cb = fig.colorbar(im, ax=list(axes[0]), shrink=0.9, pad=0.01)
        cb.set_label("λmax ratio SA-SAM / other (log)", fontsize=8)
        ticks = [t for t in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16)
                 if 10 ** -span <= t <= 10 ** span]
        cb.ax.minorticks_off()
        cb.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    fig.suptitle("λmax(H_test) of SA-SAM relative to each optimizer, cell by cell (geometric "
                 "mean over seeds; blue: SA-SAM flatter; * BH-adjusted p ≤ 0.05)", fontsize=9)
    name = "cellwise_ratio.png"
    plots.save_figure(fig, out / name, dpi=90)
    return name
