r"""Thick-restart Lanczos with full reorthogonalisation (Lanczos 1950; Wu & Simon 2000).

For a symmetric operator ``H`` (``n x n``) and a unit start vector ``q_1`` the Lanczos
recurrence builds an orthonormal basis ``Q_j = [q_1 .. q_j]`` of the Krylov space
``K_j = span{q_1, H q_1, .., H^{j-1} q_1}`` with

.. math::
    H Q_j = Q_j T_j + \beta_j q_{j+1} e_j^T,

``T_j`` symmetric tridiagonal (``alpha_i`` on the diagonal, ``beta_i`` beside it).
With ``T_j = S \Theta S^T`` the Ritz pairs ``(theta_i, y_i = Q_j s_i)`` satisfy
``||H y_i - theta_i y_i|| = beta_j |e_j^T s_i|`` exactly, which gives the true
residual of every Ritz pair without another product (Parlett, *The Symmetric
Eigenvalue Problem*, eq. 13.1.5). Extreme eigenvalues converge after
``O(sqrt(kappa))`` products where power iteration needs ``O(kappa)``
(Kaniel-Paige-Saad bounds).

Finite precision destroys the orthogonality of ``Q_j`` once a Ritz value converges,
and the plain recurrence then produces spurious copies ("ghosts") of converged
eigenvalues (Paige 1971). Here every new vector is orthogonalised against the whole
basis by classical Gram-Schmidt applied twice ("twice is enough", Giraud et al.
2005): two pairs of matrix products ``h = Q^T w``, ``w -= Q h`` on the basis held as
one preallocated ``Tensor[n, m+1]``, which keeps ``Q`` orthonormal to working
precision and rules ghosts out.

The basis is bounded by ``m`` columns. When it is full, the thick restart keeps
the ``p`` most wanted Ritz vectors ``Y = Q_m S_p`` and the residual direction
``q_{m+1}``; the projected matrix becomes the arrowhead

.. math::
    T = \begin{pmatrix} \Theta_p & s \\ s^T & \alpha \end{pmatrix}, \qquad
    s = \beta_m S_p^T e_m,

and the recurrence continues from ``q_{m+1}`` (Wu & Simon 2000, eqs. 2.3-2.6).
If ``beta_j`` vanishes, ``K_j`` is invariant: its Ritz pairs are exact and the run
continues with a random unit vector orthogonal to the basis (coupling 0), so that
eigenvalues outside the Krylov space of the start vector (e.g. further copies of a
multiple eigenvalue) can still be found.

Scalars (``alpha_j``, ``beta_j``) are read back to the host once per iteration; the
small projected eigenproblem is solved there in float64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from curvature._random import gaussian
from curvature.operators import CurvatureOperator
from curvature.results import ConvergenceWarning, EigenResult

__all__ = ["lanczos", "wanted_order", "RELATIVE_FLOOR"]

# Eigenvalues smaller than this fraction of ||H|| are resolved to an absolute
# residual of tol * RELATIVE_FLOOR * ||H|| (a purely relative test cannot be met
# near zero in floating point).
RELATIVE_FLOOR = 1e-3


def wanted_order(values: np.ndarray, which: str) -> np.ndarray:
    """Indices sorting ``values`` from most to least wanted for ``which``."""
    if which == "largest":
        return np.argsort(-values, kind="stable")
    if which == "smallest":
        return np.argsort(values, kind="stable")
    return np.argsort(-np.abs(values), kind="stable")


def _orthogonalise(Q: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Classical Gram-Schmidt twice: ``w - Q Q^T w`` and the coefficients ``Q^T w``."""
    h = Q.T @ w
    w = w - Q @ h
    h2 = Q.T @ w
    w = w - Q @ h2
    return w, h + h2


def _random_orthogonal(Q: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random unit vector orthogonal to the columns of ``Q: Tensor[n, j]``."""
    n = Q.shape[0]
    r = gaussian(n, 1, gen, Q.dtype, Q.device)[:, 0]
    r, _ = _orthogonalise(Q, r)
    return r / torch.linalg.vector_norm(r)


def lanczos(
    op: CurvatureOperator,
    k: int,
    which: str,
    tol: float,
    max_matvecs: int,
    basis_size: int,
    gen: torch.Generator,
    progress: bool = False,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> EigenResult:
    """``k`` extreme eigenpairs of ``op`` by thick-restart Lanczos (arguments checked by the caller).

    ``callback(num_matvecs, ritz_values)`` is called after every product with the
    ``k`` currently wanted Ritz values (most wanted first); used by benchmarks.
    """
    n = op.shape[0]
    m = basis_size
    dtype, device = op.dtype, op.device
    keep = min(m - 1, k + (m - k) // 2)  # Ritz vectors kept at a restart
    start_count = op.num_matvecs

    Q = torch.empty(n, m + 1, dtype=dtype, device=device)
    T = np.zeros((m + 1, m + 1))
    q = gaussian(n, 1, gen, dtype, device)[:, 0]
    Q[:, 0] = q / torch.linalg.vector_norm(q)

    j = 0  # column of Q being expanded
    block = 0  # first column of the Krylov block started after the last breakdown
    anorm = 0.0  # running estimate of ||H||: the largest |Ritz value| seen
    eps = torch.finfo(dtype).eps
    restarts = 0
    converged = False
    exhausted = False
    message = ""
    bar = tqdm(total=max_matvecs, desc="lanczos", disable=not progress, leave=False)
    try:
        while True:
            w = op.matvec(Q[:, j])
            bar.update(1)
            w, h = _orthogonalise(Q[:, : j + 1], w)
            beta_t = torch.linalg.vector_norm(w)
            alpha, beta = torch.stack([h[j], beta_t]).tolist()  # the one host sync
            used = op.num_matvecs - start_count
            if not (math.isfinite(alpha) and math.isfinite(beta)):
                raise FloatingPointError(
                    f"Lanczos iteration {used}: the operator returned a non-finite "
                    "product (NaN or inf); check the model, the loss and the data"
                )
            T[j, j] = alpha
            theta, S = np.linalg.eigh(T[: j + 1, : j + 1])
            anorm = max(anorm, float(np.abs(theta).max()))
            full_space = j + 1 == n
            invariant = beta <= 10 * eps * max(anorm, np.finfo(float).tiny) * math.sqrt(j + 1)
            # True residuals; when K_j is (numerically) invariant they are at roundoff level.
            residuals = beta * np.abs(S[j, :])
            order = wanted_order(theta, which)
            top = order[:k]
            if callback is not None:
                callback(used, theta[top])
            if len(top) == k:
                limit = tol * np.maximum(np.abs(theta[top]), RELATIVE_FLOOR * anorm)
                if np.all(residuals[top] <= limit) and (
                    block == 0
                    or full_space  # every eigenvalue is a Ritz value: the ranking is final
                    or _outranks_block(theta[top], T[block : j + 1, block : j + 1], which, limit)
                ):
                    converged = True
                    message = f"converged after {used} matvecs ({restarts} restarts)"
                    break
            if full_space:
                # Cannot happen before convergence in exact arithmetic (every Ritz pair of
                # T_n is exact); reaching it means the tolerance is below working precision.
                message = (
                    f"Krylov space spans all n = {n} dimensions after {used} matvecs but the "
                    f"residuals did not reach tol = {tol:g} (below working precision?)"
                )
                break
            if used >= max_matvecs:
                exhausted = True
                message = (
                    f"stopped at max_matvecs = {max_matvecs} before all {k} Ritz pairs "
                    f"reached tol = {tol:g} (largest residual / allowed residual = "
                    f"{_worst_ratio(theta, residuals, top, k, anorm, tol):.3g})"
                )
                break
            if invariant:
                T[j + 1, j] = T[j, j + 1] = 0.0
                Q[:, j + 1] = _random_orthogonal(Q[:, : j + 1], gen)
                block = j + 1
            else:
                T[j + 1, j] = T[j, j + 1] = beta
                Q[:, j + 1] = w / beta_t
            if j + 1 < m:
                j += 1
                continue
            # Thick restart: keep the `keep` most wanted Ritz vectors and q_{m+1}.
            kept = order[:keep]
            coupling = T[m, m - 1] * S[m - 1, kept]
            S_kept = torch.as_tensor(S[:, kept], dtype=dtype, device=device)
            Y = Q[:, :m] @ S_kept
            Q[:, :keep] = Y
            Q[:, keep] = Q[:, m]
            T[:] = 0.0
            T[np.arange(keep), np.arange(keep)] = theta[kept]
            T[keep, :keep] = T[:keep, keep] = coupling
            j = keep
            block = 0
            restarts += 1
    finally:
        bar.close()

    if len(top) < k:  # only possible when stopping early with a tiny budget
        top = np.concatenate([top, np.full(k - len(top), -1)])
    valid = top >= 0
    idx = top[valid]
    S_top = torch.as_tensor(S[:, idx], dtype=dtype, device=device)
    vectors = torch.zeros(n, k, dtype=dtype, device=device)
    vectors[:, valid] = Q[:, : j + 1] @ S_top
    values = np.full(k, np.nan)
    values[valid] = theta[idx]
    res = np.full(k, np.nan)
    res[valid] = residuals[idx]
    limit = tol * np.maximum(np.abs(values), RELATIVE_FLOOR * anorm)
    mask = np.where(valid, res <= limit, False)
    if exhausted or not converged:
        warnings.warn(f"eigenvalues (lanczos): {message}", ConvergenceWarning, stacklevel=3)
    return EigenResult(
        values=torch.as_tensor(values, dtype=torch.float64),
        vectors=vectors,
        residuals=torch.as_tensor(res, dtype=torch.float64),
        converged=bool(converged and mask.all()),
        num_matvecs=op.num_matvecs - start_count,
        converged_mask=torch.as_tensor(mask),
        method="lanczos",
        which=which,
        tol=tol,
        message=message,
    )


def _outranks_block(wanted: np.ndarray, T_block: np.ndarray, which: str, slack: np.ndarray) -> bool:
    """After a breakdown, the unexplored complement is probed by the newest Krylov block.

    The wanted values are only final if none ranks below the block's most wanted Ritz
    value (else the complement may hold more eigenvalues that belong in the top k).
    """
    theta = np.linalg.eigvalsh(T_block)
    best = theta[wanted_order(theta, which)[0]]
    if which == "largest":
        return bool(np.all(wanted >= best - slack))
    if which == "smallest":
        return bool(np.all(wanted <= best + slack))
    return bool(np.all(np.abs(wanted) >= abs(best) - slack))


def _worst_ratio(theta, residuals, top, k, anorm, tol) -> float:
    if len(top) < k:
        return float("inf")
    limit = tol * np.maximum(np.abs(theta[top]), RELATIVE_FLOOR * anorm)
    return float(np.max(residuals[top] / np.maximum(limit, np.finfo(float).tiny)))
