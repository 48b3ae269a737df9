r"""Power iteration with deflation and a spectral shift (von Mises 1929; Hotelling 1933).

Power iteration ``v <- H v / ||H v||`` converges to an eigenvector of the eigenvalue
of largest *magnitude*, with error shrinking like ``|lambda_2 / lambda_1|^t``.
Estimating the algebraically largest eigenvalue this way is wrong whenever the most
negative eigenvalue dominates in magnitude (common for Hessians away from minima).
This module therefore:

1. runs power iteration on the deflated operator ``P H P`` (``P = I - V V^T``
   projects out the eigenvectors ``V`` already found; Hotelling deflation) and
   obtains the magnitude-dominant eigenvalue ``mu`` of the remaining spectrum;
2. for ``which="largest"``, if ``mu < 0`` the largest eigenvalue is not ``mu``:
   it re-runs on the shifted operator ``P (H - mu I) P``, whose eigenvalues
   ``lambda - mu`` are all ``>= 0``, so the dominant one belongs to the largest
   ``lambda`` (the shift is kept for the remaining eigenvalues). ``"smallest"``
   is ``"largest"`` of ``-H``; ``"magnitude"`` needs no shift.

Each run stops when the (deflated) residual ``||P H v - theta v||`` with Rayleigh
quotient ``theta = v^T H v`` is at most ``tol * max(|theta|, 1e-3 ||H||_est)``.
With ``k > 1`` a final Rayleigh-Ritz step on the span of the found vectors (``k``
more products) returns the best pairs in that span and their *true* residuals
``||H v - lambda v||``. Convergence of each pair costs ``O(log(1/tol) / log(|mu_1 /
mu_2|))`` products, far more than Lanczos when eigenvalues are close.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from curvature import checks
from curvature.algorithms.probes import gaussian, make_generator
from curvature.algorithms.ritz import residual_limit, wanted_order
from curvature.errors import NonFiniteProductError
from curvature.operators import CurvatureOperator
from curvature.results import ConvergenceWarning, EigenResult

__all__ = ["power_iteration"]


class _Budget(Exception):
    pass


def power_iteration(
    op: CurvatureOperator,
    k: int,
    *,
    which: str = "largest",
    tol: float = 1e-4,
    max_matvecs: int = 1000,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> EigenResult:
    """``k`` extreme eigenpairs of ``op`` by deflated, shifted power iteration.

    The arguments are those of :func:`curvature.eigenvalues` (``method="power"``), which
    checks them and adds the finite-difference gate; called directly, they must already
    be valid (``1 <= k <= n``, ``which`` in :data:`~curvature.algorithms.ritz.WHICH`,
    ``0 < tol < 1``, ``k <= max_matvecs``). ``generator`` draws the start vectors (fresh
    entropy when ``None``). ``callback(num_matvecs, values)`` receives the current
    Rayleigh quotient of the pair being computed (as a one-element array) after every
    product.

    Returns an :class:`~curvature.EigenResult` (``method="power"``); a run that spends its
    budget warns with a :class:`~curvature.ConvergenceWarning` and returns its partial
    pairs with ``converged=False``.

    Raises:
        TypeError: ``op`` is not a ``CurvatureOperator``.
        NonFiniteProductError: a product holds NaN/inf (the message names the iteration).

    Example: the largest eigenvalue is 2, though -3 dominates in magnitude.

    >>> import torch, curvature as cv
    >>> op = cv.DenseOperator(torch.diag(torch.tensor([2.0, 1.0, 0.5, -3.0])).double())
    >>> res = power_iteration(op, 1, tol=1e-6, generator=torch.Generator().manual_seed(0))
    >>> res.converged, round(res.values.item(), 4)
    (True, 2.0)
    """
    n = checks.operator(op, "power_iteration")
    gen = make_generator(None, op.device) if generator is None else generator
    dtype, device = op.dtype, op.device
    sign = -1.0 if which == "smallest" else 1.0  # "smallest" of H is "largest" of -H
    start_count = op.num_matvecs
    budget = max_matvecs - (k if k > 1 else 0)  # reserve the Rayleigh-Ritz products
    V = torch.zeros(n, k, dtype=dtype, device=device)
    found = 0
    shift = 0.0  # sigma in the docstring's (H + sigma I), sigma = -mu
    anorm = 0.0
    eps = torch.finfo(dtype).eps
    message = ""
    bar = tqdm(total=max_matvecs, desc="power", disable=not progress, leave=False)

    def run(sigma: float) -> tuple[torch.Tensor, float, float]:
        """Power iteration on P (sign H + sigma I) P: (v, theta of sign H, residual).

        Raises ``_Budget(v, theta, res)`` with the last multiplied iterate when the
        matvec budget is spent.
        """
        nonlocal anorm
        W = V[:, :found]
        v = gaussian(n, 1, gen, dtype, device)[:, 0]
        v = v - W @ (W.T @ v)
        v = v / torch.linalg.vector_norm(v)
        last = None
        while True:
            if op.num_matvecs - start_count >= budget:
                raise _Budget(last)
            hv = op.matvec(v)
            bar.update(1)
            if sign < 0:
                hv = -hv
            hv = hv - W @ (W.T @ hv)
            theta_t = v @ hv
            res_t = torch.linalg.vector_norm(hv - theta_t * v)
            w = hv + sigma * v
            w = w - W @ (W.T @ w)
            nw_t = torch.linalg.vector_norm(w)
            theta, res, nw = torch.stack([theta_t, res_t, nw_t]).tolist()  # one host sync
            used = op.num_matvecs - start_count
            if not all(math.isfinite(x) for x in (theta, res, nw)):
                raise NonFiniteProductError(
                    f"power iteration {used}: the operator returned a non-finite product "
                    "(NaN or inf); check the model, the loss and the data"
                )
            anorm = max(anorm, abs(theta))
            last = (v, theta, res)
            if callback is not None:
                callback(used, np.array([sign * theta]))
            if res <= residual_limit(theta, anorm, tol):
                return last
            if nw <= 10 * eps * max(anorm, np.finfo(float).tiny):
                # v is (numerically) in the null space of the shifted, deflated operator;
                # another step cannot improve it.
                return last
            v = w / nw_t

    values: list[float] = []
    residuals_run: list[float] = []
    partial = None
    exhausted = False
    try:
        while found < k:
            v, theta, res = run(shift)
            if which != "magnitude" and shift == 0.0 and theta < 0:
                # The dominant remaining eigenvalue is negative: it is not the largest.
                shift = -theta
                v, theta, res = run(shift)
            V[:, found] = v
            values.append(sign * theta)
            residuals_run.append(res)
            found += 1
        message = f"converged after {op.num_matvecs - start_count} matvecs"
    except _Budget as stop:
        exhausted = True
        partial = stop.args[0]
        message = (
            f"stopped at max_matvecs = {max_matvecs} with {found} of {k} eigenpairs "
            f"at tol = {tol:g}"
        )
    finally:
        bar.close()

    values_out = np.full(k, np.nan)
    residuals = np.full(k, np.nan)
    vectors = torch.zeros(n, k, dtype=dtype, device=device)
    if k == 1:
        # No deflation: the residual of the last multiplied iterate is the true one.
        if found == 1:
            vectors[:, 0], values_out[0], residuals[0] = V[:, 0], values[0], residuals_run[0]
        elif partial is not None:
            v, theta, res = partial
            vectors[:, 0], values_out[0], residuals[0] = v, sign * theta, res
    else:
        # Rayleigh-Ritz on the span of the found (and partially converged) vectors:
        # the best pairs in that span and their true residuals ||H v - lambda v||.
        cols = found
        if partial is not None:
            V[:, found] = partial[0]
            cols += 1
        if cols > 0:
            B = V[:, :cols]
            HB = op.matmat(B)
            M = (B.T @ HB).to("cpu", torch.float64).numpy()
            theta, S = np.linalg.eigh(0.5 * (M + M.T))
            order = wanted_order(theta, which)
            S_t = torch.as_tensor(S[:, order], dtype=dtype, device=device)
            Y, HY = B @ S_t, HB @ S_t
            th = torch.as_tensor(theta[order], dtype=dtype, device=device)
            res_t = torch.linalg.vector_norm(HY - Y * th, dim=0).to("cpu", torch.float64)
            if not bool(torch.isfinite(res_t).all()):
                raise NonFiniteProductError(
                    "power iteration (final Rayleigh-Ritz): the operator returned a "
                    "non-finite product"
                )
            vectors[:, :cols] = Y
            values_out[:cols] = theta[order]
            residuals[:cols] = res_t.numpy()
    limit = residual_limit(values_out, anorm, tol)
    mask = np.where(np.isfinite(residuals), residuals <= limit, False)
    converged = bool(not exhausted and mask.all())
    if not converged:
        if not exhausted:
            message = (
                f"{message}, but {int((~mask).sum())} Rayleigh-Ritz residuals exceed tol"
            )
        warnings.warn(f"eigenvalues (power): {message}", ConvergenceWarning, stacklevel=3)
    return EigenResult(
        values=torch.as_tensor(values_out, dtype=torch.float64),
        vectors=vectors,
        residuals=torch.as_tensor(residuals, dtype=torch.float64),
        converged=converged,
        num_matvecs=op.num_matvecs - start_count,
        converged_mask=torch.as_tensor(mask),
        method="power",
        which=which,
        tol=tol,
        message=message,
        product_error=op.product_error,
    )
