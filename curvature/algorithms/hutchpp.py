r"""Hutch++ trace estimation (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: Optimal
Stochastic Trace Estimation", SOSA; Algorithm 1).

With ``m`` products split as ``s + s + g`` (``s = floor(m/3)``, capped at ``n``;
``g = m - 2s``): sketch ``Q = orth(H S)`` for a Rademacher ``S: [n, s]``, take the
top-subspace part exactly and Hutchinson on the deflated remainder with Rademacher
``G: [n, g]``:

.. math::
    \widehat{\mathrm{tr}} = \mathrm{tr}(Q^T H Q)
        + \frac1g \mathrm{tr}\!\left(G^T (I - QQ^T) H (I - QQ^T) G\right).

Its error is ``O(1/m)`` rather than ``O(1/sqrt(m))`` for PSD ``H`` because the
remainder's Frobenius norm is small once the dominant eigenvalues are removed
(Meyer et al., Theorem 1.1). The first term is exact given ``Q``; the reported
standard error is that of the second: the sample standard deviation of the ``g``
deflated Hutchinson terms over ``sqrt(g)`` -- conditional on the sketch, hence
honest for the realised estimator.

Once ``Q`` is known, ``Q^T H Q`` and the deflated probes are independent, so their
``s + g`` columns go through :meth:`~curvature.CurvatureOperator.matmat` together, in
near-equal blocks of at most ``block_size`` columns. Sums are accumulated in float64.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from curvature import checks
from curvature.algorithms.probes import (
    blocks,
    check_finite,
    default_block_size,
    make_generator,
    mean_stderr,
    rademacher,
    rademacher_products,
)
from curvature.operators import CurvatureOperator
from curvature.results import TraceResult

__all__ = ["hutchpp"]


def hutchpp(
    op: CurvatureOperator,
    num_matvecs: int,
    *,
    generator: torch.Generator | None = None,
    block_size: int | None = None,
    sketch_size: int | None = None,
    progress: bool = False,
) -> TraceResult:
    """Hutch++ estimate of ``tr(H)`` from ``num_matvecs >= 4`` products, with the standard
    error conditional on the sketch (module docstring).

    Arguments as in :func:`curvature.trace` (``method="hutch++"``), which checks them;
    ``generator`` draws the probes (fresh entropy when ``None``); ``block_size=None``
    takes :func:`~curvature.algorithms.probes.default_block_size`. ``sketch_size`` caps
    ``s`` (the sketch stores ``2 s`` vectors, :func:`curvature.memory.sketch_size`); the
    products it frees go to the Hutchinson part (``g = m - 2 s``), which keeps the
    estimate unbiased and its standard error honest.

    Raises:
        TypeError: ``op`` is not a ``CurvatureOperator``.
        NonFiniteProductError: a product holds NaN/inf.

    Example: a rank-3 ``H``; a sketch of 3 columns spans its range, so the trace is exact.

    >>> import torch, curvature as cv
    >>> U = torch.linalg.qr(torch.randn(30, 3, generator=torch.Generator().manual_seed(1),
    ...                                 dtype=torch.float64)).Q
    >>> op = cv.DenseOperator(U @ torch.diag(torch.tensor([9.0, 4.0, 1.0]).double()) @ U.T)
    >>> res = hutchpp(op, 9, generator=torch.Generator().manual_seed(0))
    >>> round(res.estimate, 8), res.method
    (14.0, 'hutch++')
    """
    n = checks.operator(op, "hutchpp")
    gen = make_generator(None, op.device) if generator is None else generator
    block_size = default_block_size(op) if block_size is None else block_size
    start_count = op.num_matvecs
    m = num_matvecs
    s = min(m // 3, n)
    if sketch_size is not None:
        s = min(s, sketch_size)
    g = m - 2 * s
    with tqdm(total=m, desc="trace (hutch++)", disable=not progress, leave=False) as bar:
        # Sketch: Q = orth(H S), S Rademacher [n, s].
        HS = [HSb for _, HSb in rademacher_products(op, s, gen, block_size, bar,
                                                     "trace (hutch++ sketch)")]
        Q, _ = torch.linalg.qr(torch.cat(HS, dim=1), mode="reduced")
        # tr(Q^T H Q) exactly, and Hutchinson on (I - QQ^T) H (I - QQ^T) with Rademacher G.
        exact, samples, start = 0.0, [], 0
        for b in blocks(s + g, block_size):
            nq = max(0, min(b, s - start))
            cols = [Q[:, start : start + nq]]
            if b > nq:
                G = rademacher(n, b - nq, gen, op.dtype, op.device)
                cols.append(G - Q @ (Q.T @ G))
            X = torch.cat(cols, dim=1)
            HX = op.matmat(X)
            check_finite(HX, "trace (hutch++ top subspace and remainder)", start)
            forms = (X.double() * HX.double()).sum(0)
            exact += float(forms[:nq].sum())
            samples.append(forms[nq:].cpu())
            bar.update(b)
            start += b
    rest, stderr = mean_stderr(torch.cat(samples))
    return TraceResult(
        estimate=exact + rest,
        stderr=stderr,
        num_matvecs=op.num_matvecs - start_count,
        method="hutch++",
        product_error=op.product_error,
    )
