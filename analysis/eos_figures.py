"""Figures of :mod:`analysis.edge_of_stability`: the GD and SAM sweeps, settled against
predicted sharpness, and the every-step window of :mod:`analysis.eos_window`. Legends sit
outside the axes (below the panels), never over data."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from curvature import plots

__all__ = ["fig_gd", "fig_sam", "fig_summary", "fig_window"]

DPI = 110


def _legend_below(fig, axes, ncol: int = 4) -> None:
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False,
                   fontsize=7)


def fig_gd(df: pd.DataFrame, out: Path) -> str:
    gd = df[df.method == "gd"]
    with plots.style():
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    for i, (eta, sub) in enumerate(gd.groupby("eta")):
        c = f"C{i}"
        for j, (_seed, r) in enumerate(sub.groupby("seed")):
            ax.plot(r.step, r.lambda_max, color=c, lw=1.3 if j == 0 else 0.8,
                    alpha=1.0 if j == 0 else 0.45,
                    label=rf"GD $\eta$={eta:g} (seed 0 bold, others faint)" if j == 0 else None)
            ax2.plot(r.step, r.loss, color=c, lw=1.1 if j == 0 else 0.7,
                     alpha=1.0 if j == 0 else 0.45)
        ax.axhline(2 / eta, color=c, ls="--", lw=1.0, label=rf"$2/\eta$ = {2 / eta:.3g}")
    ax.set_xlabel("gradient-descent step")
    ax.set_ylabel(r"$\lambda_{\max}(H)$ (loss / parameter$^2$)")
    ax.set_title(r"sharpness rises to $2/\eta$ and hovers there")
    ax2.set_yscale("log")
    ax2.set_xlabel("gradient-descent step")
    ax2.set_ylabel("training loss (MSE, log scale)")
    ax2.set_title("loss keeps falling, non-monotonically")
    _legend_below(fig, [ax], ncol=3)
    fig.suptitle("Full-batch GD, tanh MLP 64-64-64-10 on 1000 digits (Lanczos every few steps)")
    name = "gd_edge_of_stability.png"
    plots.save_figure(fig, out / name, dpi=DPI)
    return name


def fig_sam(df: pd.DataFrame, out: Path) -> str:
    from analysis.edge_of_stability import usam_threshold
    methods = [m for m in ("sam", "usam") if m in set(df.method)]
    with plots.style():
        fig, axes = plt.subplots(1, len(methods), figsize=(5.8 * len(methods), 4.9),
                                 squeeze=False, layout="constrained")
    for ax, method in zip(axes[0], methods):
        sub = df[df.method == method]
        for i, ((eta, rho), r_all) in enumerate(sub.groupby(["eta", "rho"])):
            c = f"C{i + (3 if method == 'sam' else 5)}"
            for j, (_seed, r) in enumerate(r_all.groupby("seed")):
                name = "SAM" if method == "sam" else "unnorm. SAM"
                ax.plot(r.step, r.lambda_max, color=c, lw=1.3 if j == 0 else 0.8,
                        alpha=1.0 if j == 0 else 0.4,
                        label=rf"{name} $\lambda_{{\max}}$, $\rho$={rho:g}" if j == 0 else None)
                if method == "sam":
                    ax.plot(r.step, r.threshold, color=c, ls=":", lw=1.2 if j == 0 else 0.7,
                            alpha=1.0 if j == 0 else 0.4,
                            label=rf"SAM-edge $\lambda^*(t)$, $\rho$={rho:g}" if j == 0 else None)
            if method == "usam":
                ax.axhline(usam_threshold(eta, rho), color=c, ls=":", lw=1.3,
                           label=rf"$\eta(\lambda+\rho\lambda^2)=2$, $\rho$={rho:g}: "
                                 f"{usam_threshold(eta, rho):.3g}")
        for eta in sorted(set(sub.eta)):
            ax.axhline(2 / eta, color="k", ls="--", lw=1.0, label=rf"GD edge $2/\eta$ = {2 / eta:.3g}")
        ax.set_xlabel("step")
        ax.set_ylabel(r"$\lambda_{\max}(H)$ (loss / parameter$^2$)")
        ax.set_title("SAM (normalised ascent $\\rho g/\\|g\\|$)" if method == "sam"
                     else "unnormalised SAM (ascent $\\rho g$)")
    _legend_below(fig, axes, ncol=3)
    fig.suptitle(r"Full-batch SAM, same network and data, $\eta$ = "
                 + ", ".join(f"{e:g}" for e in sorted(set(df[df.method != 'gd'].eta))))
    name = "sam_edge_of_stability.png"
    plots.save_figure(fig, out / name, dpi=DPI)
    return name


def fig_summary(agg: pd.DataFrame, out: Path) -> str:
    with plots.style():
        fig, ax = plt.subplots(figsize=(6.4, 5.6), layout="constrained")
    markers = {"gd": "o", "sam": "s", "usam": "^"}
    for i, r in enumerate(agg.itertuples()):
        ax.errorbar(r.threshold_settled_mean, r.lambda_settled_mean,
                    xerr=np.nan_to_num(r.threshold_settled_std),
                    yerr=np.nan_to_num(r.lambda_settled_std),
                    fmt=markers[r.method], color=f"C{i}", ms=6, capsize=3, label=r.config)
    lim = [0, 1.1 * float(np.nanmax(np.r_[agg.threshold_settled_mean, agg.lambda_settled_mean]))]
    ax.plot(lim, lim, color="0.4", ls="--", lw=0.9, label="settled = predicted")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_xlabel(r"predicted stability threshold (loss / parameter$^2$)")
    ax.set_ylabel(r"settled $\lambda_{\max}$ (median of last 40% of steps)")
    ax.set_title("settled sharpness vs. the quadratic-model threshold\n"
                 "(o GD, s SAM, ^ unnormalised SAM; mean ± std over seeds)", fontsize=9)
    _legend_below(fig, [ax], ncol=2)
    name = "settled_vs_predicted.png"
    plots.save_figure(fig, out / name, dpi=DPI)
    return name


def fig_window(df: pd.DataFrame, out: Path) -> str:
    """Columns: runs. Row 1: eta lambda_max / 2 over the whole run (probes every few steps,
    then every step); row 2: the window, lambda_max every step with 2/eta; row 3: the
    gradient's component along the top eigenvector in the window."""
    runs = list(dict.fromkeys(df.run))
    with plots.style():
        fig, axes = plt.subplots(3, len(runs), figsize=(3.3 * len(runs), 8.2),
                                 squeeze=False, layout="constrained")
    for c, run in enumerate(runs):
        sub = df[df.run == run].dropna(subset=["lambda_max"])
        warm = int(sub.warmup.iloc[0])
        for j, (_seed, r) in enumerate(sub.groupby("seed")):
            kw = {"color": f"C{j}", "lw": 1.0, "alpha": 1.0 if j == 0 else 0.6}
            axes[0, c].plot(r.step, r.eta * r.lambda_max / 2, **kw)
            w = r[r.step >= warm]
            axes[1, c].plot(w.step, w.lambda_max, marker=".", ms=3, **kw)
            axes[2, c].plot(w.step, w.g_along_v, marker=".", ms=3, **kw)
            if j == 0:
                axes[1, c].axhline(2 / float(w.eta.iloc[0]), color="red", ls="--", lw=0.8)
        axes[0, c].axhline(1, color="red", ls="--", lw=0.8)
        axes[0, c].axvspan(warm, sub.step.max(), color="0.85", lw=0)
        axes[0, c].set_title(run, fontsize=9)
        axes[0, c].set_yscale("log")
        axes[2, c].axhline(0, color="0.5", lw=0.6)
        axes[2, c].set_xlabel("GD step")
    axes[0, 0].set_ylabel("η λmax / 2  (1 = edge, red)")
    axes[1, 0].set_ylabel("λmax every step (red: 2/η)")
    axes[2, 0].set_ylabel("⟨g, v_top⟩ every step")
    fig.suptitle("Edge of Stability, step by step: whole run (top; grey = window) and the\n"
                 "window (seeds in colour). Period 2: ⟨g, v⟩ flips sign every step.",
                 fontsize=9)
    name = "eos_window.png"
    plots.save_figure(fig, out / name, dpi=80)  # 15 panels: keep the PNG < 300 KB
    return name
