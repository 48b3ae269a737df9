r"""Spectral density by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani et al. 2019).

The spectral density of a symmetric ``H`` with eigenpairs ``(lambda_i, u_i)`` is
``phi(t) = (1/n) sum_i delta(t - lambda_i)``. For a probe ``v = z / sqrt(n)`` with
Rademacher ``z``, ``E[v^T f(H) v] = (1/n) tr f(H) = int f dphi``, and

.. math::
    v^T f(H) v = \sum_i (u_i^T v)^2 f(\lambda_i)
    \approx \sum_{l=1}^{m} \tau_l^2 f(\theta_l),

the ``m``-point Gauss quadrature of the measure ``sum_i (u_i^T v)^2 delta_{lambda_i}``:
its nodes ``theta_l`` are the eigenvalues of the Lanczos tridiagonal ``T_m``
started at ``v`` and its weights ``tau_l^2`` the squared first components of the
eigenvectors of ``T_m`` (Golub & Meurant 2010, Thm 6.2; exact for polynomials of
degree ``< 2m``). Averaging over probes gives ``phi ~ (1/P) sum_p sum_l
tau_{pl}^2 delta_{theta_{pl}}``; convolving with a Gaussian of width ``sigma``
gives a smooth density that integrates to 1 (Ghorbani et al. 2019, eq. 4).

Each probe runs its own Lanczos recurrence with full reorthogonalisation (classical
Gram-Schmidt twice) against its own basis; the probes of a block advance together
through one :meth:`CurvatureOperator.matmat` per step (batched matrix products for
the reorthogonalisation, one host read of the ``alpha``/``beta`` scalars per step).
The tridiagonal eigenproblems are solved on the host in float64. If a probe's Krylov
space becomes invariant (``beta = 0``) its quadrature is already exact; it continues
with a random orthogonal vector and coupling 0, which adds nodes of weight 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor
from tqdm.auto import tqdm

from curvature._random import gaussian, make_generator, rademacher
from curvature.eigen import _check_operator, _positive_int
from curvature.errors import NonFiniteProductError
from curvature.operators import CurvatureOperator

__all__ = ["spectral_density", "SpectralDensity"]


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
    n = _check_operator(op, "spectral_density")
    m = _positive_int(num_steps, "num_steps")
    p = _positive_int(num_probes, "num_probes")
    if not 1 <= m <= n:
        raise ValueError(f"num_steps must satisfy 1 <= num_steps <= n = {n}, got {m}")
    if p < 1:
        raise ValueError(f"num_probes must be >= 1, got {p}")
    if probe_block is None:
        probe_block = max(1, min(p, (1 << 28) // ((m + 2) * n)))
    probe_block = _positive_int(probe_block, "probe_block")
    if probe_block < 1:
        raise ValueError(f"probe_block must be >= 1, got {probe_block}")
    gen = make_generator(seed, op.device)
    start_count = op.num_matvecs
    nodes = np.empty((p, m))
    weights = np.empty((p, m))
    with tqdm(total=p * m, desc="spectral density", disable=not progress, leave=False) as bar:
        for first in range(0, p, probe_block):
            b = min(probe_block, p - first)
            alpha, beta = _block_lanczos_tridiagonals(op, m, b, gen, bar, first)
            for i in range(b):
                theta, S = eigh_tridiagonal(alpha[i], beta[i])
                nodes[first + i] = theta
                weights[first + i] = S[0, :] ** 2
    return SpectralDensity(
        nodes=torch.as_tensor(nodes),
        weights=torch.as_tensor(weights),
        num_matvecs=op.num_matvecs - start_count,
        dim=n,
        product_error=op.product_error,
    )


def _block_lanczos_tridiagonals(
    op: CurvatureOperator, m: int, b: int, gen: torch.Generator, bar: tqdm, first: int
) -> tuple[np.ndarray, np.ndarray]:
    """``m`` Lanczos steps for ``b`` independent Rademacher probes advanced together.

    Returns ``alpha: [b, m]`` and ``beta: [b, m - 1]`` (float64, host).
    """
    n = op.shape[0]
    dtype, device = op.dtype, op.device
    eps = torch.finfo(dtype).eps
    Q = torch.empty(b, m, n, dtype=dtype, device=device)  # row j of probe i: q_j of probe i
    v = rademacher(n, b, gen, dtype, device).T / math.sqrt(n)  # [b, n], unit rows
    alpha = np.zeros((b, m))
    beta = np.zeros((b, max(m - 1, 0)))
    anorm = np.zeros(b)
    for j in range(m):
        Q[:, j] = v
        w = op.matmat(v.T.contiguous()).T  # [b, n]
        bar.update(b)
        Qj = Q[:, : j + 1]  # [b, j+1, n]; both products below read it in its own layout
        h = torch.bmm(Qj, w.unsqueeze(2))  # [b, j+1, 1]
        w = w - torch.bmm(h.transpose(1, 2), Qj).squeeze(1)
        h2 = torch.bmm(Qj, w.unsqueeze(2))
        w = w - torch.bmm(h2.transpose(1, 2), Qj).squeeze(1)
        a_t = (h + h2)[:, j, 0]
        b_t = torch.linalg.vector_norm(w, dim=1)
        scalars = torch.stack([a_t, b_t]).to("cpu", torch.float64).numpy()  # one host sync
        if not np.isfinite(scalars).all():
            bad = int(np.nonzero(~np.isfinite(scalars).all(0))[0][0])
            raise NonFiniteProductError(
                f"spectral_density: Lanczos step {j + 1} of probe {first + bad}: the operator "
                "returned a non-finite product (NaN or inf); check the model, the loss and the data"
            )
        alpha[:, j] = scalars[0]
        if j == m - 1:
            break
        anorm = np.maximum(anorm, np.abs(scalars[0]) + scalars[1])
        bj = scalars[1]
        dead = bj <= 10 * eps * np.maximum(anorm, np.finfo(float).tiny) * math.sqrt(j + 1)
        v = w / b_t.clamp_min(torch.finfo(dtype).tiny)[:, None]
        if dead.any():
            # Invariant Krylov space: restart that probe with a random orthogonal vector.
            idx = torch.as_tensor(np.nonzero(dead)[0], device=device)
            r = gaussian(n, len(idx), gen, dtype, device).T  # [d, n]
            Qd = Q[idx, : j + 1]
            for _ in range(2):
                r = r - torch.bmm(torch.bmm(Qd, r.unsqueeze(2)).transpose(1, 2), Qd).squeeze(1)
            v[idx] = r / torch.linalg.vector_norm(r, dim=1, keepdim=True)
            bj = np.where(dead, 0.0, bj)
        beta[:, j] = bj
    return alpha, beta
