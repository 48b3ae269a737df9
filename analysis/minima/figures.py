"""Figures of the minima report (one PNG each)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from analysis.harness.stats import mean_ci
from analysis.minima.config import GROUPS, OPTIMIZERS
from curvature import plots

DPI = 130
COLORS = {name: plt.get_cmap("tab20")(([0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 1, 3][i] + 0.5) / 20)
          for i, name in enumerate(OPTIMIZERS)}
MARKERS = {name: "osD^v<>pPX*h"[i] for i, name in enumerate(OPTIMIZERS)}


def fig_metrics(df: pd.DataFrame, wl_name: str, out: Path, order: list[str]) -> str:
    ok = df[df.status == "ok"]
    with plots.style():
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    x = np.arange(len(order))
    panels = [
        (axes[0], [("test_accuracy", "test", "o")], "test accuracy (fraction)"),
        (axes[1], [("lambda_max_train", "train data", "o"), ("lambda_max_test", "test data", "s")],
         r"$\lambda_{\max}(H)$ (loss / parameter$^2$)"),
        (axes[2], [("trace_train", "train data", "o"), ("trace_test", "test data", "s")],
         r"Tr$(H)$ (loss / parameter$^2$)"),
    ]
    for ax, series, ylabel in panels:
        allv = []
        for j, (col, lab, mk) in enumerate(series):
            off = (j - (len(series) - 1) / 2) * 0.22
            means, stds = [], []
            for i, opt in enumerate(order):
                v = ok.loc[ok.optimizer == opt, col].to_numpy(dtype=float)
                s = mean_ci(v)
                means.append(s["mean"])
                stds.append(s["std"] if math.isfinite(s["std"]) else 0.0)
                ax.plot(np.full(v.size, i + off), v, mk, color="0.6", ms=2.5, zorder=1)
                allv += v[np.isfinite(v)].tolist()
            ax.errorbar(x + off, means, yerr=stds, fmt=mk, color=f"C{j}", ms=5, capsize=3,
                        label=f"{lab}: mean ± std over seeds", zorder=2)
        if col.startswith(("lambda", "trace")) and allv and min(allv) > 0:
            if max(allv) / min(allv) > 30:
                ax.set_yscale("log")
        ax.set_xticks(x, labels=order, rotation=40, ha="right")
        ax.set_ylabel(ylabel)
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle(f"{wl_name}: minima reached by each optimizer (grey dots: individual seeds)")
    name = f"{wl_name}_metrics.png"
    plots.save_figure(fig, out / name, dpi=DPI)
    return name


def fig_scatter(df: pd.DataFrame, wl_name: str, out: Path, order: list[str]) -> str:
    ok = df[df.status == "ok"]
    with plots.style():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, col, xlabel in ((axes[0], "lambda_max_test", r"$\lambda_{\max}(H_{test})$"),
                            (axes[1], "trace_test", r"Tr$(H_{test})$")):
        for opt in order:
            sub = ok[ok.optimizer == opt]
            ax.plot(sub[col], sub.test_accuracy, MARKERS[opt], color=COLORS[opt], ms=6,
                    label=opt, mec="k", mew=0.3)
        v = ok[col].to_numpy(dtype=float)
        if v.size and v.min() > 0 and v.max() / v.min() > 30:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel + " (loss / parameter$^2$)" + (
            ", log scale" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel("test accuracy (fraction)")
    axes[1].legend(frameon=False, fontsize=7, ncol=2, loc="lower left")
    fig.suptitle(f"{wl_name}: test accuracy against sharpness of the test loss (one dot per run)")
    name = f"{wl_name}_accuracy_vs_sharpness.png"
    plots.save_figure(fig, out / name, dpi=DPI)
    return name


def fig_density(densities: dict[str, Any], eigs: dict[str, Any], wl_name: str, out: Path) -> str:
    groups = [(t, [o for o in g if o in densities]) for t, g in GROUPS]
    groups = [(t, g) for t, g in groups if g]
    ncol = min(2, len(groups))
    nrow = math.ceil(len(groups) / ncol)
    with plots.style():
        fig, axes = plt.subplots(nrow, ncol, figsize=(5.8 * ncol, 4.0 * nrow), squeeze=False)
    for ax, (title, names) in zip(axes.flat, groups):
        # top-k Lanczos values are not passed: plot_density reads min(values) as lambda_min
        plots.plot_density({n: densities[n] for n in names}, ax=ax, title=title)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(f"{wl_name}: Hessian spectral density on training data (SLQ, seed 0)")
    name = f"{wl_name}_density.png"
    plots.save_figure(fig, out / name, dpi=85)  # spiky curves compress badly: keep < 300 KB
    return name


def fig_landscape(lines: dict[str, Any], wl_name: str, out: Path, radius: float) -> str:
    groups = [(t, [o for o in g if o in lines]) for t, g in GROUPS]
    groups = [(t, g) for t, g in groups if g]
    ncol = min(2, len(groups))
    nrow = math.ceil(len(groups) / ncol)
    with plots.style():
        fig, axes = plt.subplots(nrow, ncol, figsize=(5.6 * ncol, 3.9 * nrow), squeeze=False,
                                 sharey=True)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    for ax, (title, names) in zip(axes.flat, groups):
        curves = [(f"{n} ($\\lambda_1$={lines[n][1]:.3g})", lines[n][0]) for n in names]
        # colours cycle within a panel; SGD, first in every group, is always C0
        colors_ = {f"{n} ($\\lambda_1$={lines[n][1]:.3g})": f"C{i}" for i, n in enumerate(names)}
        plots.plot_landscape_1d(curves, ax=ax, title=title, colors_=colors_, log=True,
                                xlabel=r"distance $a$ along top eigenvector $v_1$ "
                                       "(parameter units)")
    fig.suptitle(f"{wl_name}: training loss $L(w + a v_1)$ along each minimum's top Hessian "
                 "eigenvector (seed 0)")
    name = f"{wl_name}_landscape_1d.png"
    plots.save_figure(fig, out / name, dpi=110)
    return name


def fig_planes(planes: dict[str, Any], wl_name: str, out: Path) -> str:
    with plots.style():
        fig, axes = plt.subplots(1, len(planes), figsize=(4.0 * len(planes), 3.8), squeeze=False)
    for ax, (label, land) in zip(axes[0], planes.items()):
        plots.plot_landscape_2d(land, ax=ax, title=label, xlabel=r"$a$ along $v_1$",
                                ylabel=r"$b$ along $v_2$")
    fig.suptitle(f"{wl_name}: training loss on the plane of the top two Hessian eigenvectors "
                 "(same range for every optimizer)")
    name = f"{wl_name}_landscape_2d.png"
    plots.save_figure(fig, out / name, dpi=DPI)
    return name


def fig_sa(df: pd.DataFrame, out: Path) -> str:
    with plots.style():
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (label, d) in enumerate(df.groupby("optimizer", sort=False)):
        ax.plot(d.step, d.eta, color=f"C{i}", lw=0.6, label=rf"{label}: step $\eta_t$")
        if label == "SA-SAM":
            ax.plot(d.step, d.rho, color=f"C{i + 2}", lw=0.6, label=r"SA-SAM: radius $\rho_t=\sqrt{\eta_t}$")
        ax2.plot(d.step, d.batch_loss.clip(lower=1e-12), color=f"C{i}", lw=0.5, label=label)
    ax.axhline(0.1, color="k", ls="--", lw=0.9, label=r"SGD/SAM step 0.1")
    ax.axhline(0.05, color="0.5", ls=":", lw=0.9, label=r"SAM radius 0.05")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("step size / radius (log scale)")
    ax.legend(frameon=False, fontsize=7)
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel("mini-batch loss (log scale, floored at 1e-12)")
    ax2.legend(frameon=False, fontsize=7)
    fig.suptitle("digits-mlp, seed 0: smoothness-adaptive steps settle 10-100x above SGD's 0.1, "
                 "SA-SAM's radius 20-60x above SAM's 0.05")
    name = "sa_step_size.png"
    plots.save_figure(fig, out / name, dpi=DPI)
    return name



class SavedLine:
    """A 1-D landscape read back from CSV (what :func:`plots.plot_landscape_1d` reads)."""

    def __init__(self, alphas: np.ndarray, loss: np.ndarray) -> None:
        self.coords = (torch.as_tensor(alphas),)
        self.loss = torch.as_tensor(loss)

