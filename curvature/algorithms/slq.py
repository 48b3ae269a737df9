r"""Stochastic Lanczos quadrature (SLQ): the spectral density of ``H``.

References: Ubaru, Chen & Saad (2017), "Fast estimation of tr(f(A)) via stochastic Lanczos
quadrature", SIAM J. Matrix Anal. Appl. 38(4); Ghorbani, Krishnan & Xiao (2019), "An
investigation into neural net optimization via Hessian eigenvalue density", ICML.

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

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from tqdm.auto import tqdm

from curvature import checks
from curvature.algorithms.probes import gaussian, make_generator, rademacher
from curvature.errors import NonFiniteProductError
from curvature.operators import CurvatureOperator
from curvature.results import SpectralDensity

__all__ = ["slq"]


def slq(
    op: CurvatureOperator,
    num_steps: int,
    num_probes: int,
    *,
    generator: torch.Generator | None = None,
    probe_block: int | None = None,
    progress: bool = False,
) -> SpectralDensity:
    """Gauss quadratures of ``num_probes`` Rademacher probes, ``num_steps`` Lanczos steps each.

    Arguments as in :func:`curvature.spectral_density`, which checks them
    (``1 <= num_steps <= n``); ``generator`` draws the probes (fresh entropy when
    ``None``); ``probe_block=None`` advances as many probes together as fit in ``2**28``
    numbers (at most ``num_probes``).

    Returns a :class:`~curvature.SpectralDensity` (nodes and weights
    ``Tensor[num_probes, num_steps]``).

    Raises:
        TypeError: ``op`` is not a ``CurvatureOperator``.
        NonFiniteProductError: a product holds NaN/inf (the message names the step and
            the probe).

    Example: with ``num_steps = n`` every node is an eigenvalue and every probe's weights
    sum to 1, so the density's mean is ``tr(H) / n``.

    >>> import torch, curvature as cv
    >>> op = cv.DenseOperator(torch.diag(torch.tensor([4.0, 2.0, 1.0, -1.0])).double())
    >>> dens = slq(op, 4, 3, generator=torch.Generator().manual_seed(0))
    >>> sorted({round(v, 6) for v in dens.nodes.reshape(-1).tolist()})
    [-1.0, 1.0, 2.0, 4.0]
    >>> round(dens.trace(), 6)
    6.0
    """
    n = checks.operator(op, "slq")
    m, p = num_steps, num_probes
    if probe_block is None:
        probe_block = max(1, min(p, (1 << 28) // ((m + 2) * n)))
    gen = make_generator(None, op.device) if generator is None else generator
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
