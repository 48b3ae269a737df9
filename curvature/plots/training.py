"""Figures of training runs: the curvature monitor's estimates against their ground
truth (:meth:`curvature.CurvatureMonitor.plot`) and the loss and sharpness curves of
``curvature demo``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from curvature.atomic import atomic_write
from curvature.plots.base import save_figure, style

__all__ = ["monitor_figure", "training_figure"]


def monitor_figure(
    history: pd.DataFrame,
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    vector_keys: Sequence[str] = ("hvp", "hessian_diag", "noise_variance"),
):
    """The figure of :meth:`curvature.CurvatureMonitor.plot` for its ``history``.

    One panel per scalar estimate (``lambda_max``, ``smoothness``: the optimizer's
    value and the truths on the batch and the full data), one for the relative errors
    of the vector estimates ``vector_keys`` (log scale), one for ``lambda_max_full`` /
    ``trace_full``. Saved to ``path`` (atomically, format from the suffix, 110 dpi) if
    given; returns the figure.
    """
    h = history
    scalars = [k for k in ("lambda_max", "smoothness") if k in h.columns]
    vectors = [k for k in vector_keys if f"{k}_rel_error" in h.columns or f"{k}_rel_error_full" in h.columns]
    panels = len(scalars) + (1 if vectors else 0) + 1
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.6), squeeze=False)
    axes = list(axes[0])
    steps = h["step"] if "step" in h else []
    for ax, k in zip(axes, scalars):
        ax.plot(steps, h[k], "o-", label=f"{k} (optimizer)")
        for col, marker, lab in ((f"{k}_truth_batch", "s--", "truth, batch"),
                                (f"{k}_truth_full", "^:", "truth, full data")):
            if col in h:
                ax.plot(steps, h[col], marker, label=lab)
        if k == "smoothness":
            for col, marker, lab in (("lambda_max_batch", "x-.", "lambda_max, batch"),):
                if col in h:
                    ax.plot(steps, h[col], marker, label=lab)
        _log_if_wide(ax, h[[c for c in h.columns if c.startswith(k) or c == "lambda_max_batch"]])
        ax.set_title(k)
        ax.set_ylabel("curvature (loss / weight$^2$)")
    if vectors:
        ax = axes[len(scalars)]
        for k in vectors:
            for suffix, marker in (("", "o-"), ("_full", "s--")):
                col = f"{k}_rel_error{suffix}"
                if col in h:
                    ax.plot(steps, h[col], marker, label=f"{k} {'batch' if not suffix else 'full'}")
        ax.set_yscale("log")
        ax.set_ylabel("relative error ||est - exact|| / ||exact||")
        ax.set_title("vector estimates")
        ax.legend(fontsize=7)
    ax = axes[-1]
    ax.plot(steps, h["lambda_max_full"], "o-", label="lambda_max (full data)")
    ax.plot(steps, h["trace_full"], "s--", label="trace (full data)")
    ax.set_yscale("symlog" if (h[["lambda_max_full", "trace_full"]] <= 0).any().any() else "log")
    ax.set_title("full-data curvature")
    ax.set_ylabel("loss / weight$^2$ (trace: sum over all directions)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        kind = Path(path).suffix.lstrip(".").lower() or "png"
        atomic_write(path, lambda f: fig.savefig(f, dpi=110, format=kind))
        plt.close(fig)
    return fig


def _log_if_wide(ax: Any, values: pd.DataFrame) -> None:
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if v.size and (v > 0).all() and v.max() / v.min() > 30:
        ax.set_yscale("log")


def training_figure(results: Mapping[str, Any], trajectories: Mapping[str, Sequence[Mapping]],
                    runs: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> None:
    """The training figure of ``curvature demo`` (``training.png``).

    Left: each run's mini-batch loss (running mean) and test loss at its checkpoints;
    right: Lanczos ``lambda_max`` at every checkpoint (``trajectories[name]``: rows with
    ``step`` and ``lambda_max``) and the optimizer's own per-step estimate when its
    history has one. ``results[name]``: a :class:`curvature.train.TrainResult`;
    ``runs[name]``: its ``label`` and ``short`` name.
    """
    with style():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for i, (name, res) in enumerate(results.items()):
            h = res.history
            window = max(1, len(h) // 30)
            smooth = h["loss"].rolling(window, min_periods=1).mean()
            ax1.plot(h["step"], smooth, color=f"C{i}", label=f"{runs[name]['label']}")
            ev = res.evaluations
            if "test_loss" in ev:
                ax1.plot(ev["step"], ev["test_loss"], "o--", color=f"C{i}", ms=3, lw=0.9,
                         label=f"{runs[name]['short']}: test loss")
        ax1.set_yscale("log")
        ax1.set_xlabel("training step")
        ax1.set_ylabel("cross-entropy loss (log scale)")
        ax1.set_title(f"Training (mini-batch loss, running mean of {window} steps)")
        ax1.legend(frameon=False, fontsize=7)
        for i, (name, traj) in enumerate(trajectories.items()):
            steps = [r["step"] for r in traj]
            ax2.plot(steps, [r["lambda_max"] for r in traj], "o-", color=f"C{i}", ms=3.5,
                     label=f"{runs[name]['short']}: Lanczos $\\lambda_{{\\max}}$ (full training set)")
            h = results[name].history
            if "lambda_max" in h:
                w = max(1, len(h) // 30)
                ax2.plot(h["step"], h["lambda_max"].rolling(w, min_periods=1).mean(),
                         color=f"C{i}", lw=0.9, alpha=0.7,
                         label=f"{runs[name]['short']}: optimizer estimate $\\|(g_{{adv}} - g)/\\rho\\|$ (batch)")
        ax2.set_yscale("log")
        ax2.set_xlabel("training step")
        ax2.set_ylabel(r"top Hessian eigenvalue $\lambda_{\max}$ (log scale)")
        ax2.set_title("Sharpness during training")
        ax2.legend(frameon=False, fontsize=7)
        save_figure(fig, path)
