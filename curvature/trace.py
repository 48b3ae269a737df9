r"""Stochastic trace and diagonal estimation: Hutchinson, Hutch++ and the diagonal estimator.

**Hutchinson** (Hutchinson 1989; Avron & Toledo 2011). For Rademacher probes
``z_1..z_m`` (independent entries ``+-1``), ``E[z^T H z] = tr(H)`` and

.. math::
    \widehat{\mathrm{tr}} = \frac1m \sum_{i=1}^m z_i^T H z_i, \qquad
    \mathrm{Var}[z^T H z] = 2 \left(\|H\|_F^2 - \sum_i H_{ii}^2\right).

The standard error is the sample standard deviation of the ``m`` terms over
``sqrt(m)``. The relative error decays like ``||H||_F / (tr(H) sqrt(m))``, slowly
when a few large eigenvalues dominate ``||H||_F`` (as for network Hessians).

**Hutch++** (Meyer, Musco, Musco & Woodruff 2021, Algorithm 1). With ``m`` products
split as ``s + s + g`` (``s = floor(m/3)``, ``g = m - 2s``): sketch ``Q = orth(H S)``
for a Rademacher ``S: [n, s]``, take the top-subspace part exactly and Hutchinson
on the deflated remainder with Rademacher ``G: [n, g]``:

.. math::
    \widehat{\mathrm{tr}} = \mathrm{tr}(Q^T H Q)
        + \frac1g \mathrm{tr}\!\left(G^T (I - QQ^T) H (I - QQ^T) G\right).

Its error is ``O(1/m)`` rather than ``O(1/sqrt(m))`` for PSD ``H`` because the
remainder's Frobenius norm is small once the dominant eigenvalues are removed
(Meyer et al., Theorem 1.1). The first term is exact given ``Q``; the reported
standard error is that of the second: the sample standard deviation of the ``g``
deflated Hutchinson terms over ``sqrt(g)`` -- conditional on the sketch, hence
honest for the realised estimator.

**Diagonal** (Bekas, Kokiopoulou & Saad 2007). For Rademacher ``z``,
``E[z \odot H z] = \mathrm{diag}(H)`` (since ``z \odot z = 1``); the estimate is the mean of
``z_i \odot H z_i`` with per-coordinate standard errors from the sample variance
(coordinate ``j`` has variance ``sum_{l != j} H_{jl}^2``).

Probes are pushed through :meth:`CurvatureOperator.matmat` in near-equal blocks of
at most ``block_size`` columns (one pass over the data per block); by default a block
is as wide as keeps its probes and products under 256 MiB, and model operators bound
the memory of the pass itself (``max_chunk_bytes``). Hutch++'s exact part and its
deflated probes share their passes. Sums are accumulated in float64. Probes are drawn
column after column, so the estimate does not depend on the blocking.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from curvature._random import make_generator, rademacher
from curvature.eigen import _check_operator, _positive_int
from curvature.errors import NonFiniteProductError
from curvature.operators import CurvatureOperator
from curvature.results import DiagonalResult, TraceResult

__all__ = ["trace", "diagonal"]

_TRACE_METHODS = ("hutch++", "hutchinson")


_PROBE_BYTES = 2**28
"""Default memory of one block of probes and their products (256 MiB)."""


def _check_block(block_size: int | None, op: CurvatureOperator) -> int:
    """Columns per product: ``block_size``, or by default as many as fit ``_PROBE_BYTES``."""
    if block_size is None:
        itemsize = torch.empty((), dtype=op.dtype).element_size()
        return max(1, _PROBE_BYTES // (2 * op.shape[0] * itemsize))
    block_size = _positive_int(block_size, "block_size")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return block_size


def _blocks(count: int, block_size: int) -> list[int]:
    """``count`` columns in ``ceil(count / block_size)`` blocks of near-equal width.

    Equal widths matter: a product's cost per column falls with its width (one shared
    pass over the data), so 40 probes as 20 + 20 beat 32 + 8.
    """
    parts = -(-count // block_size)
    base, extra = divmod(count, parts)
    return [base + 1] * extra + [base] * (parts - extra)


def _finite(X: Tensor, what: str, start: int) -> None:
    if not bool(torch.isfinite(X).all()):
        raise NonFiniteProductError(
            f"{what}: the operator returned a non-finite product (NaN or inf) for probe "
            f"block starting at probe {start}; check the model, the loss and the data"
        )


def _quadratic_forms(
    op: CurvatureOperator,
    count: int,
    gen: torch.Generator,
    block_size: int,
    bar: tqdm,
    what: str,
) -> Tensor:
    """``z_i^T H z_i`` for ``count`` Rademacher ``z_i``, float64 on host."""
    n = op.shape[0]
    out, start = [], 0
    for b in _blocks(count, block_size):
        Z = rademacher(n, b, gen, op.dtype, op.device)
        HZ = op.matmat(Z)
        _finite(HZ, what, start)
        out.append((Z.double() * HZ.double()).sum(0))
        bar.update(b)
        start += b
    return torch.cat(out).cpu()


def _mean_stderr(samples: Tensor) -> tuple[float, float]:
    m = samples.numel()
    mean = float(samples.mean())
    stderr = float(samples.std(unbiased=True)) / math.sqrt(m) if m > 1 else math.nan
    return mean, stderr


def trace(
    op: CurvatureOperator,
    *,
    method: str = "hutch++",
    num_matvecs: int = 100,
    seed: int | None = None,
    block_size: int | None = None,
    progress: bool = False,
) -> TraceResult:
    """Estimate ``tr(H)`` from ``num_matvecs`` products with Rademacher probes.

    Parameters
    ----------
    op : CurvatureOperator
        Symmetric ``n x n`` operator.
    method : {"hutch++", "hutchinson"}
        Hutch++ (``num_matvecs >= 4``; the default, several times more accurate when
        a few eigenvalues dominate) or plain Hutchinson (``num_matvecs >= 2``). See
        the module docstring for the estimators and their standard errors.
    num_matvecs : int
        Total operator products to spend.
    seed : int, optional
        Seeds the probes (a ``torch.Generator`` on ``op.device``).
    block_size : int, optional
        Most probes multiplied at once (``2 n block_size`` numbers); by default as
        many as fit in 256 MiB.
    progress : bool
        Show a tqdm bar of the products spent.

    Returns
    -------
    TraceResult
        ``estimate`` (float), ``stderr`` (float, an approximate 95% interval is
        ``estimate +- 2 stderr``), ``num_matvecs`` (int), ``method``.
    """
    n = _check_operator(op, "trace")
    if method not in _TRACE_METHODS:
        raise ValueError(f"method must be one of {_TRACE_METHODS}, got {method!r}")
    num_matvecs = _positive_int(num_matvecs, "num_matvecs")
    least = 4 if method == "hutch++" else 2
    if num_matvecs < least:
        raise ValueError(
            f"trace(method={method!r}) needs num_matvecs >= {least} (for a standard "
            f"error), got {num_matvecs}"
        )
    block_size = _check_block(block_size, op)
    gen = make_generator(seed, op.device)
    start_count = op.num_matvecs
    with tqdm(total=num_matvecs, desc=f"trace ({method})", disable=not progress, leave=False) as bar:
        if method == "hutchinson":
            samples = _quadratic_forms(op, num_matvecs, gen, block_size, bar, "trace (hutchinson)")
            estimate, stderr = _mean_stderr(samples)
        else:
            estimate, stderr = _hutchpp(op, n, num_matvecs, gen, block_size, bar)
    return TraceResult(
        estimate=estimate,
        stderr=stderr,
        num_matvecs=op.num_matvecs - start_count,
        method=method,
        product_error=op.product_error,
    )


def _hutchpp(
    op: CurvatureOperator, n: int, m: int, gen: torch.Generator, block_size: int, bar: tqdm
) -> tuple[float, float]:
    """Hutch++ (Meyer et al. 2021, Algorithm 1) with the conditional standard error.

    Once ``Q`` is known, ``Q^T H Q`` and the deflated probes are independent, so their
    ``s + g`` columns go through the operator together, in near-equal blocks.
    """
    s = min(m // 3, n)
    g = m - 2 * s
    # Sketch: Q = orth(H S), S Rademacher [n, s].
    HS, start = [], 0
    for b in _blocks(s, block_size):
        S = rademacher(n, b, gen, op.dtype, op.device)
        HSb = op.matmat(S)
        _finite(HSb, "trace (hutch++ sketch)", start)
        HS.append(HSb)
        bar.update(b)
        start += b
    Q, _ = torch.linalg.qr(torch.cat(HS, dim=1), mode="reduced")
    # tr(Q^T H Q) exactly, and Hutchinson on (I - QQ^T) H (I - QQ^T) with Rademacher G.
    exact, samples, start = 0.0, [], 0
    for b in _blocks(s + g, block_size):
        nq = max(0, min(b, s - start))
        cols = [Q[:, start : start + nq]]
        if b > nq:
            G = rademacher(n, b - nq, gen, op.dtype, op.device)
            cols.append(G - Q @ (Q.T @ G))
        X = torch.cat(cols, dim=1)
        HX = op.matmat(X)
        _finite(HX, "trace (hutch++ top subspace and remainder)", start)
        forms = (X.double() * HX.double()).sum(0)
        exact += float(forms[:nq].sum())
        samples.append(forms[nq:].cpu())
        bar.update(b)
        start += b
    rest, stderr = _mean_stderr(torch.cat(samples))
    return exact + rest, stderr


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
    n = _check_operator(op, "diagonal")
    num_matvecs = _positive_int(num_matvecs, "num_matvecs")
    if num_matvecs < 2:
        raise ValueError(f"diagonal needs num_matvecs >= 2 (for a standard error), got {num_matvecs}")
    block_size = _check_block(block_size, op)
    gen = make_generator(seed, op.device)
    start_count = op.num_matvecs
    total = torch.zeros(n, dtype=torch.float64, device=op.device)
    total_sq = torch.zeros(n, dtype=torch.float64, device=op.device)
    with tqdm(total=num_matvecs, desc="diagonal", disable=not progress, leave=False) as bar:
        start = 0
        for b in _blocks(num_matvecs, block_size):
            Z = rademacher(n, b, gen, op.dtype, op.device)
            HZ = op.matmat(Z)
            _finite(HZ, "diagonal", start)
            D = Z.double() * HZ.double()
            total += D.sum(1)
            total_sq += D.square().sum(1)
            bar.update(b)
            start += b
    m = num_matvecs
    mean = total / m
    var = (total_sq - m * mean.square()).clamp_min(0) / (m - 1)
    return DiagonalResult(
        estimate=mean.to(op.dtype),
        stderr=(var / m).sqrt().to(op.dtype),
        num_matvecs=op.num_matvecs - start_count,
        product_error=op.product_error,
    )
