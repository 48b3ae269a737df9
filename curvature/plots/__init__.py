"""Figures: the only room of the package that imports matplotlib.

* :mod:`~curvature.plots.base` -- rcParams (:data:`STYLE`, :func:`style`), axis scales
  (:func:`value_scale`), atomic PNG files (:func:`save_figure`);
* :mod:`~curvature.plots.charts` -- one quantity on one ``Axes``: spectral densities,
  extreme eigenvalues, trajectories, heatmaps, 1-D and 2-D loss landscapes;
* :mod:`~curvature.plots.reports` -- the composed figures of ``curvature analyze`` and
  ``curvature compare``;
* :mod:`~curvature.plots.blocks` -- the per-block figure of ``curvature analyze --per-layer``;
* :mod:`~curvature.plots.training` -- the curvature monitor's figure and the training
  figure of ``curvature demo``.

Every chart draws on a matplotlib ``Axes`` (a new figure when ``ax=None``) and returns
it; :func:`save_figure` writes a PNG atomically and closes the figure. The Agg backend
is selected when no backend has been chosen yet, so nothing needs a display. Other
rooms import this package lazily, inside the function that draws, so ``import
curvature`` never imports matplotlib. Conventions: axes carry their quantity and unit,
legends name every curve, and a value axis switches to a logarithmic scale
(``"symlog"`` when it crosses zero) when its values span more than two decades.
"""

import sys

import matplotlib

if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

from curvature.plots.base import STYLE, save_figure, style, value_scale  # noqa: E402
from curvature.plots.blocks import per_block_density_figure, per_block_figure  # noqa: E402
from curvature.plots.charts import (  # noqa: E402  (after the backend is chosen)
    density_grid,
    plot_density,
    plot_eigenvalues,
    plot_heatmap,
    plot_landscape_1d,
    plot_landscape_2d,
    plot_spectral_density,
    plot_trajectories,
)
from curvature.plots.reports import analysis_figures, comparison_figures  # noqa: E402
from curvature.plots.training import monitor_figure, training_figure  # noqa: E402

__all__ = [
    "STYLE",
    "analysis_figures",
    "comparison_figures",
    "density_grid",
    "monitor_figure",
    "per_block_density_figure",
    "per_block_figure",
    "plot_density",
    "plot_eigenvalues",
    "plot_heatmap",
    "plot_landscape_1d",
    "plot_landscape_2d",
    "plot_spectral_density",
    "plot_trajectories",
    "save_figure",
    "style",
    "training_figure",
    "value_scale",
]
