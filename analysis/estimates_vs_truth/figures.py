"""Figures of the estimates-vs-truth report."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.estimates_vs_truth.config import DPI, SAM_FAMILY, Workload


def _save(fig: plt.Figure, out: Path, name: str) -> str:
    """Write ``fig`` to ``out/name`` and close it; returns ``name``."""
    fig.savefig(out / name, dpi=DPI)
    plt.close(fig)
    return name


COLORS = {"estimate": "C0", "batch": "C3", "full": "C2", "lmax": "0.45"}


def fig_scalars(hist: pd.DataFrame, wl: Workload, out: Path) -> str:
    h = hist[hist["workload"] == wl.name]
    panels = [(o, "lambda_max") for o in SAM_FAMILY] + [(o, "smoothness") for o in ("SASGD", "SASAM")]
    panels = [(o, k) for o, k in panels if k in h and h.loc[h.optimizer == o, k].notna().any()]
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax, (o, k) in zip(axes.flat, panels):
        g = h[h.optimizer == o]
        ax.plot(g.step, g[k], "o-", color=COLORS["estimate"], label=f"{k} (optimizer's)")
        ax.plot(g.step, g[f"{k}_truth_batch"], "s--", color=COLORS["batch"],
                label="exact secant, batch" if k == "smoothness" else "exact, batch")
        ax.plot(g.step, g[f"{k}_truth_full"], "^:", color=COLORS["full"],
                label="exact secant, probe set" if k == "smoothness" else "exact, probe set")
        if k == "smoothness":
            ax.plot(g.step, g["lambda_max_batch"], "x-.", color=COLORS["lmax"],
                    label="lambda_max, batch")
        ax.set_yscale("log")
        ax.set_title(f"{o}: {k}", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("curvature (loss / weight$^2$)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"Scalar curvature estimates vs exact values -- {wl.label}", fontsize=11)
    fig.tight_layout()
    name = f"{wl.name}_scalar_estimates.png"
    return _save(fig, out, name)


def fig_vectors(hist: pd.DataFrame, noise: pd.DataFrame, wl: Workload, out: Path) -> str:
    h = hist[hist["workload"] == wl.name]
    nz = noise[noise["workload"] == wl.name]
    series = [(o, "hvp", "") for o in SAM_FAMILY] + [
        ("SGDHess", "hvp", ""), ("AdaHessian", "hessian_diag", ""), ("IRE", "hessian_diag", ""),
        ("DiagHessianSGD", "hessian_diag", ""), ("ExtendedSGDHess", "noise_variance", "_exact")]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12.5, 5.2))
    for i, (o, k, suffix) in enumerate(series):
        g = h[h.optimizer == o]
        col = f"{k}_rel_error{suffix}"
        if col not in g or g[col].isna().all():
            continue
        lab = f"{o}: {k}" + (" (vs per-example var/B)" if suffix else "")
        style = dict(marker="os^vDPXh*<>p"[i % 12], color=f"C{i % 10}", ms=4,
                     ls="-" if i < 10 else "--")
        a1.plot(g.step, g[col], label=lab, **style)
        a2.plot(g.step, g[f"{k}_cosine{suffix}"], label=lab, **style)
    if len(nz):
        a1.plot(nz.step, nz["noise_variance_corrected_rel_error_exact"], "--", color="k", marker="*",
                ms=5, label="ExtendedSGDHess: noise_variance / (1 - beta2^t)")
    a1.set_yscale("log")
    a1.set_ylabel("relative error  ||est - exact|| / ||exact||")
    a2.set_ylabel("cosine(est, exact)")
    a2.set_ylim(-1.02, 1.02)
    for ax in (a1, a2):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
    handles, labels = a1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"Vector estimates vs exact vectors on the optimizer's batch -- {wl.label}",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    name = f"{wl.name}_vector_estimates.png"
    return _save(fig, out, name)


def fig_bias(hist: pd.DataFrame, wls: list[Workload], out: Path) -> str:
    """lambda_max estimate / exact (batch) against |cos(direction, v_1)|, per probe."""
    fig, axes = plt.subplots(1, len(wls), figsize=(6.2 * len(wls), 4.4), squeeze=False)
    for ax, wl in zip(axes[0], wls):
        h = hist[hist["workload"] == wl.name]
        for i, o in enumerate(SAM_FAMILY):
            g = h[(h.optimizer == o)]
            if "hvp_direction_top_cosine" not in g or g["lambda_max"].isna().all():
                continue
            ax.scatter(g["hvp_direction_top_cosine"], g["lambda_max"] / g["lambda_max_truth_batch"],
                       s=18, color=f"C{i % 10}", marker="os^vDPXh*"[i % 9], label=o, alpha=0.8)
        c = np.linspace(1e-3, 1, 200)
        ax.plot(c, c, "k:", lw=1, label="lower bound |cos| (||Hu|| >= lambda_1 |c_1|)")
        ax.axhline(1.0, color="0.5", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("|cos(perturbation direction u, top eigenvector v_1)|  (batch Hessian)")
        ax.set_ylabel("lambda_max estimate / exact lambda_max (batch)")
        ax.set_title(wl.label, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("Why ||H g||/||g|| underestimates lambda_max: the gradient is far from v_1",
                 fontsize=11)
    fig.tight_layout()
    name = "lambda_max_bias_vs_alignment.png"
    return _save(fig, out, name)


def fig_corrected(hist: pd.DataFrame, wls: list[Workload], out: Path) -> str:
    fig, axes = plt.subplots(1, len(wls), figsize=(6.2 * len(wls), 4.2), squeeze=False)
    for ax, wl in zip(axes[0], wls):
        h = hist[hist["workload"] == wl.name]
        sam = h[h.optimizer == "SAM"]
        eig = h[h.optimizer == "OnlineEigenSAM"]
        ax.plot(sam.step, sam.lambda_max_truth_batch, "s--", color=COLORS["batch"],
                label="exact lambda_max, batch")
        ax.plot(sam.step, sam.lambda_max_truth_full, "^:", color=COLORS["full"],
                label="exact lambda_max, probe set")
        ax.plot(sam.step, sam.lambda_max, "o-", color="C0", label="SAM  ||H g||/||g||")
        ax.plot(eig.step, eig.lambda_max, "D-", color="C1",
                label="OnlineEigenSAM  ||v|| (online power iteration)")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("top Hessian eigenvalue (loss / weight$^2$)")
        ax.set_title(wl.label, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("Corrected lambda_max estimator on the SAM trajectory", fontsize=11)
    fig.tight_layout()
    name = "corrected_lambda_max.png"
    return _save(fig, out, name)


def fig_calibrate(cal: pd.DataFrame, wls: list[Workload], out: Path) -> str:
    """calibrate_learning_rate's ||v_k|| against the engine's lambda_max (same examples)."""
    fig, axes = plt.subplots(1, len(wls), figsize=(6.2 * len(wls), 4.0), squeeze=False)
    for ax, wl in zip(axes[0], wls):
        c = cal[cal.workload == wl.name]
        if not len(c):
            ax.axis("off")
            continue
        ax.plot(c.iteration, c.norm_v, "-", color="C0", label="||v_k||  (calibrate_learning_rate)")
        ax.plot(c.iteration, c.rayleigh, "-", color="C1", alpha=0.5, lw=0.8,
                label="v_hat . y_k  (per-batch Rayleigh quotient)")
        ax.axhline(float(c.truth.iloc[0]), color=COLORS["full"], ls=":",
                   label="Lanczos lambda_max, same examples")
        ax.set_yscale("log")
        ax.set_xlabel("power-iteration update k (one batch of 64 each)")
        ax.set_ylabel("top Hessian eigenvalue")
        ax.set_title(wl.label + " -- initial weights", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("LeCun's calibrate-then-fix: running power iteration vs the engine's lambda_max",
                 fontsize=11)
    fig.tight_layout()
    return _save(fig, out, "calibrate_learning_rate.png")
