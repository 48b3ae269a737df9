"""Frozen result records returned by the estimators.

Every estimate travels with what is needed to judge it: eigenpairs with their true
residuals and convergence flags, stochastic estimates with standard errors, and the
number of operator products (matvecs) spent on them; a spectral density carries its
quadrature nodes and weights and broadens them on demand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from curvature.errors import ConvergenceWarning

__all__ = ["ConvergenceWarning", "DiagonalResult", "EigenResult", "SpectralDensity", "TraceResult"]


@dataclass(frozen=True, eq=False)
class EigenResult:
    """Eigenpairs ``H v_i = lambda_i v_i`` found by :func:`curvature.eigenvalues`.

    Attributes
    ----------
    values : Tensor[k], float64 on the CPU
        Eigenvalue estimates (Ritz values), ordered by ``which``: descending for
        ``"largest"``, ascending for ``"smallest"``, descending ``|lambda|`` for
        ``"magnitude"``.
    vectors : Tensor[n, k], operator dtype and device
        Unit-norm eigenvector estimates; column ``i`` belongs to ``values[i]``.
    residuals : Tensor[k], float64 on the CPU
        ``||H v_i - lambda_i v_i||_2`` (same units as the eigenvalues). With
        finite-difference products, a bound on it: the measured residual plus
        ``product_error``.
    converged : bool
        ``True`` when every pair met the tolerance (see ``converged_mask``).
    num_matvecs : int
        Operator-vector products spent (a block product of ``k`` columns counts ``k``).
    converged_mask : Tensor[k] of bool
        Per-pair flag ``residuals[i] <= tol * max(|values[i]|, 1e-3 * ||H||_est)``.
    method, which : str
        The algorithm (``"lanczos"`` / ``"power"``) and the requested end of the spectrum.
    tol : float
        The relative residual tolerance used.
    message : str
        Human-readable account of how the run ended.
    product_error : float
        The operator's :attr:`~curvature.CurvatureOperator.product_error` after the
        run: estimated largest error of one product per unit vector (eigenvalue
        units; 0.0 for exact products). Pairs are not called converged when it
        exceeds their residual threshold.
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    converged: bool
    num_matvecs: int
    converged_mask: Tensor
    method: str
    which: str
    tol: float
    message: str = ""
    product_error: float = 0.0

    def __repr__(self) -> str:
        vals = ", ".join(f"{v:.6g}" for v in self.values.tolist())
        return (
            f"EigenResult(values=[{vals}], converged={self.converged}, "
            f"num_matvecs={self.num_matvecs}, method={self.method!r}, which={self.which!r})"
        )


@dataclass(frozen=True, eq=False)
class TraceResult:
    """A stochastic trace estimate from :func:`curvature.trace`.

    Attributes
    ----------
    estimate : float
        Estimate of ``tr(H)``.
    stderr : float
        Estimated standard error of ``estimate`` (``estimate +- 2 stderr`` is an
        approximate 95% interval; for Hutch++ conditional on the sketched subspace).
    num_matvecs : int
        Operator-vector products spent.
    method : str
        ``"hutch++"`` or ``"hutchinson"``.
    product_error : float
        The operator's :attr:`~curvature.CurvatureOperator.product_error` after the
        estimate (0.0 for exact products). A probe ``z`` carries a quadratic-form
        error of at most ``||z||^2 * product_error`` (``n * product_error`` for
        Rademacher probes), which ``stderr`` does not include.
    """

    estimate: float
    stderr: float
    num_matvecs: int
    method: str
    product_error: float = 0.0

    def __float__(self) -> float:
        return float(self.estimate)


@dataclass(frozen=True, eq=False)
class DiagonalResult:
    """A stochastic estimate of ``diag(H)`` from :func:`curvature.diagonal`.

    Attributes
    ----------
    estimate : Tensor[n], operator dtype and device
        Estimate of the diagonal ``H_ii``.
    stderr : Tensor[n]
        Per-coordinate standard error of ``estimate``.
    num_matvecs : int
        Operator-vector products spent.
    product_error : float
        The operator's :attr:`~curvature.CurvatureOperator.product_error` after the
        estimate (0.0 for exact products), not included in ``stderr``.
    """

    estimate: Tensor
    stderr: Tensor
    num_matvecs: int
    product_error: float = 0.0


@dataclass(frozen=True, eq=False)
class SpectralDensity:
    """A stochastic-Lanczos-quadrature estimate of the eigenvalue density of ``H``.

    Attributes
    ----------
    nodes : Tensor[num_probes, num_steps], float64 CPU
        Gauss quadrature nodes (Ritz values) of each probe, ascending per row.
    weights : Tensor[num_probes, num_steps], float64 CPU
        Gauss quadrature weights of each probe (each row sums to 1).
    num_matvecs : int
        Operator products spent (``num_probes * num_steps``).
    dim : int
        ``n``, the operator's dimension.
    product_error : float
        The operator's :attr:`~curvature.CurvatureOperator.product_error` after the
        run (0.0 for exact products): each node is uncertain by about this much.
    """

    nodes: Tensor
    weights: Tensor
    num_matvecs: int
    dim: int
    product_error: float = 0.0

    @property
    def lambda_min(self) -> float:
        """Smallest node: converges to the smallest eigenvalue from above."""
        return float(self.nodes.min())

    @property
    def lambda_max(self) -> float:
        """Largest node: converges to the largest eigenvalue from below."""
        return float(self.nodes.max())

    def trace(self) -> float:
        """SLQ estimate of ``tr(H) = n int t dphi(t)`` (the Hutchinson estimate of the same probes)."""
        return float(self.dim * (self.weights * self.nodes).sum(1).mean())

    def default_sigma(self) -> float:
        """Broadening used when none is given: ``1e-3`` of the node range (or of ``max |node|``)."""
        span = self.lambda_max - self.lambda_min
        if span <= 0:
            span = max(abs(self.lambda_max), 1.0)
        return 1e-3 * span

    def evaluate(self, grid: Tensor | np.ndarray | list[float], sigma: float | None = None) -> Tensor:
        """Gaussian-broadened density on ``grid``.

        ``phi_sigma(t) = (1/P) sum_p sum_l w_pl N(t; theta_pl, sigma^2)``: a probability
        density (integrates to 1 over the real line). ``grid``: Tensor[G] of
        eigenvalue positions; ``sigma``: the Gaussian standard deviation in eigenvalue
        units (default :meth:`default_sigma`). Returns Tensor[G], float64.
        """
        t = torch.as_tensor(np.asarray(grid, dtype=np.float64)).reshape(-1)
        sigma = self.default_sigma() if sigma is None else float(sigma)
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        nodes = self.nodes.reshape(-1)
        weights = self.weights.reshape(-1) / self.nodes.shape[0]
        out = torch.empty_like(t)
        norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
        for start in range(0, t.numel(), 4096):  # bounded [chunk, P * m] memory
            d = (t[start : start + 4096, None] - nodes[None, :]) / sigma
            out[start : start + 4096] = torch.exp(-0.5 * d.square()) @ weights * norm
        return out

    def plot(self, ax=None, log: bool = True, sigma: float | None = None, num_points: int = 4000):
        """Draw the broadened density (log y-axis by default) with ``lambda_min``/``lambda_max`` marked.

        Returns the matplotlib ``Axes`` (drawn by :func:`curvature.plots.plot_spectral_density`).
        """
        from curvature.plots import plot_spectral_density

        return plot_spectral_density(self, ax=ax, log=log, sigma=sigma, num_points=num_points)
