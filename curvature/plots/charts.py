"""Charts: one quantity on one ``Axes`` -- spectral densities, extreme eigenvalues,
trajectories over training, heatmaps and 1-D / 2-D loss landscapes.

Every function draws on a matplotlib ``Axes`` (a new figure when ``ax=None``) and
returns it. Conventions: axes carry their quantity and unit, legends name every curve,
and a value axis switches to a logarithmic scale (``"symlog"`` when it crosses zero)
when its values span more than two decades (:func:`curvature.plots.base.value_scale`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors, ticker

from curvature.plots.base import apply_scale, new_axes, value_scale

__all__ = [
    "density_grid",
    "plot_density",
    "plot_eigenvalues",
    "plot_heatmap",
    "plot_landscape_1d",
    "plot_landscape_2d",
    "plot_spectral_density",
    "plot_trajectories",
]


# --------------------------------------------------------------------- spectra


def density_grid(densities: Sequence[Any], num_points: int = 2000, pad: float = 0.04):
    """A common eigenvalue grid ``[G]`` and Gaussian width for several :class:`SpectralDensity`.

    The grid covers all quadrature nodes plus ``pad`` of the range on each side; the
    width is ``1/300`` of the range (so the bulk near zero and isolated outliers are
    both visible as peaks)."""
    lo = min(float(d.nodes.min()) for d in densities)
    hi = max(float(d.nodes.max()) for d in densities)
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    grid = np.linspace(lo - pad * span, hi + pad * span, num_points)
    return grid, span / 300.0


def plot_density(
    densities: Mapping[str, Any],
    *,
    eigenvalues: Mapping[str, Sequence[float]] | None = None,
    ax=None,
    sigma: float | None = None,
    log: bool = True,
    title: str | None = None,
    floor: float = 1e-7,
):
    """Overlay Gaussian-broadened spectral densities (log density axis by default).

    Args:
        densities: ``label -> SpectralDensity`` (anything with ``nodes``, ``weights``,
            ``evaluate(grid, sigma)``).
        eigenvalues: ``label -> values`` computed by Lanczos (top and bottom ``k``);
            drawn as short ticks under the curve of the same colour. The extremes of
            each curve (``lambda_min``, ``lambda_max``: the outermost of these values
            and the density's nodes) are marked by dashed lines and named in the legend.
        sigma: Gaussian width in eigenvalue units (default: common ``range / 300``).
        log: logarithmic density axis (the outliers carry weight ~ 1/n).
        floor: lowest density shown, relative to the highest peak.

    Returns:
        the ``Axes``.
    """
    ax = new_axes(ax)
    grid, default_sigma = density_grid(list(densities.values()))
    sigma = default_sigma if sigma is None else sigma
    peak = 0.0
    for i, (label, dens) in enumerate(densities.items()):
        color = f"C{i}"
        y = np.asarray(dens.evaluate(grid, sigma), dtype=np.float64)
        peak = max(peak, float(y.max()))
        vals = None if eigenvalues is None else eigenvalues.get(label)
        # Ritz values (Lanczos eigenvalues and SLQ nodes alike) lie inside the spectrum,
        # so the outermost of both is the best estimate of each end -- also when only
        # the top k eigenvalues are given
        ends = np.asarray(dens.nodes, dtype=np.float64).reshape(-1)
        if vals is not None and len(vals):
            ends = np.concatenate([ends, np.asarray(vals, dtype=np.float64).reshape(-1)])
        lo, hi = float(ends.min()), float(ends.max())
        ax.plot(grid, y, color=color,
                label=rf"{label}: $\lambda_{{\max}}$ = {hi:.4g}, $\lambda_{{\min}}$ = {lo:.3g}")
        for v, ls in ((lo, ":"), (hi, "--")):
            ax.axvline(v, color=color, ls=ls, lw=0.9, alpha=0.8)
    if eigenvalues:
        for i, label in enumerate(densities):
            vals = eigenvalues.get(label)
            if vals is not None and len(vals):
                ax.plot(vals, np.full(len(vals), 0.0), "|", color=f"C{i}", ms=10, mew=1.2,
                        transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set_xlabel(r"Hessian eigenvalue $\lambda$ (loss units / parameter$^2$)")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(peak * floor, peak * 3)
        ax.set_ylabel(r"spectral density $\phi_\sigma(\lambda)$ (log scale)")
    else:
        ax.set_ylabel(r"spectral density $\phi_\sigma(\lambda)$")
    leg = ax.legend(loc="upper right", fontsize=7, frameon=True, framealpha=0.92,
                    edgecolor="none", title=rf"SLQ, Gaussian width $\sigma$ = {sigma:.2g}",
                    title_fontsize=7)
    leg.get_title().set_color("0.35")
    if title:
        ax.set_title(title)
    return ax


def plot_spectral_density(density: Any, *, ax=None, log: bool = True,
                          sigma: float | None = None, num_points: int = 4000):
    """One broadened density (log y-axis by default) with ``lambda_min``/``lambda_max``
    marked: the figure of :meth:`curvature.results.SpectralDensity.plot`.

    ``density``: a :class:`curvature.results.SpectralDensity`; ``sigma``: Gaussian width
    in eigenvalue units (default: the density's own); ``num_points``: grid points.
    Returns the ``Axes``.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    lo, hi = density.lambda_min, density.lambda_max
    pad = 0.05 * max(hi - lo, abs(hi), 1e-12)
    grid = np.linspace(lo - pad, hi + pad, num_points)
    dens = density.evaluate(grid, sigma).numpy()
    ax.plot(grid, dens, color="C0", lw=1.2)
    if log:
        ax.set_yscale("log")
        peak = float(dens.max())
        ax.set_ylim(max(peak * 1e-8, np.finfo(float).tiny), peak * 3)
    ax.axvline(lo, color="C3", ls="--", lw=0.9, label=f"$\\lambda_{{min}}$ = {lo:.3g}")
    ax.axvline(hi, color="C2", ls="--", lw=0.9, label=f"$\\lambda_{{max}}$ = {hi:.3g}")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)" if log else "density")
    ax.legend(frameon=False, fontsize="small")
    return ax


def plot_eigenvalues(
    series: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    ax=None,
    title: str | None = None,
):
    """Top-``k`` and bottom-``k`` eigenvalues against their rank.

    Args:
        series: ``label -> {"largest": values, "smallest": values}`` (either may be
            missing). Largest values are drawn as filled markers at ranks
            ``1..k``, smallest as open markers at ranks ``-1..-k`` (``-1`` is
            ``lambda_min``).

    The value axis is symmetric-log when the values cross zero and span decades.
    """
    ax = new_axes(ax)
    allv: list[float] = []
    for i, (label, ends) in enumerate(series.items()):
        color = f"C{i}"
        top = np.asarray(ends.get("largest", []), dtype=np.float64)
        bottom = np.asarray(ends.get("smallest", []), dtype=np.float64)
        if top.size:
            ax.plot(np.arange(1, top.size + 1), top, "o-", color=color, ms=4,
                    label=f"{label}: largest")
        if bottom.size:
            ax.plot(-np.arange(1, bottom.size + 1), bottom, "s--", color=color, ms=4,
                    mfc="none", label=f"{label}: smallest")
        allv += top.tolist() + bottom.tolist()
    ax.axhline(0.0, color="0.5", lw=0.6)
    ax.axvline(0.0, color="0.5", lw=0.6)
    # one decade already hides the small negative end on a linear axis
    scale = apply_scale(ax, "y", allv, decades=1.0)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel(r"rank $i$ ($i > 0$: $i$-th largest, $i < 0$: $|i|$-th smallest)")
    ax.set_ylabel(r"eigenvalue $\lambda_i$ (loss / parameter$^2$)"
                  + {"symlog": ", symmetric log", "log": ", log scale"}.get(scale, ""))
    ax.legend(frameon=False, fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def plot_trajectories(
    x: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    *,
    ax=None,
    xlabel: str = "training step",
    ylabel: str = "eigenvalue (loss / parameter$^2$)",
    styles: Mapping[str, Mapping[str, Any]] | None = None,
    title: str | None = None,
):
    """Curves over training (e.g. ``lambda_max`` estimated by an optimizer and the
    Lanczos ground truth) against ``x``; log y-axis when the values span decades."""
    ax = new_axes(ax)
    allv: list[float] = []
    xs = np.asarray(x, dtype=np.float64)
    for i, (label, ys) in enumerate(curves.items()):
        ys = np.asarray(ys, dtype=np.float64)
        kw = {"color": f"C{i}", "marker": "o", "ms": 3}
        kw.update((styles or {}).get(label, {}))
        ax.plot(xs, ys, label=label, **kw)
        allv += ys[np.isfinite(ys)].tolist()
    apply_scale(ax, "y", allv)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    return ax


def plot_heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    ax=None,
    log: bool | None = None,
    cbar_label: str = "",
    xlabel: str = "",
    ylabel: str = "",
    annotate: bool = True,
    fmt: str = "{:.3g}",
    cmap: str = "viridis",
    title: str | None = None,
    cell_text: Sequence[Sequence[str]] | None = None,
):
    """A labelled heatmap with a colour bar; logarithmic colours when the (positive)
    values span more than two decades (``log=None``) or when ``log=True``.

    Cells are annotated with ``fmt`` of their value, or with ``cell_text[i][j]`` when
    given (e.g. raw values when the colours show normalised ones). NaN cells are
    left blank in colour."""
    ax = new_axes(ax, figsize=(1.0 + 0.75 * len(col_labels), 1.0 + 0.45 * len(row_labels)))
    m = np.asarray(matrix, dtype=np.float64)
    finite = m[np.isfinite(m)]
    if log is None:
        log = finite.size > 0 and value_scale(finite) == "log"
    norm = colors.LogNorm(vmin=finite.min(), vmax=finite.max()) if log else None
    im = ax.imshow(m, cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels), rotation=30, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    ax.grid(False)
    cbar = ax.figure.colorbar(im, ax=ax)
    cbar.set_label(cbar_label)
    if annotate and m.size <= 400:
        mid = np.nanmedian(finite) if finite.size else 0.0
        for (i, j), v in np.ndenumerate(m):
            text = cell_text[i][j] if cell_text is not None else (
                fmt.format(v) if np.isfinite(v) else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if np.isfinite(v) and v < mid else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax


# ------------------------------------------------------------------ landscapes


def plot_landscape_1d(
    curves: Sequence[tuple[str, Any]],
    *,
    ax=None,
    quadratic: Mapping[str, tuple[float, float, float]] | None = None,
    xlabel: str = r"step $a$ along the direction",
    log: bool | None = None,
    title: str | None = None,
    linestyles: Mapping[str, str] | None = None,
    colors_: Mapping[str, str] | None = None,
):
    """Loss along lines through the minimum.

    Args:
        curves: ``(label, Landscape)`` pairs with one-dimensional landscapes.
        quadratic: ``label -> (L0, slope, curvature)``: the second-order Taylor
            model ``L0 + slope a + curvature a^2 / 2`` drawn thin and dotted in the
            curve's colour (for eigenvector directions the curvature is the
            eigenvalue), so the reader sees where the quadratic picture holds.
        log: log loss axis (default: when the losses span more than two decades).
    """
    ax = new_axes(ax)
    allv: list[float] = []
    for i, (label, land) in enumerate(curves):
        a = np.asarray(land.coords[0], dtype=np.float64)
        y = np.asarray(land.loss, dtype=np.float64)
        color = (colors_ or {}).get(label, f"C{i}")
        ls = (linestyles or {}).get(label, "-")
        ax.plot(a, y, color=color, ls=ls, label=label)
        allv += y.tolist()
        if quadratic and label in quadratic:
            L0, g, c = quadratic[label]
            q = L0 + g * a + 0.5 * c * a * a
            ax.plot(a, q, color=color, ls=":", lw=1.0, alpha=0.9,
                    label=f"{label.split(',')[-1].strip()}: quadratic model")
    ax.axvline(0.0, color="0.5", lw=0.6)
    if log is None:
        log = value_scale(allv) == "log"
    if log:
        ax.set_yscale("log")
    lo, hi = min(allv), max(allv)
    pad = 0.08 * (hi - lo if hi > lo else max(abs(hi), 1e-3))
    if not log:
        ax.set_ylim(lo - pad, hi + pad)  # keep quadratic models from stretching the axis
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss" + (" (log scale)" if log else ""))
    ax.legend(frameon=False, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=2)
    if title:
        ax.set_title(title)
    return ax


def plot_landscape_2d(
    land: Any,
    *,
    ax=None,
    log: bool = True,
    levels: int = 14,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    cbar: bool = True,
):
    """Filled contours of a two-dimensional landscape with labelled contour lines.

    ``land``: a :class:`curvature.landscape.Landscape` with ``loss: [A, B]``. Colours
    and contour levels are logarithmically spaced in the loss (``log=True``), which
    resolves the basin floor and the walls at once. The point ``(0, 0)`` (the
    analysed parameters) is marked.
    """
    ax = new_axes(ax, figsize=(4.4, 3.8))
    a = np.asarray(land.coords[0], dtype=np.float64)
    b = np.asarray(land.coords[1], dtype=np.float64)
    Z = np.asarray(land.loss, dtype=np.float64).T  # rows: b, columns: a
    lo, hi = float(np.nanmin(Z)), float(np.nanmax(Z))
    if log and lo > 0 and hi > lo:
        lv = np.geomspace(lo, hi, levels)
        norm = colors.LogNorm(vmin=lo, vmax=hi)
    else:
        lv = np.linspace(lo, hi if hi > lo else lo + 1e-12, levels)
        norm = None
    cf = ax.contourf(a, b, Z, levels=lv, norm=norm, cmap="viridis", extend="neither")
    cs = ax.contour(a, b, Z, levels=lv[::2], colors="white", linewidths=0.6, alpha=0.85)
    ax.clabel(cs, fmt=lambda v: f"{v:.2g}", fontsize=6, inline=True)
    ax.plot([0], [0], marker="*", color="red", ms=9, mec="white", mew=0.6, ls="none",
            label="analysed parameters")
    ax.set_xlabel(xlabel or f"$a$ along {land.labels[0]}")
    ax.set_ylabel(ylabel or f"$b$ along {land.labels[1]}")
    ax.set_aspect("equal", adjustable="box")
    ax.grid(False)
    if cbar:
        cb = ax.figure.colorbar(cf, ax=ax, shrink=0.9)
        cb.set_label("loss" + (" (log scale)" if norm is not None else ""))
        if norm is not None:
            cb.ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.2g"))
    ax.legend(loc="upper right", frameon=True, fontsize=7, framealpha=0.8)
    if title:
        ax.set_title(title)
    return ax
