"""The composed figures of the post-hoc reports: one analysis folder, and a comparison
of several (``curvature analyze`` / ``curvature compare``).

:func:`analysis_figures` draws the spectrum, the extreme eigenvalues and the 1-D and
2-D loss landscapes of an :class:`curvature.pipeline.Analysis`; :func:`comparison_figures`
overlays the spectra, eigenvalues and landscapes of several analysis folders and draws
their metrics table as a heatmap. Both write PNGs into a folder and return
``(file name, caption)`` pairs for the report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from curvature.plots.base import save_figure, style
from curvature.plots.charts import (
    plot_density,
    plot_eigenvalues,
    plot_heatmap,
    plot_landscape_1d,
    plot_landscape_2d,
)

__all__ = ["analysis_figures", "comparison_figures"]


def analysis_figures(analysis: Any, folder: Path) -> list[tuple[str, str]]:
    """Draw every figure of ``analysis`` (a :class:`curvature.pipeline.Analysis`) into
    ``folder``: ``spectrum.png``, ``eigenvalues.png``, ``landscape_1d.png`` and
    ``landscape_2d_<plane>.png`` where the analysis has their data. Returns
    ``(file, caption)`` pairs."""
    made: list[tuple[str, str]] = []
    splits = analysis.splits
    densities = {s: a.density for s, a in splits.items() if a.density is not None}
    eigs = {s: np.concatenate([a.top.values.numpy() if a.top is not None else [],
                               a.bottom.values.numpy() if a.bottom is not None else []])
            for s, a in splits.items()}
    with style():
        if densities:
            fig, ax = plt.subplots(figsize=(6.0, 3.8))
            plot_density(densities, eigenvalues=eigs, ax=ax,
                         title="Hessian spectral density (SLQ) with Lanczos extremes")
            save_figure(fig, folder / "spectrum.png")
            made.append(("spectrum.png", "Spectral density of the Hessian by stochastic Lanczos "
                          "quadrature, log density axis; dashed/dotted lines mark the largest/"
                          "smallest Lanczos eigenvalue, ticks the top and bottom k."))
        series = {s: {"largest": a.top.values.numpy(), "smallest": a.bottom.values.numpy()}
                  for s, a in splits.items() if a.top is not None and a.bottom is not None}
        if series:
            fig, ax = plt.subplots(figsize=(5.2, 3.6))
            plot_eigenvalues(series, ax=ax, title="Extreme Hessian eigenvalues (Lanczos)")
            save_figure(fig, folder / "eigenvalues.png")
            made.append(("eigenvalues.png", "The k largest (filled) and k smallest (open) "
                         "eigenvalues by rank; symmetric-log axis when they span decades."))
        train = splits["train"]
        if train.lines:
            eig_lines = [n for n in train.lines if n != "random"]
            panels = (["eigen"] if eig_lines else []) + ["random"]
            fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.4),
                                     squeeze=False)
            for ax, panel in zip(axes[0], panels):
                wanted = eig_lines if panel == "eigen" else ["random"]
                curves, quad, styles, cols = [], {}, {}, {}
                for ci, n in enumerate(wanted):
                    for s, a in splits.items():
                        if n not in a.lines:
                            continue
                        lab = f"{s}, {a.lines[n].labels[0]}"
                        curves.append((lab, a.lines[n]))
                        cols[lab] = f"C{ci}"
                        styles[lab] = "-" if s == "train" else "--"
                        if s == "train" and n in a.quadratic:
                            quad[lab] = a.quadratic[n]
                xlabel = (r"distance $a$ along the unit eigenvector (parameter units)"
                          if panel == "eigen" else
                          r"step $a$ along the filter-normalised direction (filter norms)")
                plot_landscape_1d(curves, ax=ax, quadratic=quad, xlabel=xlabel,
                                  linestyles=styles, colors_=cols,
                                  title="Loss along Hessian eigenvectors" if panel == "eigen"
                                  else "Loss along a random direction (Li et al. 2018)")
            save_figure(fig, folder / "landscape_1d.png")
            made.append(("landscape_1d.png", "Loss along lines through the analysed parameters: "
                         "left, the top and bottom Hessian eigenvectors with their quadratic "
                         "models (dotted); right, a filter-normalised random direction. Solid: "
                         "train, dashed: test."))
        for name in train.planes:
            fig, ax = plt.subplots(figsize=(4.8, 4.0))
            land = train.planes[name]
            unit = "parameter units" if name == "eigen" else "filter norms"
            plot_landscape_2d(
                land, ax=ax,
                xlabel=f"{land.labels[0]} ({unit})", ylabel=f"{land.labels[1]} ({unit})",
                title=("Training loss, plane of the top two eigenvectors"
                       if name == "eigen" else "Training loss, random plane (filter-normalised)"))
            save_figure(fig, folder / f"landscape_2d_{name}.png")
            made.append((f"landscape_2d_{name}.png",
                         "Training loss on a 2-D slice "
                         + ("spanned by the top two Hessian eigenvectors"
                            if name == "eigen" else "spanned by two filter-normalised random "
                            "directions") + "; log-spaced contour levels."))
    return made


def comparison_figures(
    folder: Path,
    *,
    labels: Sequence[str],
    split: str,
    densities: Mapping[str, Any],
    series: Mapping[str, Mapping[str, Sequence[float]]],
    lines: Sequence[pd.DataFrame | None],
    table: pd.DataFrame,
    fmt: Callable[[float, int], str],
) -> list[tuple[str, str]]:
    """Draw the figures of ``curvature compare`` into ``folder``.

    Args:
        labels: one name per run.
        split: the data split compared (``"train"`` or ``"test"``).
        densities: ``label -> SpectralDensity`` (runs with an SLQ density) ->
            ``spectra.png``.
        series: ``label -> {"largest": values, "smallest": values}`` ->
            ``eigenvalues.png``.
        lines: each run's ``landscape_1d.csv`` table (or ``None``) -> ``landscapes.png``.
        table: the metrics table, one row per run -> ``metrics.png`` (two runs or more).
        fmt: ``fmt(value, digits)``, the text of a heatmap cell.

    Returns:
        ``(file, caption)`` pairs of the figures drawn.
    """
    figs = []
    with style():
        if densities:
            fig, ax = plt.subplots(figsize=(6.4, 4.0))
            eigs = {lab: list(series.get(lab, {}).get("largest", []))
                    + list(series.get(lab, {}).get("smallest", [])) for lab in densities}
            plot_density(densities, eigenvalues=eigs, ax=ax,
                         title=f"Hessian spectral densities ({split} data)")
            save_figure(fig, folder / "spectra.png")
            figs.append(("spectra.png", "SLQ spectral densities on a common grid and "
                         "Gaussian width (log density axis); dashed/dotted lines mark each "
                         "run's largest/smallest Lanczos eigenvalue."))
        if series:
            fig, ax = plt.subplots(figsize=(5.4, 3.8))
            plot_eigenvalues(series, ax=ax, title=f"Extreme eigenvalues ({split} data)")
            save_figure(fig, folder / "eigenvalues.png")
            figs.append(("eigenvalues.png", "Top-k (filled) and bottom-k (open) Lanczos "
                         "eigenvalues of each run."))
        panels = [(d, t) for d, t in (
            ("v_max", "along each run's top eigenvector (parameter units)"),
            ("random", "along a filter-normalised random direction (filter norms)"))
            if any(r is not None and ((r["direction"] == d)
                   & (r["split"] == split)).any() for r in lines)]
        if panels:
            fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.6),
                                     squeeze=False)
            for ax, (d, xlabel) in zip(axes[0], panels):
                for i, (lab, df) in enumerate(zip(labels, lines)):
                    if df is None:
                        continue
                    df = df[(df["direction"] == d) & (df["split"] == split)]
                    if len(df):
                        ax.plot(df["alpha"], df["loss"], color=f"C{i}", label=lab)
                ax.axvline(0.0, color="0.5", lw=0.6)
                ax.set_yscale("log")
                ax.set_xlabel(f"step $a$ {xlabel}")
                ax.set_ylabel(f"{split} loss (log scale)")
                ax.set_title("Loss " + xlabel.split(" (")[0])
                ax.legend(frameon=False, fontsize=7)
            save_figure(fig, folder / "landscapes.png")
            figs.append(("landscapes.png", "Loss along each run's own top Hessian "
                         "eigenvector and along a filter-normalised random direction."))
        metric_cols = [c for c in ("lambda_max", "trace", "negative_ratio", "loss",
                                   "test_loss", "test_accuracy")
                       if table[c].notna().any()]
        if len(table) > 1 and metric_cols:
            mat = table[metric_cols].to_numpy(dtype=np.float64)
            ref = np.nanmax(np.abs(mat), axis=0)
            ref[~(ref > 0)] = 1.0
            fig, ax = plt.subplots(figsize=(1.6 + 1.0 * len(metric_cols), 1.2 + 0.5 * len(table)))
            text = [[fmt(float(v), 3) if np.isfinite(v) else "–" for v in row]
                    for row in mat]
            plot_heatmap(mat / ref, labels, metric_cols, ax=ax, log=False,
                         cbar_label="value / column max |value|", cell_text=text,
                         title="Metrics relative to the largest run")
            save_figure(fig, folder / "metrics.png")
            figs.append(("metrics.png", "Metrics of each run (cells: values; colours: "
                         "value divided by the column's largest magnitude)."))
    return figs
