"""Frozen result records returned by the estimators.

Every estimate travels with what is needed to judge it: eigenpairs with their true
residuals and convergence flags, stochastic estimates with standard errors, and the
number of operator products (matvecs) spent on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from curvature.errors import ConvergenceWarning

__all__ = ["ConvergenceWarning", "EigenResult", "TraceResult", "DiagonalResult"]


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
        ``||H v_i - lambda_i v_i||_2`` (same units as the eigenvalues).
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

