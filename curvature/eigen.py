"""Extreme eigenvalues of a curvature operator: Lanczos (default) or power iteration.

The algorithms live in :mod:`curvature._lanczos` (block thick-restart Lanczos with full
reorthogonalisation, which finds every copy of a repeated eigenvalue) and :mod:`curvature._power` (deflated, shifted power
iteration); this module checks the arguments and dispatches.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch

from curvature._lanczos import lanczos
from curvature._power import power_iteration
from curvature._random import make_generator
from curvature.operators import CurvatureOperator
from curvature.results import ConvergenceWarning, EigenResult

__all__ = ["eigenvalues"]

_WHICH = ("largest", "smallest", "magnitude")
_METHODS = ("lanczos", "power")
_BASIS_NUMBERS = 2**29


def _check_operator(op: object, caller: str) -> int:
    if not isinstance(op, CurvatureOperator):
        raise TypeError(
            f"{caller} needs a CurvatureOperator (HessianOperator, GGNOperator, "
            f"DenseOperator, ...), got {type(op).__name__}"
        )
    return op.shape[0]


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def eigenvalues(
    op: CurvatureOperator,
    k: int = 1,
    *,
    which: str = "largest",
    method: str = "lanczos",
    tol: float = 1e-4,
    max_matvecs: int | None = None,
    seed: int | None = None,
    progress: bool = False,
    basis_size: int | None = None,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> EigenResult:
    """The ``k`` extreme eigenpairs ``H v = lambda v`` of a symmetric operator.

    Parameters
    ----------
    op : CurvatureOperator
        Symmetric ``n x n`` operator; only its products are used.
    k : int
        Number of eigenpairs, ``1 <= k <= n``.
    which : {"largest", "smallest", "magnitude"}
        ``"largest"``/``"smallest"`` are *algebraic* (a negative eigenvalue of large
        magnitude is never returned as the largest; ``"smallest"`` finds negative
        curvature); ``"magnitude"`` ranks by ``|lambda|``.
    method : {"lanczos", "power"}
        Block thick-restart Lanczos with full reorthogonalisation (``O(sqrt(kappa))``
        products), or power iteration with deflation and a spectral shift
        (``O(kappa)`` products; a baseline). Both return every copy of a repeated
        eigenvalue (weight tying and symmetric architectures make them common):
        Lanczos multiplies a block of random vectors (1 for ``k = 1``, else 2, grown
        towards ``k`` while a cluster of copies fills it) and, when its Krylov space
        becomes invariant, continues from fresh random vectors orthogonal to it; see
        :mod:`curvature._lanczos` for the argument behind ``converged``.
    tol : float
        Relative residual tolerance: pair ``i`` has converged when

        ``||H v_i - lambda_i v_i|| <= tol * max(|lambda_i|, 1e-3 * ||H||_est)``

        where ``||H||_est`` is the largest ``|Ritz value|`` seen (the floor makes the
        test attainable for eigenvalues near zero). For symmetric ``H`` the
        eigenvalue error is at most the residual, and at most ``residual^2 / gap``
        once the pair is separated by ``gap`` from the rest of the spectrum.
    max_matvecs : int, optional
        Budget of operator products (default ``max(1000, 100 k)``). A run that
        spends it returns its current best pairs with ``converged=False``, a
        ``message`` and a :class:`~curvature.results.ConvergenceWarning`.
    seed : int, optional
        Seeds the start vectors (a ``torch.Generator`` on ``op.device``).
    progress : bool
        Show a tqdm bar of the products spent.
    basis_size : int, optional
        Lanczos only: Krylov basis columns kept in memory (``n * (basis_size + b)``
        numbers, ``b <= min(k, basis_size - k)`` the block size) before a thick restart;
        default ``min(n, max(2k + 10, k + 30))``, lowered (not below ``k + 10``) to keep
        the basis under ``2**29`` numbers. Below ``2k`` it limits the block, and with it
        the multiplicity that can be certified.
    callback : callable, optional
        ``callback(num_matvecs, values)`` after every product (Lanczos: every block
        product) with the current estimates of the wanted values (for convergence
        studies).

    Returns
    -------
    EigenResult
        ``values`` (Tensor[k], float64 CPU, ordered by ``which``), ``vectors``
        (Tensor[n, k], unit norm, operator dtype/device), ``residuals``,
        ``converged``, ``converged_mask``, ``num_matvecs``, ``message``.

    Raises
    ------
    ValueError
        Bad ``k``, ``which``, ``method``, ``tol``, ``max_matvecs`` or ``basis_size``.
    FloatingPointError
        The operator returned a NaN/inf product (the message names the iteration).
    """
    n = _check_operator(op, "eigenvalues")
    k = _positive_int(k, "k")
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n = {n}, got k = {k}")
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (
        math.isfinite(tol) and 0 < tol < 1
    ):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    if max_matvecs is None:
        max_matvecs = max(1000, 100 * k)
    max_matvecs = _positive_int(max_matvecs, "max_matvecs")
    if max_matvecs < k:
        raise ValueError(f"max_matvecs = {max_matvecs} is smaller than k = {k}")
    gen = make_generator(seed, op.device)
    if method == "power":
        if basis_size is not None:
            raise ValueError("basis_size applies to method='lanczos' only")
        result = power_iteration(op, k, which, float(tol), max_matvecs, gen, progress, callback)
        return _limit_by_product_error(result, op)
    if basis_size is None:
        # At most ~2**29 stored numbers (2 GiB in float32) unless k itself needs more.
        basis_size = min(n, max(2 * k + 10, k + 30), max(k + 10, _BASIS_NUMBERS // n))
    basis_size = _positive_int(basis_size, "basis_size")
    if not (k < basis_size <= n or basis_size == n):
        raise ValueError(
            f"basis_size must satisfy k < basis_size <= n (k = {k}, n = {n}), got {basis_size}"
        )
    result = lanczos(op, k, which, float(tol), max_matvecs, basis_size, gen, progress, callback)
    return _limit_by_product_error(result, op)


def _limit_by_product_error(result: EigenResult, op: CurvatureOperator) -> EigenResult:
    """Refuse convergence below the accuracy of the products (finite differences).

    A pair cannot be trusted to ``tol`` when one product may be off by more than its
    residual threshold ``tol * max(|lambda_i|, 1e-3 * max_j |lambda_j|)``.
    """
    err = op.product_error
    if err == 0.0:
        return result
    values = result.values.abs()
    finite = values[values.isfinite()]
    scale = float(finite.max()) if finite.numel() else 0.0
    limit = result.tol * torch.clamp(values, min=1e-3 * scale)
    ok = ~(limit < err)  # a NaN value (pair not found) stays as the algorithm left it
    mask = result.converged_mask & ok
    if bool(ok.all()):
        return dataclasses.replace(result, product_error=err)
    message = (
        f"finite-difference error limits the accuracy: products are off by up to "
        f"{err:.3g} per unit vector (op.product_error), above the residual threshold "
        f"{float(limit[~ok].min()):.3g} that tol = {result.tol:g} requires; raise tol "
        f"or use float64 / method='exact'. {result.message}"
    ).strip()
    if result.converged:  # a run that did not converge has warned already
        warnings.warn(f"eigenvalues ({result.method}): {message}", ConvergenceWarning, stacklevel=3)
    return dataclasses.replace(
        result, converged=False, converged_mask=mask, message=message, product_error=err
    )
