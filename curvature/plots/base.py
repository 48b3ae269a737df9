"""The look and the output of every figure: rcParams, axis scales, atomic PNG files.

* :data:`STYLE` and :func:`style`: the rcParams every figure of :mod:`curvature.plots`
  is drawn under;
* :func:`value_scale` / :func:`apply_scale`: a value axis turns logarithmic
  (``"symlog"`` when it crosses zero) when its values span more than two decades;
* :func:`new_axes`: the given ``Axes`` or a fresh figure's;
* :func:`save_figure`: a PNG written atomically (:func:`curvature.atomic.atomic_write`),
  the figure closed.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from curvature.atomic import atomic_write

__all__ = ["STYLE", "apply_scale", "new_axes", "save_figure", "style", "value_scale"]

STYLE: dict[str, Any] = {
    "figure.dpi": 100,
    "savefig.dpi": 160,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "figure.constrained_layout.use": True,
}
"""rcParams used by every figure of :mod:`curvature.plots` (applied with ``plt.rc_context``)."""


def style() -> contextlib.AbstractContextManager:
    """``plt.rc_context(STYLE)``: wrap figure creation in it for the package's look."""
    return plt.rc_context(STYLE)


def new_axes(ax: Any = None, figsize: tuple[float, float] = (5.0, 3.4)) -> Any:
    """``ax`` itself, or the ``Axes`` of a new ``figsize`` (inches) figure in :data:`STYLE`."""
    if ax is not None:
        return ax
    with style():
        _, ax = plt.subplots(figsize=figsize)
    return ax


def value_scale(values: Sequence[float] | np.ndarray, decades: float = 2.0) -> str:
    """``"linear"``, ``"log"`` (all positive, spanning more than ``decades`` decades) or
    ``"symlog"`` (crossing zero with magnitudes spanning more than ``decades`` decades)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "linear"
    mags = np.abs(v[v != 0])
    if mags.size == 0:
        return "linear"
    span = math.log10(mags.max() / mags.min())
    if span <= decades:
        return "linear"
    return "log" if (v > 0).all() else "symlog"



def apply_scale(ax: Any, axis: str, values: Sequence[float], decades: float = 2.0) -> str:
    """Set the ``axis`` (``"x"`` or ``"y"``) scale of ``ax`` to :func:`value_scale` of
    ``values``; a symmetric-log axis is linear only below the smallest magnitude and
    gets limits that show every value. Returns the scale's name."""
    scale = value_scale(values, decades)
    setter = ax.set_yscale if axis == "y" else ax.set_xscale
    if scale == "symlog":
        raw = np.asarray(values, dtype=np.float64)
        raw = raw[np.isfinite(raw)]
        v = np.abs(raw[raw != 0])
        # linear only below the smallest magnitude: every value sits on the log part
        linthresh = max(0.5 * float(v.min()), float(v.max()) * 1e-6)
        setter("symlog", linthresh=linthresh)
        lo, hi = float(raw.min()), float(raw.max())
        limits = (lo * 2.0 if lo < 0 else -linthresh, hi * 2.0 if hi > 0 else linthresh)
        (ax.set_ylim if axis == "y" else ax.set_xlim)(*limits)
    else:
        setter(scale)
    return scale



def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int | None = None) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (temporary file + rename); close it."""
    try:
        with plt.rc_context(STYLE):
            return atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
