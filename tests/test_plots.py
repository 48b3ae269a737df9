"""Figures: every plot function renders a PNG, picks the documented axis scale, and
draws the numbers it is given (checked on the artists, not by eye)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from curvature import plots
from curvature.landscape import Landscape
from curvature.results import SpectralDensity

PNG = b"\x89PNG\r\n\x1a\n"


def _density(values, weights=None):
    v = torch.tensor([values], dtype=torch.float64)
    w = torch.full_like(v, 1.0 / v.shape[1]) if weights is None else torch.tensor([weights])
    return SpectralDensity(nodes=v, weights=w.double(), num_matvecs=v.shape[1], dim=100)


def test_density_plot_marks_extremes_on_a_log_axis(tmp_path):
    dens = {"a": _density([-0.1, 0.0, 0.01, 5.0]), "b": _density([0.0, 2.0])}
    ax = plots.plot_density(dens, eigenvalues={"a": [5.0, 0.01, -0.1]})
    assert ax.get_yscale() == "log"
    xs = sorted({line.get_xdata()[0] for line in ax.lines if line.get_linestyle() in ("--", ":")})
    assert xs == pytest.approx([-0.1, 0.0, 2.0, 5.0])  # a: -0.1/5.0, b: nodes 0/2
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("5" in t and "-0.1" in t for t in labels)
    # the broadened density integrates to one on the plotted grid
    line = ax.lines[0]
    assert np.trapezoid(line.get_ydata(), line.get_xdata()) == pytest.approx(1.0, rel=1e-3)
    path = plots.save_figure(ax.figure, tmp_path / "d.png")
    assert path.read_bytes()[:8] == PNG
    # only the top eigenvalues given: lambda_min still comes from the density's nodes
    ax = plots.plot_density({"a": _density([-0.3, 0.0, 4.9])}, eigenvalues={"a": [5.0, 1.0]})
    label = ax.get_legend().get_texts()[0].get_text()
    assert "= 5," in label and "= -0.3" in label
    plots.save_figure(ax.figure, tmp_path / "top_only.png")


def test_eigenvalues_trajectories_heatmap(tmp_path):
    ax = plots.plot_eigenvalues({"run": {"largest": [40.0, 3.0], "smallest": [-0.02, -0.01]}})
    assert ax.get_yscale() == "symlog"
    plots.save_figure(ax.figure, tmp_path / "e.png")
    ax = plots.plot_trajectories([0, 10, 20], {"truth": [100.0, 10.0, 0.5], "est": [90, 12, 1]})
    assert ax.get_yscale() == "log"
    assert list(ax.lines[0].get_ydata()) == [100.0, 10.0, 0.5]
    plots.save_figure(ax.figure, tmp_path / "t.png")
    m = np.array([[1.0, 1e3], [np.nan, 10.0]])
    ax = plots.plot_heatmap(m, ["r1", "r2"], ["c1", "c2"], cbar_label="lambda_max")
    assert [t.get_text() for t in ax.texts] == ["1", "1e+03", "", "10"]
    assert ax.images[0].norm.__class__.__name__ == "LogNorm"
    plots.save_figure(ax.figure, tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == PNG


def test_landscape_plots(tmp_path):
    a = torch.linspace(-1, 1, 5, dtype=torch.float64)
    line = Landscape(coords=(a,), loss=1.0 + a**2, accuracy=None, loss0=1.0, labels=("v",),
                     direction_norms=(1.0,))
    ax = plots.plot_landscape_1d([("train", line)], quadratic={"train": (1.0, 0.0, 2.0)})
    # the quadratic model 1 + a^2 coincides with the curve
    np.testing.assert_allclose(ax.lines[1].get_ydata(), ax.lines[0].get_ydata())
    plots.save_figure(ax.figure, tmp_path / "l1.png")
    A, B = torch.meshgrid(a, a, indexing="ij")
    plane = Landscape(coords=(a, a), loss=0.01 + A**2 + 3 * B**2, accuracy=None, loss0=0.01,
                      labels=("d1", "d2"), direction_norms=(1.0, 1.0))
    ax = plots.plot_landscape_2d(plane)
    assert ax.get_xlabel().endswith("d1") and ax.get_ylabel().endswith("d2")
    plots.save_figure(ax.figure, tmp_path / "l2.png")
    assert (tmp_path / "l2.png").read_bytes()[:8] == PNG
    assert plt.get_fignums() == []  # save_figure closes its figures
