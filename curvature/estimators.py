"""The public estimators: argument checks, then dispatch to one algorithm each.

* :func:`eigenvalues`: block Lanczos (:mod:`curvature.algorithms.lanczos`) or power
  iteration (:mod:`curvature.algorithms.power_iteration`), then the finite-difference gate:
  a pair is not called converged when one product may be off (``op.product_error``) by
  more than its residual threshold;
* :func:`trace`: Hutch++ (:mod:`curvature.algorithms.hutchpp`) or Hutchinson
  (:mod:`curvature.algorithms.hutchinson`); :func:`diagonal`: the diagonal estimator of
  :mod:`curvature.algorithms.hutchinson`;
* :func:`spectral_density`: stochastic Lanczos quadrature (:mod:`curvature.algorithms.slq`).

Every argument is checked here with :mod:`curvature.checks` before an algorithm runs; the
results (:mod:`curvature.results`) carry the operator's ``product_error``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from curvature import checks
from curvature.algorithms.hutchinson import hutchinson_diagonal, hutchinson_trace
from curvature.algorithms.hutchpp import hutchpp
from curvature.algorithms.lanczos import default_basis_size, lanczos
from curvature.algorithms.power_iteration import power_iteration
from curvature.algorithms.probes import default_block_size, make_generator
from curvature.algorithms.ritz import WHICH
from curvature.algorithms.slq import slq
from curvature.operators import CurvatureOperator
from curvature.results import (
    ConvergenceWarning,
    DiagonalResult,
    EigenResult,
    SpectralDensity,
    TraceResult,
)

__all__ = ["diagonal", "eigenvalues", "spectral_density", "trace"]

EIGEN_METHODS = ("lanczos", "power")
TRACE_METHODS = ("hutch++", "hutchinson")


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
    v0: Tensor | None = None,
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
        :mod:`curvature.algorithms.lanczos` for the argument behind ``converged``.
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
        the basis under ``2**29`` numbers, and ``n`` itself when ``n`` is at most twice
        that (no restart: a basis of ``n`` columns makes every pair exact). Below ``2k`` it limits the block, and with it
        the multiplicity that can be certified.
    callback : callable, optional
        ``callback(num_matvecs, values)`` after every product (Lanczos: every block
        product) with the current estimates of the wanted values (for convergence
        studies).

    v0 : Tensor, optional
        Lanczos only: a guess of the wanted eigenvectors (``Tensor[n]`` or
        ``Tensor[n, j]``, ``j`` at most the start block: 1 for ``k = 1``, else 2), added
        to the random start vectors, each column at unit norm. The start stays random, so
        the guarantees above hold with probability one, and a good guess saves products:
        the loss gradient for ``which="largest"`` (it lies mostly in the top
        eigenspace); on an 11M-parameter ResNet-18 at initialisation it reached a
        residual of 1.2e-2 in 5 products against 11 from a random start.

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
    NonFiniteProductError
        The operator returned a NaN/inf product (the message names the iteration); a
        ``FloatingPointError``.
    """
    n = checks.operator(op, "eigenvalues")
    k = checks.integer(k, "k")
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n = {n}, got k = {k}")
    checks.choice(which, "which", WHICH)
    checks.choice(method, "method", EIGEN_METHODS)
    tol = checks.tolerance(tol)
    if max_matvecs is None:
        max_matvecs = max(1000, 100 * k)
    max_matvecs = checks.positive_int(max_matvecs, "max_matvecs")
    if max_matvecs < k:
        raise ValueError(f"max_matvecs = {max_matvecs} is smaller than k = {k}")
    gen = make_generator(seed, op.device)
    if v0 is not None:
        v0 = _start_guess(v0, n, method, k)
    if method == "power":
        if basis_size is not None:
            raise ValueError("basis_size applies to method='lanczos' only")
        result = power_iteration(op, k, which=which, tol=tol, max_matvecs=max_matvecs,
                                 generator=gen, progress=progress, callback=callback)
        return _limit_by_product_error(result, op)
    if basis_size is None:
        basis_size = default_basis_size(k, n)
    basis_size = checks.positive_int(basis_size, "basis_size")
    if not (k < basis_size <= n or basis_size == n):
        raise ValueError(
            f"basis_size must satisfy k < basis_size <= n (k = {k}, n = {n}), got {basis_size}"
        )
    result = lanczos(op, k, which=which, tol=tol, max_matvecs=max_matvecs,
                     basis_size=basis_size, generator=gen, progress=progress,
                     callback=callback, v0=v0)
    return _limit_by_product_error(result, op)


def _start_guess(v0: Any, n: int, method: str, k: int) -> Tensor:
    """``v0`` as ``Tensor[n, j]`` after the checks of :func:`eigenvalues`."""
    if method != "lanczos":
        raise ValueError("v0 applies to method='lanczos' only")
    if not isinstance(v0, Tensor):
        raise TypeError(f"v0 must be a torch.Tensor, got {type(v0).__name__}")
    G = v0.reshape(n, -1) if v0.numel() % n == 0 and v0.shape[0] == n else None
    if G is None or v0.ndim > 2:
        raise ValueError(f"v0 must have shape [{n}] or [{n}, j], got {list(v0.shape)}")
    most = 1 if k == 1 else 2
    if G.shape[1] > most:
        raise ValueError(f"v0 has {G.shape[1]} columns; the start block has {most}")
    norms = torch.linalg.vector_norm(G.double(), dim=0)
    if not bool(torch.isfinite(norms).all()) or bool((norms == 0).any()):
        raise ValueError("v0 must have finite, nonzero columns")
    return G


def _limit_by_product_error(result: EigenResult, op: CurvatureOperator) -> EigenResult:
    """Residuals that bound the true ones, and no convergence below the products' accuracy.

    With finite-difference products ``H~ v`` off by at most ``e = op.product_error`` per
    unit vector, the residual the algorithm measured is ``||H~ v - lambda v||``; the true
    one obeys ``||H v - lambda v|| <= ||H~ v - lambda v|| + e``, which is what is reported.
    A pair counts as converged only if that bound meets its threshold
    ``tol * max(|lambda_i|, 1e-3 * max_j |lambda_j|)``.
    """
    err = op.product_error
    if err == 0.0:
        return result
    residuals = result.residuals + err
    values = result.values.abs()
    finite = values[values.isfinite()]
    scale = float(finite.max()) if finite.numel() else 0.0
    limit = result.tol * torch.clamp(values, min=1e-3 * scale)
    ok = ~(limit < residuals)  # a NaN value (pair not found) stays as the algorithm left it
    mask = result.converged_mask & ok
    if bool(ok.all()):
        return dataclasses.replace(result, residuals=residuals, product_error=err)
    message = (
        f"finite-difference error limits the accuracy: products are off by up to "
        f"{err:.3g} per unit vector (op.product_error), so residuals are only known to "
        f"{float(residuals[~ok].min()):.3g}, above the threshold "
        f"{float(limit[~ok].min()):.3g} that tol = {result.tol:g} requires; raise tol "
        f"or use float64 / method='exact'. {result.message}"
    ).strip()
    if result.converged:  # a run that did not converge has warned already
        warnings.warn(f"eigenvalues ({result.method}): {message}", ConvergenceWarning, stacklevel=3)
    return dataclasses.replace(
        result, residuals=residuals, converged=False, converged_mask=mask, message=message,
        product_error=err,
    )


def _block_size(block_size: int | None, op: CurvatureOperator) -> int:
    """Columns per product: ``block_size``, or by default as many as fit 256 MiB."""
    if block_size is None:
        return default_block_size(op)
    return checks.positive_int(block_size, "block_size")


def trace(
    op: CurvatureOperator,
    *,
    method: str = "hutch++",
    num_matvecs: int = 100,
    seed: int | None = None,
    block_size: int | None = None,
    progress: bool = False,
    sketch_size: int | None = None,
) -> TraceResult:
    """Estimate ``tr(H)`` from ``num_matvecs`` products with Rademacher probes.

    Parameters
    ----------
    op : CurvatureOperator
        Symmetric ``n x n`` operator.
    method : {"hutch++", "hutchinson"}
        Hutch++ (``num_matvecs >= 4``; the default, several times more accurate when
        a few eigenvalues dominate) or plain Hutchinson (``num_matvecs >= 2``). See
        :mod:`curvature.algorithms.hutchpp` and :mod:`curvature.algorithms.hutchinson`
        for the estimators and their standard errors.
    num_matvecs : int
        Total operator products to spend.
    seed : int, optional
        Seeds the probes (a ``torch.Generator`` on ``op.device``).
    block_size : int, optional
        Most probes multiplied at once (``2 n block_size`` numbers); by default as
        many as fit in 256 MiB.
    progress : bool
        Show a tqdm bar of the products spent.
    sketch_size : int, optional
        Hutch++ only: most sketch columns (default ``num_matvecs // 3``; the sketch
        stores ``2 n sketch_size`` numbers); the products it frees go to the
        Hutchinson part.

    Returns
    -------
    TraceResult
        ``estimate`` (float), ``stderr`` (float, an approximate 95% interval is
        ``estimate +- 2 stderr``), ``num_matvecs`` (int), ``method``.
    """
    checks.operator(op, "trace")
    checks.choice(method, "method", TRACE_METHODS)
    num_matvecs = checks.positive_int(num_matvecs, "num_matvecs")
    least = 4 if method == "hutch++" else 2
    if num_matvecs < least:
        raise ValueError(
            f"trace(method={method!r}) needs num_matvecs >= {least} (for a standard "
            f"error), got {num_matvecs}"
        )
    block_size = _block_size(block_size, op)
    gen = make_generator(seed, op.device)
    if method == "hutch++":
        if sketch_size is not None:
            sketch_size = checks.positive_int(sketch_size, "sketch_size")
        return hutchpp(op, num_matvecs, generator=gen, block_size=block_size,
                       sketch_size=sketch_size, progress=progress)
    if sketch_size is not None:
        raise ValueError("sketch_size applies to method='hutch++' only")
    return hutchinson_trace(op, num_matvecs, generator=gen, block_size=block_size,
                            progress=progress)


def diagonal(
    op: CurvatureOperator,
    *,
    num_matvecs: int = 100,
    seed: int | None = None,
    block_size: int | None = None,
    progress: bool = False,
) -> DiagonalResult:
    """Estimate ``diag(H)`` as the mean of ``z_i * (H z_i)`` over Rademacher probes.

    Parameters
    ----------
    op : CurvatureOperator
        Symmetric ``n x n`` operator.
    num_matvecs : int
        Number of probes (``>= 2``, for the standard errors).
    seed : int, optional
        Seeds the probes (a ``torch.Generator`` on ``op.device``).
    block_size : int, optional
        Most probes multiplied at once; by default as many as fit in 256 MiB.
    progress : bool
        Show a tqdm bar of the products spent.

    Returns
    -------
    DiagonalResult
        ``estimate`` (Tensor[n], operator dtype/device), ``stderr`` (Tensor[n], the
        per-coordinate sample standard deviation over ``sqrt(num_matvecs)``),
        ``num_matvecs``.
    """
    checks.operator(op, "diagonal")
    num_matvecs = checks.positive_int(num_matvecs, "num_matvecs")
    if num_matvecs < 2:
        raise ValueError(f"diagonal needs num_matvecs >= 2 (for a standard error), got {num_matvecs}")
    block_size = _block_size(block_size, op)
    return hutchinson_diagonal(op, num_matvecs, generator=make_generator(seed, op.device),
                               block_size=block_size, progress=progress)


def spectral_density(
    op: CurvatureOperator,
    *,
    num_steps: int = 80,
    num_probes: int = 10,
    seed: int | None = None,
    probe_block: int | None = None,
    progress: bool = False,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature estimate of the spectral density of ``op``.

    Parameters
    ----------
    op : CurvatureOperator
        Symmetric ``n x n`` operator.
    num_steps : int
        Lanczos steps per probe, ``1 <= num_steps <= n`` (nodes per probe).
    num_probes : int
        Independent Rademacher probes.
    seed : int, optional
        Seeds the probes (a ``torch.Generator`` on ``op.device``).
    probe_block : int, optional
        Probes advanced together (memory ``probe_block * (num_steps + 2) * n``
        numbers); default: as many as fit in 2**28 numbers, at most ``num_probes``.
    progress : bool
        Show a tqdm bar of the products spent.

    Returns
    -------
    SpectralDensity
        ``nodes``/``weights`` (Tensor[num_probes, num_steps]), ``evaluate``, ``plot``.
    """
    n = checks.operator(op, "spectral_density")
    m = checks.integer(num_steps, "num_steps")
    p = checks.positive_int(num_probes, "num_probes")
    if not 1 <= m <= n:
        raise ValueError(f"num_steps must satisfy 1 <= num_steps <= n = {n}, got {m}")
    if probe_block is not None:
        probe_block = checks.positive_int(probe_block, "probe_block")
    return slq(op, m, p, generator=make_generator(seed, op.device), probe_block=probe_block,
               progress=progress)
