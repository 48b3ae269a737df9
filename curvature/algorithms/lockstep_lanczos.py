"""Many independent Lanczos runs advanced in lockstep, one shared product per step.

Run ``i`` works on its own symmetric ``n_i x n_i`` operator ``A_i`` (for
:func:`curvature.block_spectra`: a diagonal block ``H_bb`` of the Hessian). The runs never
multiply themselves: each step :meth:`LockstepLanczos.vectors` hands out the current
Lanczos vector of every active run, the caller multiplies all of them in one product
(for blocks: one ``matmat`` of the full operator, a column per run that is nonzero only
in its block) and :meth:`LockstepLanczos.advance` takes ``A_i q_j`` back.

Math (single-vector Lanczos, full reorthogonalisation). From a unit start ``q_0``, step
``j`` computes ``w = A q_j``, projects ``w`` against the whole basis
``Q_j = [q_0 .. q_j]`` twice (classical Gram-Schmidt, "twice is enough"), which yields
``alpha_j = q_j^T A q_j`` and ``beta_j = ||w||``; then ``q_{j+1} = w / beta_j`` and

``A Q_j = Q_j T_j + beta_j q_{j+1} e_j^T``,  ``T_j`` tridiagonal (``alpha``, ``beta``).

A Ritz pair ``(theta, Q_j s)`` of ``T_j s = theta s`` has the exact residual
``||A Q_j s - theta Q_j s|| = beta_j |e_j^T s|``, and for symmetric ``A`` some eigenvalue
lies within that residual of ``theta`` (Parlett, *The Symmetric Eigenvalue Problem*,
Thm 4.5.1, Sec. 13.2). A run stops when the ``k`` largest and ``k`` smallest Ritz values
meet ``residual <= tol * max(|theta|, 1e-3 ||A||_est)``
(:func:`curvature.algorithms.ritz.residual_limit`), when ``beta_j`` vanishes (``Q_j``
spans an invariant subspace: its Ritz values are eigenvalues, and from a random start it
holds every distinct eigenvalue with probability 1), or at its step budget (then its
flags say whether it converged). With ``stop_early=False`` runs go to their budget (the
fixed-length runs of stochastic Lanczos quadrature).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from curvature.algorithms.ritz import residual_limit

__all__ = ["LockstepLanczos", "RunResult"]


@dataclass(frozen=True)
class RunResult:
    """The end of one run.

    ``top`` (descending) and ``bottom`` (ascending): up to ``k`` extreme Ritz values of
    ``T`` (float64); ``top_residuals``/``bottom_residuals``: their residuals
    ``beta |e^T s|`` (eigenvalue units); ``top_converged``/``bottom_converged``: every
    one of them within its limit; ``nodes``/``weights``: all Ritz values (ascending) and
    the squared first components of their ``T``-eigenvectors (the Gauss quadrature of
    the start vector); ``steps``: products spent; ``reason``: ``"converged"``,
    ``"invariant"`` (``beta`` vanished), ``"budget"``.
    """

    top: np.ndarray
    bottom: np.ndarray
    top_residuals: np.ndarray
    bottom_residuals: np.ndarray
    top_converged: bool
    bottom_converged: bool
    nodes: np.ndarray
    weights: np.ndarray
    steps: int
    reason: str


class LockstepLanczos:
    """Independent Lanczos runs stepped together.

    Parameters
    ----------
    starts : list of Tensor[n_i]
        Start vector of each run (any nonzero vector; normalised here). Its dtype and
        device are those of the products the caller will return.
    max_steps : list of int
        Step budget of each run, ``1 <= max_steps[i] <= n_i``.
    k : int
        Extreme Ritz values watched at each end.
    tol : float
        Relative residual tolerance.
    stop_early : bool
        Stop a run as soon as its ends converged (``False``: run the full budget).
    """

    def __init__(
        self, starts: list[Tensor], max_steps: list[int], k: int, tol: float,
        stop_early: bool = True,
    ) -> None:
        if len(starts) != len(max_steps):
            raise ValueError("one step budget per start vector")
        self.k, self.tol, self.stop_early = k, tol, stop_early
        self._Q: list[Tensor] = []
        for q, m in zip(starts, max_steps):
            if not 1 <= m <= q.numel():
                raise ValueError(f"max_steps must be in [1, {q.numel()}], got {m}")
            Q = torch.zeros(q.numel(), m, dtype=q.dtype, device=q.device)
            norm = q.norm()
            if not norm > 0:
                raise ValueError("a start vector is zero")
            Q[:, 0] = q / norm
            self._Q.append(Q)
        self._budget = list(max_steps)
        self._alpha: list[list[float]] = [[] for _ in starts]
        self._beta: list[list[float]] = [[] for _ in starts]
        self._results: list[RunResult | None] = [None] * len(starts)

    @property
    def active(self) -> list[int]:
        """Indices of the runs that still want a product."""
        return [i for i, r in enumerate(self._results) if r is None]

    @property
    def done(self) -> bool:
        return not self.active

    def vectors(self) -> list[tuple[int, Tensor]]:
        """``(run, q_j)`` of every active run: the vectors to multiply this step."""
        return [(i, self._Q[i][:, len(self._alpha[i])]) for i in self.active]

    def advance(self, products: dict[int, Tensor]) -> None:
        """Take ``A_i q_j`` (``Tensor[n_i]``) for every active run ``i`` and step it."""
        for i in self.active:
            self._step(i, products[i])

    def result(self, i: int) -> RunResult:
        """The finished run ``i`` (raises while it is active)."""
        r = self._results[i]
        if r is None:
            raise RuntimeError(f"run {i} is still active")
        return r

    def _step(self, i: int, w: Tensor) -> None:
        j = len(self._alpha[i])
        Q = self._Q[i][:, : j + 1]
        w = w.to(Q.dtype).clone()
        h = Q.T @ w
        w -= Q @ h
        h2 = Q.T @ w  # second pass: orthogonal to working precision
        w -= Q @ h2
        self._alpha[i].append(float(h[j] + h2[j]))
        beta = float(w.norm())
        self._beta[i].append(beta)
        alpha = np.array(self._alpha[i])
        theta, S = eigh_tridiagonal(alpha, np.array(self._beta[i][:-1]))
        residuals = beta * np.abs(S[-1, :])
        anorm = float(np.abs(theta).max())
        eps = float(torch.finfo(Q.dtype).eps)
        invariant = beta <= 100 * eps * max(anorm, float(np.abs(alpha).max())) * np.sqrt(j + 1)
        if invariant:
            residuals = np.zeros_like(residuals)
        kk = min(self.k, theta.size)
        limit = residual_limit(theta, anorm, self.tol)
        ok = residuals <= limit
        top_ok, bottom_ok = bool(ok[-kk:].all()), bool(ok[:kk].all())
        reason = ""
        if invariant:
            reason = "invariant"
        elif self.stop_early and top_ok and bottom_ok:
            reason = "converged"
        elif j + 1 >= self._budget[i]:
            reason = "budget"
        if reason:
            self._results[i] = RunResult(
                top=theta[::-1][:kk].copy(), bottom=theta[:kk].copy(),
                top_residuals=residuals[::-1][:kk].copy(),
                bottom_residuals=residuals[:kk].copy(),
                top_converged=top_ok, bottom_converged=bottom_ok,
                nodes=theta, weights=S[0, :] ** 2, steps=j + 1, reason=reason,
            )
            return
        self._Q[i][:, j + 1] = w / beta
