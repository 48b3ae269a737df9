"""The per-block figure of :func:`curvature.block_spectra` (``curvature analyze --per-layer``):
each block's extreme eigenvalues and trace along the depth of the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from curvature.plots.base import apply_scale, save_figure, style
from curvature.plots.charts import plot_spectral_density

__all__ = ["per_block_density_figure", "per_block_figure"]


def per_block_figure(spectra: Any, path: str | Path, title: str = "Per-block Hessian spectra") -> Path:
    """Write a two-panel PNG for a :class:`curvature.BlockSpectra` and return its path.

    Top: ``lambda_max`` (filled) and ``lambda_min`` (open) of each diagonal block
    ``H_bb``, blocks in model order (input to output); a block whose end did not converge
    is drawn in grey. Bottom: ``tr(H_bb)`` with a +-2 standard error bar (Hutchinson).
    Value axes switch to symmetric-log when the values span more than two decades.
    """
    df = spectra.to_dataframe()
    x = np.arange(len(df))
    with style():
        fig, (top, bottom) = plt.subplots(2, 1, sharex=True,
                                          figsize=(max(5.0, 0.45 * len(df) + 2.5), 5.6))
        for col, face in (("lambda_max", "C0"), ("lambda_min", "none")):
            ok = df[f"{col}_converged"].to_numpy(bool)
            label = col.replace("lambda_", "λ_")
            top.scatter(x[ok], df[col][ok], facecolors=face, edgecolors="C0", label=label, zorder=3)
            if (~ok).any():
                top.scatter(x[~ok], df[col][~ok], facecolors=face if face == "none" else "0.6",
                            edgecolors="0.6", label=f"{label} (not converged)", zorder=3)
        top.plot(x, df["lambda_max"], color="C0", lw=0.8, alpha=0.6)
        apply_scale(top, "y", np.concatenate([df["lambda_max"], df["lambda_min"]]))
        top.axhline(0.0, color="0.5", lw=0.6)
        top.set_ylabel("eigenvalue of H_bb")
        top.set_title(title)
        top.legend(loc="best", fontsize="small")
        err = 2 * np.nan_to_num(df["trace_stderr"].to_numpy(float))
        bottom.errorbar(x, df["trace"], yerr=err, fmt="o-", color="C1", ms=4, lw=0.8,
                        capsize=2, label="trace ± 2 s.e. (Hutchinson)")
        apply_scale(bottom, "y", df["trace"].to_numpy(float))
        bottom.axhline(0.0, color="0.5", lw=0.6)
        bottom.set_ylabel("tr(H_bb)")
        bottom.set_xlabel("block (model order)")
        bottom.set_xticks(x)
        bottom.set_xticklabels(df["block"], rotation=60, ha="right", fontsize="small")
        bottom.legend(loc="best", fontsize="small")
    return save_figure(fig, path)


def per_block_density_figure(spectra: Any, path: str | Path, columns: int = 4) -> Path:
    """Write the blocks' SLQ densities side by side (one panel per block, model order,
    log density axis, ``lambda_min``/``lambda_max`` of the quadrature marked; the layout
    of Zhang et al. 2024, "Why Transformers Need Adam") and return the PNG's path.
    Needs ``block_spectra(..., density=True)``."""
    blocks = [b for b in spectra if b.density is not None]
    if not blocks:
        raise ValueError("no block has a density: run block_spectra(..., density=True)")
    cols = min(columns, len(blocks))
    rows = -(-len(blocks) // cols)
    with style():
        fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.3 * rows), squeeze=False)
        for ax, b in zip(axes.flat, blocks):
            plot_spectral_density(b.density, ax=ax)
            ax.set_title(f"{b.name} (n = {b.num_params})", fontsize="small")
            ax.set_xlabel("eigenvalue of H_bb", fontsize="small")
        for ax in list(axes.flat)[len(blocks):]:
            ax.set_visible(False)
    return save_figure(fig, path)
