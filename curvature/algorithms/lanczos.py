r"""Block thick-restart Lanczos with full reorthogonalisation: extreme eigenpairs of ``H``.

References: Lanczos (1950); block Lanczos: Golub & Underwood (1977), "The block Lanczos
method for computing eigenvalues", and Saad, *Numerical Methods for Large Eigenvalue
Problems* (2nd ed., 2011), sections 6.6-6.7; thick restart: Wu & Simon (2000); Ritz
residuals: Parlett, *The Symmetric Eigenvalue Problem*, ch. 13.

**Recurrence.** For a symmetric operator ``H`` (``n x n``) and an orthonormal start block
``X`` of ``b`` random Gaussian columns, the method builds an orthonormal basis of the block
Krylov space ``K_s(H, X) = span{X, H X, .., H^{s-1} X}``. Columns of the basis are
*expanded* (their product is known) or *unexpanded* (the newest block ``Q_U``), and

.. math::
    H Q_E = Q_E T + Q_U C,

with ``T = Q_E^T H Q_E`` (block tridiagonal, or an arrowhead after a restart) and the
coupling ``C``. One step multiplies the whole block at once (``op.matmat``), orthogonalises
``W = H Q_U`` against *every* basis column by classical Gram-Schmidt applied twice (matrix
products; "twice is enough", Giraud et al. 2005, which keeps the basis orthonormal to
working precision and rules out the spurious copies -- "ghosts" -- of plain Lanczos, Paige
1971) and factors ``W = Q_W R`` (Householder QR; ``R = U_r \Sigma V^T`` on the host names
the new block ``Q_W U_r`` and its coupling ``\Sigma V^T``). With ``T = S \Theta S^T`` each
Ritz pair ``(\theta_i, Q_E s_i)`` has the *true* residual

.. math:: \|H y_i - \theta_i y_i\| = \|C s_i\|,

read off without another product. ``T``, ``C`` and the small eigenproblem live on the host
in float64; the only host read per step is ``Q_U^T H Q_U``, ``R``, the re-orthogonalisation
factor of the previous block and ``||H Q_U||_F`` (about ``3 b^2`` numbers).

**Thick restart.** When the basis holds ``basis_size`` expanded columns, the ``p`` most
wanted Ritz vectors ``Y = Q_E S_p`` are kept with ``T = \Theta_p`` and coupling ``C S_p``
to the unexpanded block, and the recurrence continues (Wu & Simon 2000 for ``b = 1``).
In a fresh region (below) half the slots beyond the ``k`` wanted go to the region's most
wanted Ritz vectors (else the exact pairs before it take them all and the region starts
over at each restart); a region kept to fewer vectors than the block has columns
certifies only as many copies as it kept. For ``n`` up to twice the default size the
default basis is ``n``: no restart, and a basis spanning the space ends the run.

**Why every copy of a repeated eigenvalue is found.** A single start vector ``q`` has one
component in each eigenspace, so ``K_s(H, q)`` contains one vector of an eigenspace of
dimension ``d`` and a plain Lanczos run can return only one copy of a multiple eigenvalue;
when the other eigenvalues are few, the space becomes invariant after a few steps and the
remaining Ritz values are the wrong eigenvalues with zero residual. With a Gaussian start
block of ``b`` columns, ``P_\lambda X`` (the projection on the eigenspace of ``\lambda``)
has rank ``min(b, d)`` with probability one, so ``K_s(H, X)`` contains ``min(b, d)``
orthonormal eigenvectors of ``\lambda`` and the block method finds that many copies (the
convergence bounds of Saad 1980 for block Lanczos depend on the gap to the ``(b+1)``-th
eigenvalue, not on multiplicities among the first ``b``). Hence: if a converged cluster of
equal wanted Ritz values (equal within their residual limits) has fewer than ``b`` members,
it holds every copy (``min(b, d) < b`` forces ``d = min(b, d)``). A cluster of ``>= b``
members that does not reach the ``k``-th wanted value may hide copies that belong in the
answer; the block then grows (adaptive block size in the spirit of Ye 1996, "An adaptive
block Lanczos algorithm") to ``max(c + 1, 2 b)`` columns (at most ``k``) with fresh random
columns orthogonal to the basis, which get as many steps as the first convergence took
before the run may stop. The block starts at ``b = 2`` (``b = 1``, plain Lanczos, for
``k = 1``, where a multiplicity cannot change the answer): two columns also mean that a
start vector orthogonal to a wanted eigenvector is not enough to miss it.

**Breakdown.** A column of ``W`` that vanishes (singular value of ``R`` at most
``10 eps ||H||_est sqrt(j)``) means that direction of the Krylov space is exhausted; it is
dropped and the block narrows (the space ``K(H, X)`` still holds its ``min(b, d)`` copies).
When the *whole* block vanishes -- or its largest singular value is below a tenth of the
smallest wanted residual limit, so that every Ritz pair passes only because nothing is left
to find from this start -- the Krylov space is invariant and its Ritz pairs are exact, but
eigenvalues of the orthogonal complement (which a start block orthogonal to them cannot
see) may still outrank them. Such an invariance is therefore never taken as convergence: a
fresh random block of ``b`` columns orthogonal to the basis starts a new *region*, ``T``
stays block diagonal across its boundary, and convergence additionally requires the
region's most wanted Ritz pair to pass the residual test (so the complement's extreme
eigenvalue, as seen from a random start, is known and ranked). Only a basis that spans all
``n`` dimensions ends the run on invariance alone. Couplings dropped this way are added to
every later residual, which stays an upper bound of the true one.

**Convergence** is declared when (i) the ``k`` wanted Ritz pairs have true residuals
``<= tol * max(|theta|, 1e-3 ||H||_est)`` (so each returned value is within its residual
of an eigenvalue; residuals are not resolved below the rounding ``eps |theta|`` of a
product), (ii) no cluster of wanted values fills the block (argument above; the block
cannot grow beyond ``basis_size - k`` columns, and a run that would need more stops with
``converged=False`` and says so), (iii) fresh columns added by a growth have had their
steps, and (iv) the run never stops on an invariant subspace of dimension ``< n`` unless
the fresh region started after it is done: its most wanted pair passed the residual test,
or the region became invariant too and its most wanted value ranks below the ``k``-th by
more than its residual. In an invariant space the residuals are as small as they will
get: pairs at the rounding level of the dtype count as found while the search goes on
(fresh regions, block growth; in float32 the pairs of a zero eigenvalue cannot reach
``tol * 1e-3 ||H||``), and a run whose search is complete but whose wanted residuals are
at the rounding level and above ``tol`` ends with ``converged=False`` ("below working
precision") instead of spending the budget. As for any Krylov method, the check is
probabilistic: a start block exactly orthogonal to an eigenvector of a full-rank operator
(probability zero for Gaussian starts) cannot see it, and with a tight ``basis_size`` a
bulk eigenvalue close to the ``k``-th can be passed over like in single-vector Lanczos.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from curvature import checks
from curvature.algorithms.probes import gaussian, make_generator, start_block
from curvature.algorithms.ritz import residual_limit, wanted_order
from curvature.errors import NonFiniteProductError
from curvature.operators import CurvatureOperator
from curvature.results import ConvergenceWarning, EigenResult

__all__ = ["BASIS_NUMBERS", "block_size", "default_basis_size", "lanczos"]

BASIS_NUMBERS = 2**29
"""Default bound on the numbers the Krylov basis stores (2 GiB in float32)."""


def default_basis_size(k: int, n: int) -> int:
    """Expanded basis columns kept before a thick restart when none are asked for:
    ``min(n, max(2k + 10, k + 30))``, lowered (not below ``k + 10``) to keep the basis
    under :data:`BASIS_NUMBERS` numbers; ``n`` itself when ``n`` is at most twice that
    (no restart; a basis reaching ``n`` columns makes every Ritz pair exact)."""
    size = min(n, max(2 * k + 10, k + 30), max(k + 10, BASIS_NUMBERS // n))
    if n <= 2 * size and n <= BASIS_NUMBERS // n:
        return n
    return size


def block_size(k: int, n: int, basis_size: int, max_matvecs: int) -> int:
    """Largest block (columns per Lanczos step): ``k``, capped by ``n``, the budget and
    ``basis_size - k`` (room for ``k`` kept Ritz vectors and one block)."""
    b = min(k, n, max_matvecs)
    if basis_size < n:
        b = min(b, basis_size - k)
    return max(1, b)


def _orthogonalise(Q: torch.Tensor, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Classical Gram-Schmidt twice: ``W - Q Q^T W`` and the coefficients ``Q^T W``."""
    h = Q.T @ W
    W = W - Q @ h
    h2 = Q.T @ W
    W = W - Q @ h2
    return W, h + h2


def _random_orthogonal(Q: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """``Tensor[n, count]`` of orthonormal random columns orthogonal to ``Q: Tensor[n, j]``."""
    Z = gaussian(Q.shape[0], count, gen, Q.dtype, Q.device)
    Z, _ = _orthogonalise(Q, Z)
    return torch.linalg.qr(Z).Q


def _ritz(T: np.ndarray, region: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of ``T``; block diagonal across ``region`` (> 0), solved block by block.

    Solving the blocks separately keeps every Ritz vector inside one region even when
    the two regions share an eigenvalue.
    """
    if region <= 0 or region >= T.shape[0]:
        return np.linalg.eigh(T)
    t0, s0 = np.linalg.eigh(T[:region, :region])
    t1, s1 = np.linalg.eigh(T[region:, region:])
    S = np.zeros_like(T)
    S[:region, : len(t0)] = s0
    S[region:, len(t0) :] = s1
    return np.concatenate([t0, t1]), S


def lanczos(
    op: CurvatureOperator,
    k: int,
    *,
    which: str = "largest",
    tol: float = 1e-4,
    max_matvecs: int = 1000,
    basis_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: Callable[[int, np.ndarray], None] | None = None,
    v0: torch.Tensor | None = None,
) -> EigenResult:
    """``k`` extreme eigenpairs of ``op`` by block thick-restart Lanczos (module docstring).

    The arguments are those of :func:`curvature.eigenvalues`, which checks them and adds
    the finite-difference gate; called directly, they must already be valid
    (``1 <= k <= n``, ``which`` in :data:`~curvature.algorithms.ritz.WHICH`,
    ``0 < tol < 1``, ``k <= max_matvecs``, ``k < basis_size <= n`` or ``basis_size = n``;
    ``basis_size=None`` is :func:`default_basis_size`). ``basis_size`` counts expanded
    columns; the basis holds ``basis_size + b``. ``generator`` draws the start blocks
    (fresh entropy when ``None``). ``callback(num_matvecs, ritz_values)`` is called after
    every block product with the ``k`` currently wanted Ritz values (most wanted first).
    ``v0``: a guess of the wanted eigenvectors (``Tensor[n]`` or ``Tensor[n, j]``, nonzero
    columns), added to the first start columns (:func:`~curvature.algorithms.probes.start_block`).

    Returns an :class:`~curvature.EigenResult` (``method="lanczos"``); a run that stops
    early warns with a :class:`~curvature.ConvergenceWarning` and says why in ``message``.

    Raises:
        TypeError: ``op`` is not a ``CurvatureOperator``.
        NonFiniteProductError: a product holds NaN/inf (the message names the step).

    Example: a double top eigenvalue; both copies come back.

    >>> import torch, curvature as cv
    >>> eigs = torch.cat([torch.tensor([5.0, 5.0, 3.0]), torch.linspace(-1.0, 1.0, 37)])
    >>> op = cv.DenseOperator(torch.diag(eigs).double())
    >>> res = lanczos(op, 3, tol=1e-8, generator=torch.Generator().manual_seed(0))
    >>> res.converged, [round(v, 6) for v in res.values.tolist()]
    (True, [5.0, 5.0, 3.0])
    """
    n = checks.operator(op, "lanczos")
    if basis_size is None:
        basis_size = default_basis_size(k, n)
    gen = make_generator(None, op.device) if generator is None else generator
    # a run cannot expand more columns than it has products: a larger basis would only
    # hold memory (Q is row-major, so writing one column touches all of Q's pages)
    m = min(basis_size, max_matvecs + k)
    b_max = block_size(k, n, m, max_matvecs)
    b = min(b_max, 1 if k == 1 else 2)
    dtype, device = op.dtype, op.device
    start_count = op.num_matvecs
    eps = torch.finfo(dtype).eps
    tiny = np.finfo(float).tiny

    Q = torch.empty(n, m + b_max, dtype=dtype, device=device)
    T = np.zeros((m + b_max, m + b_max))
    C = np.zeros((b_max, m + b_max))  # coupling of the unexpanded block to expanded columns
    Q[:, :b] = torch.linalg.qr(start_block(n, b, gen, dtype, device, v0)).Q
    e, u = 0, b  # expanded columns Q[:, :e], unexpanded block Q[:, e:e+u]
    G = torch.zeros(0, 0, dtype=dtype, device=device)  # see U_next below
    region = 0  # first column of the region started after the last invariant subspace
    region_kept = n  # fewest Ritz vectors of the current region a thick restart kept
    anorm = 0.0  # running estimate of ||H||: the largest |Ritz value| seen
    dropped = 0.0  # norm of the couplings dropped at (near-)invariant directions
    steps = restarts = breakdowns = 0
    settle = 0  # steps the run took until the wanted pairs first passed the residual test
    hold_until = 0  # after the block grew: no convergence before this step
    grow = 0  # fresh columns to add to the next block (the block grew)
    converged = exhausted = False
    message = ""
    bar = tqdm(total=max_matvecs, desc="lanczos", disable=not progress, leave=False)
    try:
        while True:
            P = op.matmat(Q[:, e : e + u])
            bar.update(u)
            steps += 1
            W, h = _orthogonalise(Q[:, : e + u], P)
            Qw, R = torch.linalg.qr(W)
            scale = torch.linalg.matrix_norm(P).reshape(1)  # ||H Q_U||_F: rounding scale of W
            host = torch.cat([h[e : e + u].reshape(-1), R.reshape(-1), G.reshape(-1), scale])
            host = host.to("cpu", torch.float64).numpy()  # the one host read per step
            used = op.num_matvecs - start_count
            if not np.isfinite(host).all():
                raise NonFiniteProductError(
                    f"Lanczos iteration {steps} (products {used - u + 1}..{used}): the "
                    "operator returned a non-finite product (NaN or inf); check the model, "
                    "the loss and the data"
                )
            f = e + u
            D = host[: u * u].reshape(u, u)
            g = G.shape[0]
            C[:g, :e] = host[2 * u * u : 2 * u * u + g * g].reshape(g, g) @ C[:g, :e]
            T[e:f, e:f] = 0.5 * (D + D.T)
            T[e:f, :e] = C[:u, :e]
            T[:e, e:f] = C[:u, :e].T
            theta, S = _ritz(T[:f, :f], region)
            anorm = max(anorm, float(np.abs(theta).max()))
            Ur, sv, Vt = np.linalg.svd(host[u * u : 2 * u * u].reshape(u, u))
            B = sv[:, None] * Vt  # W = (Q_W U_r) B
            residuals = np.linalg.norm(B @ S[e:f, :], axis=0)
            # Not resolved below the rounding of a product (eps |theta|) nor below the
            # couplings dropped at earlier invariant directions.
            residuals = np.sqrt(residuals**2 + (eps * theta) ** 2 + dropped**2)
            # A direction of W at the rounding level of the products is no direction: W's
            # columns are orthogonal to the basis only to eps ||H Q_U||.
            rounding = 10 * eps * max(anorm, host[-1], tiny) * math.sqrt(f)
            live = sv > rounding
            full_space = f == n
            order = wanted_order(theta, which)
            top = order[:k]
            if callback is not None:
                callback(used, theta[top])
            limit = residual_limit(theta[top], anorm, tol)
            if len(top) == k and sv.max() <= 0.1 * limit.min():
                # The whole Krylov space is invariant to well within the tolerance: every
                # Ritz pair in it is converged because nothing is left to find from this
                # start, not because the wanted ones were found. Treat it as invariant.
                live[:] = False
            invariant = not live.any()
            if (~live & (sv > rounding)).any():  # dropped above the rounding level
                dropped = math.hypot(dropped, float(sv[~live].max()))
            res_ok = len(top) == k and bool(np.all(residuals[top] <= limit))
            # Invariant: pairs at the rounding level count as found for the search.
            floor = rounding if invariant else 0.0
            passed = len(top) == k and bool(np.all(residuals[top] <= np.maximum(limit, floor)))
            if passed and not full_space:
                passed = (region == 0 and not invariant) or (
                    region > 0
                    and _region_done(theta, residuals, S, region, which, theta[top[-1]], invariant,
                                     tol, anorm, floor)
                )
            # A fresh region holds min(b, d) copies only as far as the restarts kept them.
            b_cert = min(b, region_kept) if region > 0 else b
            copies = _saturated(theta[top], limit, b) if passed and not full_space else 0
            truncated = 0
            if passed and not full_space and not copies and b_cert < b:
                mine = np.abs(S[region:, top]).sum(0) > 0
                copies = truncated = _saturated(theta[top], limit, b_cert, mine)
            if passed and not res_ok and copies == 0 and (full_space or steps >= hold_until):
                message = (
                    f"the wanted Ritz pairs are exact to the rounding level {rounding:.2g} of "
                    f"{str(dtype)[6:]} products after {used} matvecs, but tol = {tol:g} asks "
                    "for smaller residuals (below working precision; raise tol or use float64)"
                )
                break
            if passed and copies == 0 and (full_space or steps >= hold_until):
                converged = True
                message = (
                    f"converged after {used} matvecs ({restarts} restarts, block size {b}"
                    + (f", {breakdowns} invariant subspaces probed" if breakdowns else "")
                    + ")"
                )
                break
            if passed:
                settle = settle or steps
            if copies:
                if truncated:
                    message = (
                        f"a cluster of {copies} equal wanted values reaches the {b_cert} Ritz "
                        "vector(s) of the fresh region (started after an invariant subspace) "
                        "that the thick restarts keep, so further copies of that eigenvalue may "
                        "be missing from the wanted set; a larger basis_size lets the region keep "
                        f"its block of {b} (used {used} matvecs)"
                    )
                    break
                if b >= b_max:
                    message = (
                        f"a cluster of {copies} equal wanted values fills the block of {b} "
                        "column(s), so further copies of that eigenvalue may be missing from "
                        f"the wanted set; basis_size >= k + {copies + 1} lets the block grow "
                        f"to check (used {used} matvecs)"
                    )
                    break
                # A wanted eigenvalue may have more copies than the block can see: grow the
                # block with fresh random columns and give them as many steps as the first
                # convergence took.
                b_new = min(b_max, max(copies + 1, 2 * b))
                grow, b = b_new - b, b_new
                hold_until = steps + settle
            if full_space:
                # Every eigenvalue is a Ritz value here; missing tol means it is below
                # working precision.
                message = (
                    f"Krylov space spans all n = {n} dimensions after {used} matvecs but the "
                    f"residuals did not reach tol = {tol:g} (below working precision?)"
                )
                break
            # The next block: live directions of W (vanished ones are dropped: that part of
            # the Krylov space is exhausted), then fresh random vectors when the block grew,
            # or a whole fresh block (a new region) when the space is invariant.
            # the vanished ones (coupling 0), as far as the complement has room.
            n_live = int(live.sum())
            fresh = min(b if invariant else grow, n - f - n_live)
            grow = 0
            if invariant:
                breakdowns += 1
                region = f  # T stays block diagonal across f: the fresh block is a new region
                region_kept = n
            if used + n_live + fresh > max_matvecs:
                exhausted = True
                pending = region > 0 and not invariant
                message = (
                    f"stopped at max_matvecs = {max_matvecs} before all {k} Ritz pairs "
                    f"reached tol = {tol:g} (largest residual / allowed residual = "
                    f"{_worst_ratio(theta, residuals, top, k, anorm, tol):.3g})"
                    + (
                        "; the fresh block started after an invariant subspace had not "
                        "converged"
                        if pending
                        else ""
                    )
                )
                break
            U_next = Qw @ torch.as_tensor(Ur[:, live], dtype=dtype, device=device)
            if n_live:
                # Combinations W v / sigma amplify W's rounding-level components along the
                # basis by ||W|| / sigma; one more pass restores orthogonality and changes the
                # recurrence only at the rounding level (eps ||W||). U_next = U' G with G
                # (upper triangular) read with the next step's numbers: the coupling becomes
                # G B.
                U_next, G = torch.linalg.qr(_orthogonalise(Q[:, :f], U_next)[0])
            else:
                G = G[:0, :0]
            if fresh > 0:
                Z = _random_orthogonal(torch.cat([Q[:, :f], U_next], dim=1), fresh, gen)
                U_next = torch.cat([U_next, Z], dim=1)
            u_next = n_live + fresh
            C_next = np.zeros((u_next, f))
            C_next[:n_live, e:f] = B[live]
            if f + u_next > m:
                # Thick restart: keep the p most wanted Ritz vectors (those of the old region
                # first, so the region boundary survives).
                p = min(m - u_next, k + (m - k) // 2)
                kept = order[:p]
                if region > 0:
                    # Slots beyond the k wanted for the fresh region (module docstring).
                    fresh_side = np.abs(S[region:, order]).sum(0) > 0
                    share = np.flatnonzero(fresh_side & (np.arange(len(order)) >= k))
                    share = share[: max((p - k + 1) // 2, min(b, p - k))]
                    rest = np.setdiff1d(np.arange(len(order)), share, assume_unique=True)
                    kept = order[np.sort(np.concatenate([share, rest[: p - len(share)]]))]
                    old = np.abs(S[:region, kept]).sum(0) > 0
                    kept = np.concatenate([kept[old], kept[~old]])
                    region = int(old.sum())
                    if not invariant:  # the region has Ritz vectors of its own to keep
                        region_kept = min(region_kept, len(kept) - region)
                S_kept = torch.as_tensor(S[:, kept], dtype=dtype, device=device)
                Q[:, :p] = Q[:, :f] @ S_kept
                Q[:, p : p + u_next] = U_next
                T[:] = 0.0
                T[np.arange(p), np.arange(p)] = theta[kept]
                C[:u_next, :p] = C_next @ S[:, kept]
                e = p
                restarts += 1
            else:
                Q[:, f : f + u_next] = U_next
                C[:u_next, :f] = C_next
                e = f
            u = u_next
    finally:
        bar.close()

    if len(top) < k:  # only possible when stopping early with a tiny budget
        top = np.concatenate([top, np.full(k - len(top), -1)])
    valid = top >= 0
    idx = top[valid]
    S_top = torch.as_tensor(S[:, idx], dtype=dtype, device=device)
    vectors = torch.zeros(n, k, dtype=dtype, device=device)
    vectors[:, valid] = Q[:, :f] @ S_top
    values = np.full(k, np.nan)
    values[valid] = theta[idx]
    res = np.full(k, np.nan)
    res[valid] = residuals[idx]
    limit = residual_limit(values, anorm, tol)
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
        product_error=op.product_error,
    )


def _saturated(theta: np.ndarray, limit: np.ndarray, b: int, mine: np.ndarray | None = None) -> int:
    """Size of the largest cluster of ``>= b`` equal wanted values that excludes the last one.

    ``theta`` holds the ``k`` wanted Ritz values (most wanted first); two are copies when
    they differ by at most the sum of their residual limits. A block of ``b`` columns sees
    at most ``b`` copies of an eigenvalue, so such a cluster may hide further copies that
    would displace the last wanted values. 0 when there is none. ``mine`` (bool mask):
    count only these members (the current region's), report the whole cluster.
    """
    close = np.abs(theta[:, None] - theta[None, :]) <= limit[:, None] + limit[None, :]
    counts = close.sum(1)
    full = ((counts if mine is None else close[:, mine].sum(1)) >= b) & ~close[:, -1]
    return int(counts[full].max()) if full.any() else 0


def _region_done(theta, residuals, S, region, which, kth, invariant, tol, anorm, floor) -> bool:
    """The region started after the last invariant subspace holds nothing beyond the k-th.

    Its most wanted Ritz pair (the columns of ``S`` supported on rows ``>= region``) has
    passed the residual test, or -- the region's own Krylov space being invariant too, so
    all its Ritz values are eigenvalues to within their residuals -- it ranks below the
    ``k``-th wanted value by more than its residual. An empty region (its fresh block not
    yet multiplied) is not done.
    """
    inside = np.flatnonzero(np.abs(S[region:, :]).sum(0) > 0)
    if inside.size == 0:
        return False
    best = inside[wanted_order(theta[inside], which)[0]]
    if residuals[best] <= max(residual_limit(theta[best], anorm, tol), floor):
        return True
    if not invariant:
        return False
    t, r = theta[best], residuals[best]
    if which == "largest":
        return bool(t + r < kth)
    if which == "smallest":
        return bool(t - r > kth)
    return bool(abs(t) + r < abs(kth))


def _worst_ratio(theta, residuals, top, k, anorm, tol) -> float:
    if len(top) < k:
        return float("inf")
    limit = residual_limit(theta[top], anorm, tol)
    return float(np.max(residuals[top] / np.maximum(limit, np.finfo(float).tiny)))
