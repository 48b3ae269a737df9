r"""Hutchinson's trace estimator and the diagonal estimator of Bekas, Kokiopoulou & Saad.

**Trace** (Hutchinson 1989; Avron & Toledo 2011). For Rademacher probes ``z_1..z_m``
(independent entries ``+-1``), ``E[z^T H z] = tr(H)`` and

.. math::
    \widehat{\mathrm{tr}} = \frac1m \sum_{i=1}^m z_i^T H z_i, \qquad
    \mathrm{Var}[z^T H z] = 2 \left(\|H\|_F^2 - \sum_i H_{ii}^2\right).

The standard error is the sample standard deviation of the ``m`` terms over
``sqrt(m)``. The relative error decays like ``||H||_F / (tr(H) sqrt(m))``, slowly
when a few large eigenvalues dominate ``||H||_F`` (as for network Hessians; Hutch++,
:mod:`curvature.algorithms.hutchpp`, removes them first).

**Diagonal** (Bekas, Kokiopoulou & Saad 2007, "An estimator for the diagonal of a
matrix"). For Rademacher ``z``, ``E[z \odot H z] = \mathrm{diag}(H)`` (since
``z \odot z = 1``); the estimate is the mean of ``z_i \odot H z_i`` with per-coordinate
standard errors from the sample variance (coordinate ``j`` has variance
``sum_{l != j} H_{jl}^2``).

Probes go through :meth:`~curvature.CurvatureOperator.matmat` in near-equal blocks of at
most ``block_size`` columns (:mod:`curvature.algorithms.probes`); sums are accumulated in
float64, and the estimate does not depend on the blocking.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from curvature import checks
from curvature.algorithms.probes import (
    default_block_size,
    make_generator,
    mean_stderr,
    rademacher_products,
)
from curvature.operators import CurvatureOperator
from curvature.results import DiagonalResult, TraceResult

__all__ = ["hutchinson_diagonal", "hutchinson_trace"]


def hutchinson_trace(
    op: CurvatureOperator,
    num_matvecs: int,
    *,
    generator: torch.Generator | None = None,
    block_size: int | None = None,
    progress: bool = False,
) -> TraceResult:
    """Hutchinson's estimate of ``tr(H)`` from ``num_matvecs >= 2`` Rademacher probes.

    Arguments as in :func:`curvature.trace` (``method="hutchinson"``), which checks them;
    ``generator`` draws the probes (fresh entropy when ``None``); ``block_size=None``
    takes :func:`~curvature.algorithms.probes.default_block_size`.

    Raises:
        TypeError: ``op`` is not a ``CurvatureOperator``.
        NonFiniteProductError: a product holds NaN/inf.

    Example (the mean of ``z^T H z`` is exact in expectation, not per draw):

    >>> import torch, curvature as cv
    >>> op = cv.DenseOperator(torch.diag(torch.arange(1.0, 11.0)).double())
    >>> res = hutchinson_trace(op, 40, generator=torch.Generator().manual_seed(0))
    >>> res.estimate  # a diagonal H: z_i^2 = 1 makes every term exact
    55.0
    >>> res.stderr, res.num_matvecs
    (0.0, 40)
    """
    checks.operator(op, "hutchinson_trace")
    gen = make_generator(None, op.device) if generator is None else generator
    block_size = default_block_size(op) if block_size is None else block_size
    start_count = op.num_matvecs
    with tqdm(total=num_matvecs, desc="trace (hutchinson)", disable=not progress,
              leave=False) as bar:
        forms = [(Z.double() * HZ.double()).sum(0)  # z_i^T H z_i, float64
                 for Z, HZ in rademacher_products(op, num_matvecs, gen, block_size, bar,
                                                  "trace (hutchinson)")]
    estimate, stderr = mean_stderr(torch.cat(forms).cpu())
    return TraceResult(
        estimate=estimate,
        stderr=stderr,
        num_matvecs=op.num_matvecs - start_count,
        method="hutchinson",
        product_error=op.product_error,
    )


def hutchinson_diagonal(
    op: CurvatureOperator,
    num_matvecs: int,
    *,
    generator: torch.Generator | None = None,
    block_size: int | None = None,
    progress: bool = False,
) -> DiagonalResult:
    """Estimate ``diag(H)`` as the mean of ``z_i * (H z_i)`` over ``num_matvecs >= 2``
    Rademacher probes (Bekas et al. 2007), with per-coordinate standard errors.

    Arguments as in :func:`curvature.diagonal`, which checks them; ``generator`` and
    ``block_size`` as in :func:`hutchinson_trace`.

    Raises:
        TypeError: ``op`` is not a ``CurvatureOperator``.
        NonFiniteProductError: a product holds NaN/inf.

    Example (a diagonal ``H`` is recovered exactly by any Rademacher probe):

    >>> import torch, curvature as cv
    >>> op = cv.DenseOperator(torch.diag(torch.tensor([3.0, -1.0, 2.0])).double())
    >>> hutchinson_diagonal(op, 4, generator=torch.Generator().manual_seed(0)).estimate
    tensor([ 3., -1.,  2.], dtype=torch.float64)
    """
    n = checks.operator(op, "hutchinson_diagonal")
    gen = make_generator(None, op.device) if generator is None else generator
    block_size = default_block_size(op) if block_size is None else block_size
    start_count = op.num_matvecs
    total = torch.zeros(n, dtype=torch.float64, device=op.device)
    total_sq = torch.zeros(n, dtype=torch.float64, device=op.device)
    with tqdm(total=num_matvecs, desc="diagonal", disable=not progress, leave=False) as bar:
        for Z, HZ in rademacher_products(op, num_matvecs, gen, block_size, bar, "diagonal"):
            D = Z.double() * HZ.double()
            total += D.sum(1)
            total_sq += D.square().sum(1)
    m = num_matvecs
    mean = total / m
    var = (total_sq - m * mean.square()).clamp_min(0) / (m - 1)
    return DiagonalResult(
        estimate=mean.to(op.dtype),
        stderr=(var / m).sqrt().to(op.dtype),
        num_matvecs=op.num_matvecs - start_count,
        product_error=op.product_error,
    )
