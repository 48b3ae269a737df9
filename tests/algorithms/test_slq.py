"""Stochastic Lanczos quadrature (:mod:`curvature.algorithms.slq`) and ``SpectralDensity``
against exact spectra; agreement with PyHessian."""

from __future__ import annotations

import copy
import doctest
import math

import matplotlib
import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from curvature.algorithms import slq as slq_module
from curvature.algorithms.probes import make_generator, rademacher
from curvature.estimators import eigenvalues, spectral_density, trace
from curvature.operators import CurvatureOperator, DenseOperator, HessianOperator, dense_hessian
from curvature.results import SpectralDensity

from .conftest import designed, outlier_spectrum, small_problem

matplotlib.use("Agg")


def test_doctest():
    assert doctest.testmod(slq_module).failed == 0


@pytest.fixture(scope="module")
def outliers():
    eigs = outlier_spectrum()
    op = designed(eigs)
    return op, eigs, spectral_density(op, num_steps=80, num_probes=10, seed=0)


def test_shapes_and_weights(outliers):
    op, _, sd = outliers
    assert sd.nodes.shape == sd.weights.shape == (10, 80)
    assert sd.num_matvecs == 800 == op.num_matvecs
    assert sd.dim == 300
    torch.testing.assert_close(sd.weights.sum(1), torch.ones(10, dtype=torch.float64))
    assert torch.all(sd.weights >= 0)
    assert torch.all(sd.nodes[:, 1:] >= sd.nodes[:, :-1])


@pytest.mark.parametrize("sigma", [None, 0.05, 2.0])
def test_density_integrates_to_one(outliers, sigma):
    _, _, sd = outliers
    s = sd.default_sigma() if sigma is None else sigma
    lo, hi = sd.lambda_min - 12 * s, sd.lambda_max + 12 * s
    grid = np.linspace(lo, hi, int((hi - lo) / (s / 8)) + 1)  # spacing sigma / 8
    dens = sd.evaluate(grid, sigma).numpy()
    assert np.all(dens >= 0)
    assert abs(np.trapezoid(dens, grid) - 1.0) < 1e-6


def test_extreme_nodes_match_extreme_eigenvalues(outliers):
    _, eigs, sd = outliers
    assert sd.lambda_max == pytest.approx(eigs.max(), rel=1e-8)
    # The bulk's lower edge (dense spectrum) converges too, from above.
    assert sd.lambda_min >= eigs.min() - 1e-12
    assert sd.lambda_min - eigs.min() < 1e-6 * (eigs.max() - eigs.min())


def test_wasserstein_distance_to_exact_spectrum(outliers):
    _, eigs, sd = outliers
    w1 = wasserstein_distance(sd.nodes.reshape(-1).numpy(), eigs, sd.weights.reshape(-1).numpy())
    # Baseline: the same distance for a point mass at the mean eigenvalue.
    w1_point = wasserstein_distance([eigs.mean()], eigs)
    print(f"W1(SLQ, exact) = {w1:.4g}; point mass at the mean: {w1_point:.4g}; "
          f"range {eigs.max() - eigs.min():.4g}")
    assert w1 < 0.01 * (eigs.max() - eigs.min())
    assert w1 < 0.2 * w1_point


def test_gauss_quadrature_moments_are_exact():
    # With v = z / sqrt(n) the m-node quadrature integrates t^j exactly for j < 2m:
    # sum_l w_l theta_l^j = v^T A^j v for the same Rademacher probes.
    op = designed(outlier_spectrum(n=120, seed=1), seed=1)
    sd = spectral_density(op, num_steps=6, num_probes=3, seed=4)
    Z = rademacher(120, 3, make_generator(4, op.device), torch.float64, op.device) / math.sqrt(120)
    A = op.matrix
    for j in range(12):
        exact = (Z * (torch.linalg.matrix_power(A, j) @ Z)).sum(0)
        quad = (sd.weights * sd.nodes**j).sum(1)
        torch.testing.assert_close(quad, exact, rtol=1e-8, atol=1e-10)
    assert sd.trace() == pytest.approx(float(120 * (Z * (A @ Z)).sum(0).mean()), rel=1e-10)


def test_full_krylov_space_gives_every_eigenvalue():
    eigs = np.linspace(-2.0, 3.0, 40) + np.random.default_rng(2).normal(0, 0.01, 40)
    op = designed(eigs, seed=2)
    sd = spectral_density(op, num_steps=40, num_probes=2, seed=0)
    for row in sd.nodes.numpy():
        np.testing.assert_allclose(row, np.sort(eigs), atol=1e-9)


def test_rank_deficient_operator_breakdown():
    # Rank 3: every probe's Krylov space is invariant after 3 steps; the remaining nodes
    # come with weight 0 and the density is still right.
    op = designed(np.concatenate([[3.0, 2.0, -1.0], np.zeros(27)]), seed=3)
    sd = spectral_density(op, num_steps=10, num_probes=4, seed=0)
    assert torch.isfinite(sd.nodes).all() and torch.isfinite(sd.weights).all()
    torch.testing.assert_close(sd.weights.sum(1), torch.ones(4, dtype=torch.float64))
    heavy = sd.nodes[sd.weights > 1e-12].numpy()
    assert np.all(np.min(np.abs(heavy[:, None] - np.array([3.0, 2.0, -1.0, 0.0])), 1) < 1e-8)


def test_probe_blocks_give_same_density():
    op = designed(outlier_spectrum(n=100, seed=5), seed=5)
    a = spectral_density(op, num_steps=20, num_probes=5, seed=3)
    b = spectral_density(op, num_steps=20, num_probes=5, seed=3, probe_block=2)
    torch.testing.assert_close(a.nodes, b.nodes, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a.weights, b.weights, rtol=1e-8, atol=1e-10)


def test_plot_log_axis_with_extremes_marked(outliers):
    import matplotlib.pyplot as plt

    _, _, sd = outliers
    ax = sd.plot()
    assert ax.get_yscale() == "log"
    xs = sorted(line.get_xdata()[0] for line in ax.get_lines()[1:])
    assert xs == pytest.approx([sd.lambda_min, sd.lambda_max])
    assert "lambda_{max}" in ax.get_legend().get_texts()[1].get_text()
    ax_lin = sd.plot(log=False)
    assert ax_lin.get_yscale() == "linear"
    plt.close("all")


def test_hessian_density_extremes():
    model, loss_fn, data = small_problem(64, 8, seed=2, dtype=torch.float32)
    eigs = np.linalg.eigvalsh(dense_hessian(model, loss_fn, data).numpy())
    op = HessianOperator(model, loss_fn, data, dtype=torch.float64)
    sd = spectral_density(op, num_steps=40, num_probes=4, seed=0)
    assert sd.lambda_max == pytest.approx(eigs.max(), rel=1e-6)
    assert sd.lambda_min == pytest.approx(eigs.min(), rel=1e-4)
    assert sd.trace() == pytest.approx(eigs.sum(), rel=0.5)  # 4 probes: a rough estimate


class NaNOperator(CurvatureOperator):
    def __init__(self, A, after):
        super().__init__(A.shape[0], A.device, A.dtype)
        self.A, self.after = A, after

    def _matmat(self, V):
        out = self.A @ V
        if self.num_matvecs >= self.after:
            out[:, -1] = float("nan")
        return out


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"num_steps": 31}, ValueError, "num_steps <= n"),
        ({"num_steps": 0}, ValueError, "num_steps"),
        ({"num_probes": 0}, ValueError, "num_probes"),
        ({"num_probes": 2.0}, TypeError, "num_probes must be an int"),
        ({"probe_block": 0}, ValueError, "probe_block"),
    ],
)
def test_bad_input(kwargs, err, match):
    op = designed(np.linspace(0, 1, 30))
    with pytest.raises(err, match=match):
        spectral_density(op, **{"num_steps": 10, **kwargs})


def test_non_finite_product_names_step_and_probe():
    op = NaNOperator(designed(np.linspace(0, 1, 30)).matrix, after=6)
    with pytest.raises(FloatingPointError, match="step 3 of probe 2"):
        spectral_density(op, num_steps=10, num_probes=3, seed=0)


def test_evaluate_rejects_bad_sigma(outliers):
    with pytest.raises(ValueError, match="sigma"):
        outliers[2].evaluate([0.0], sigma=0.0)


def test_is_frozen(outliers):
    with pytest.raises(AttributeError):
        outliers[2].dim = 3  # type: ignore[misc]
    assert isinstance(outliers[2], SpectralDensity)


# --------------------------------------------------------------------- PyHessian
def _torch_eig_shim(A, eigenvectors=False):
    """Stand-in for ``torch.eig`` (removed in torch 1.9+) that PyHessian 0.1's density calls."""
    vals, vecs = torch.linalg.eigh(A)
    return torch.stack([vals, torch.zeros_like(vals)], 1), vecs


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_agreement_with_pyhessian(monkeypatch):
    pyhessian = pytest.importorskip("pyhessian")
    model, loss_fn, data = small_problem(64, 8, seed=2, dtype=torch.float32)
    eigs = np.linalg.eigvalsh(dense_hessian(model, loss_fn, data).numpy())
    # PyHessian leaves create_graph gradients on the model: give it a copy (float32; it
    # draws float32 probes).
    ph = pyhessian.hessian(copy.deepcopy(model), torch.nn.CrossEntropyLoss(), data=data, cuda=False)
    torch.manual_seed(0)  # PyHessian draws from the global RNG
    ph_top, _ = ph.eigenvalues(maxIter=1000, tol=1e-7, top_n=1)
    ph_trace = np.asarray(ph.trace(maxIter=300, tol=0.0))
    # PyHessian 0.1's density calls torch.eig, removed from PyTorch: it raises
    # RuntimeError without this test-only shim.
    monkeypatch.setattr(torch, "eig", _torch_eig_shim, raising=False)
    ph_nodes, ph_weights = ph.density(iter=40, n_v=2)

    op = HessianOperator(model, loss_fn, data, dtype=torch.float64)
    top = eigenvalues(op, 1, seed=0, tol=1e-6)
    tr = trace(op, num_matvecs=150, seed=0)
    sd = spectral_density(op, num_steps=40, num_probes=2, seed=0)

    assert eigs[-1] > abs(eigs[0])  # PyHessian's power iteration is only right then
    assert top.values[0].item() == pytest.approx(eigs[-1], rel=1e-8)
    assert ph_top[0] == pytest.approx(top.values[0].item(), rel=1e-4)
    ph_est, ph_se = ph_trace.mean(), ph_trace.std(ddof=1) / math.sqrt(len(ph_trace))
    assert abs(ph_est - tr.estimate) <= 3 * math.hypot(ph_se, tr.stderr)
    assert abs(tr.estimate - eigs.sum()) <= 3 * tr.stderr
    ph_nodes = np.asarray(ph_nodes, dtype=np.float64)
    np.testing.assert_allclose(ph_nodes.max(), sd.lambda_max, rtol=1e-4)
    np.testing.assert_allclose(ph_nodes.min(), sd.lambda_min, rtol=1e-3)
    np.testing.assert_allclose(np.sum(ph_weights, axis=1), 1.0, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    eigs = outlier_spectrum(n=200)
    op = DenseOperator(designed(eigs).matrix.cuda())
    sd = spectral_density(op, num_steps=60, num_probes=4, seed=0)
    assert sd.lambda_max == pytest.approx(eigs.max(), rel=1e-8)
    torch.testing.assert_close(sd.weights.sum(1), torch.ones(4, dtype=torch.float64))
