"""Per-block spectra of the block-diagonal Hessian: :func:`block_spectra`.

For a partition of the parameters into blocks ``b`` (:mod:`curvature.partition`), the
block-diagonal Hessian keeps the diagonal blocks ``H_bb``. Every block is analysed at
once through products of the *full* Hessian operator on all the blocks' parameters: a
column that is nonzero only in block ``b`` (``(0, .., v_b, .., 0)``) gives
``H (0, .., v_b, .., 0)``, whose ``b``-slice is ``H_bb v_b``. So one multi-column
product (one pass over the data) serves one Lanczos step of every block, plus Hutchinson
trace probes and density runs riding along, and the number of passes is the number of
lockstep steps, not blocks x steps:

* products: column ``b``'s second backward runs from block ``b``'s gradient to block
  ``b``'s parameters only (:meth:`~curvature.operators.hessian_products.ExactProducts.block_matmat`),
  so a column costs the double backward of the network from that block on, not a full
  product;
* extreme eigenvalues: one Lanczos run per block with full reorthogonalisation, all runs
  stepped in lockstep (:class:`curvature.algorithms.lockstep_lanczos.LockstepLanczos`);
  a block leaves the product once both ends converged;
* trace: Hutchinson ``tr(H_bb) ~ mean_i z_i^T H_bb z_i`` with Rademacher ``z_i`` of the
  block (Hutchinson 1989), standard error from the sample spread; the probes fill the
  products' spare columns;
* density (optional): stochastic Lanczos quadrature per block (Ubaru, Chen & Saad 2017),
  fixed-length Lanczos runs from Rademacher starts, stepped with the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from curvature import checks
from curvature.algorithms.lockstep_lanczos import LockstepLanczos, RunResult
from curvature.algorithms.probes import (
    check_finite,
    default_block_size,
    gaussian,
    make_generator,
    mean_stderr,
    rademacher,
)
from curvature.algorithms.ritz import residual_limit
from curvature.block_results import BlockSpectra, BlockSpectrum
from curvature.operators import HessianOperator
from curvature.partition import partition
from curvature.results import SpectralDensity

__all__ = ["block_spectra"]


def block_spectra(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    data: Any,
    *,
    blocks: str | Mapping[str, Sequence[Tensor | str]] = "module",
    k: int = 1,
    tol: float = 1e-4,
    max_steps: int = 300,
    trace_matvecs: int = 30,
    density: bool = False,
    density_steps: int = 40,
    density_probes: int = 4,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    reduction: str = "mean",
    method: str = "exact",
    max_columns: int | None = None,
    chunk_size: int | None = None,
    cache_graphs: bool | None = None,
    on_product: Callable[[int], None] | None = None,
) -> BlockSpectra:
    """Extreme eigenvalues, trace and optionally the density of each diagonal Hessian block.

    Parameters
    ----------
    model, loss_fn, data, dtype, device, reduction, method, chunk_size, cache_graphs
        As in :class:`curvature.HessianOperator` (one operator on all the blocks'
        parameters; weights, buffers and train/eval mode are left as they were).
    blocks : {"module", "layer", "parameter"} or dict
        The partition (:mod:`curvature.partition`): leaf-owning modules, top-level
        children, parameter tensors, or ``{name: [parameters or names]}`` (parameters in
        no group are left out; tied parameters belong to their first owner).
    k : int
        Eigenvalues at each end of every block; only ``k=1`` (lambda_max and lambda_min):
        the blocks' single-vector Lanczos runs would find one copy of a repeated
        eigenvalue, so larger ``k`` is refused (use :func:`curvature.eigenvalues` on a
        ``HessianOperator(..., params=block)``, whose block Lanczos returns every copy).
    tol : float
        Relative residual tolerance of the Lanczos runs, in ``(0, 1)``.
    max_steps : int
        Lanczos budget per block (capped at the block's dimension, where Lanczos is
        exact); a block out of budget is reported with ``converged_*=False``.
    trace_matvecs : int
        Rademacher probes per block for its trace (0: no trace, NaN).
    density, density_steps, density_probes
        Also estimate each block's spectral density by SLQ with ``density_probes``
        probes of ``min(density_steps, n_b)`` Lanczos steps.
    seed : int, optional
        Seeds the start vectors and probes.
    on_product : callable, optional
        ``on_product(columns)`` after every product (a progress bar's update).
    max_columns : int, optional
        Most columns in one product. Default: every active Lanczos run of a step in one
        product (one pass per step; memory ``2 x blocks x n`` numbers for the columns and
        their products), plus trace probes in the columns left free under the 256 MiB
        of :func:`~curvature.algorithms.probes.default_block_size`. Given, it bounds
        every product, and a step with more active runs takes
        ``ceil(active / max_columns)`` products (passes) instead of one. Each block's
        Lanczos basis holds ``n_b x steps`` numbers (``max_steps`` caps it).

    Returns
    -------
    BlockSpectra
        One :class:`~curvature.BlockSpectrum` per block, ``num_passes`` (products, each
        one pass over the data) and ``num_matvecs`` (columns); ``to_dataframe()``.

    Raises:
        ValueError / TypeError: a bad partition (unknown kind or name, empty or
            overlapping groups) or a bad argument, named in the message.
        NonFiniteProductError: a product holds NaN/inf.
    """
    k = checks.positive_int(k, "k")
    if k != 1:
        # single-vector Lanczos finds one copy of a repeated eigenvalue: a top-k of a block
        # could miss copies and still pass every residual test (see curvature.algorithms.lanczos)
        raise ValueError(
            f"block_spectra gives the extreme eigenvalue at each end of every block (k=1), "
            f"got k={k}; for the k largest of one block, with every copy of a repeated "
            "eigenvalue, use cv.eigenvalues(cv.HessianOperator(model, loss_fn, data, "
            "params=<the block's parameters>), k=k)"
        )
    tol = checks.tolerance(tol)
    max_steps = checks.positive_int(max_steps, "max_steps")
    trace_matvecs = checks.integer(trace_matvecs, "trace_matvecs")
    if trace_matvecs < 0:
        raise ValueError(f"trace_matvecs must be >= 0, got {trace_matvecs}")
    if not isinstance(density, bool):
        raise TypeError(f"density must be True or False, got {density!r}")
    density_steps = checks.positive_int(density_steps, "density_steps")
    density_probes = checks.positive_int(density_probes, "density_probes")
    if max_columns is not None:
        max_columns = checks.positive_int(max_columns, "max_columns")

    parts = partition(model, blocks)
    names = [n for _, ps in parts for n in ps]
    op = HessianOperator(
        model, loss_fn, data, params=names, dtype=dtype, device=device, reduction=reduction,
        method=method, chunk_size=chunk_size, cache_graphs=cache_graphs,
    )
    sizes = dict(zip(op.risk.names, op.risk.numels))
    index = {name: i for i, name in enumerate(op.risk.names)}
    block_params = [[index[p] for p in ps] for _, ps in parts]
    bounds, start = [], 0
    for _, ps in parts:
        n_b = sum(sizes[p] for p in ps)
        bounds.append((start, start + n_b))
        start += n_b
    dims = [e - s for s, e in bounds]
    gen = make_generator(seed, op.device)
    vec = {"dtype": op.dtype, "device": op.device}

    def draw(draw_fn, n_b: int) -> Tensor:
        return draw_fn(n_b, 1, gen, **vec)[:, 0]

    extremes = LockstepLanczos(
        [draw(gaussian, d) for d in dims], [min(max_steps, d) for d in dims], k, tol
    )
    P = density_probes if density else 0
    slq = LockstepLanczos(
        [draw(rademacher, d) for d in dims for _ in range(P)],
        [min(density_steps, d) for d in dims for _ in range(P)], k, tol, stop_early=False,
    )
    cap = max_columns if max_columns is not None else default_block_size(op)
    split = max_columns is not None  # an explicit bound also splits the Lanczos columns
    left = [trace_matvecs] * len(parts)
    samples: list[list[float]] = [[] for _ in parts]
    passes, columns, turn = 0, 0, 0
    while not extremes.done or not slq.done or any(left):
        cols: list[tuple[str, int, int, Tensor]] = []  # (kind, run, block, vector)
        cols += [("eig", i, i, v) for i, v in extremes.vectors()]
        cols += [("slq", i, i // P, v) for i, v in slq.vectors()]
        room = max(cap - len(cols), 0 if cols else 1)
        while room > 0 and any(left):  # round robin: blocks' probes share passes evenly
            b, turn = turn % len(parts), turn + 1
            if left[b]:
                cols.append(("trace", b, b, draw(rademacher, dims[b])))
                left[b] -= 1
                room -= 1
        width = cap if split else len(cols)
        HV = []
        for first in range(0, len(cols), width):
            V = torch.zeros(op.shape[0], min(width, len(cols) - first), **vec)
            for c, (_, _, b, v) in enumerate(cols[first:first + width]):
                V[bounds[b][0]:bounds[b][1], c] = v
            HV.append(_block_products(op, V, [block_params[b] for _, _, b, _ in
                                              cols[first:first + width]]))
            check_finite(HV[-1], "block_spectra", passes)
            passes += 1
            if on_product is not None:
                on_product(V.shape[1])
        HV = torch.cat(HV, dim=1)
        columns += len(cols)
        eig_out, slq_out = {}, {}
        for c, (kind, i, b, v) in enumerate(cols):
            part = HV[bounds[b][0]:bounds[b][1], c]
            if kind == "eig":
                eig_out[i] = part
            elif kind == "slq":
                slq_out[i] = part
            else:
                samples[b].append(float(v @ part))
        if eig_out:
            extremes.advance(eig_out)
        if slq_out:
            slq.advance(slq_out)

    out, err = [], op.product_error
    for b, (name, ps) in enumerate(parts):
        r = _with_product_error(extremes.result(b), err, tol)
        tr, se = _trace(samples[b], dims[b])
        out.append(BlockSpectrum(
            name=name, params=tuple(ps), num_params=dims[b], top=r.top, bottom=r.bottom,
            top_residuals=r.top_residuals, bottom_residuals=r.bottom_residuals,
            converged_max=r.top_converged, converged_min=r.bottom_converged,
            lanczos_steps=r.steps, stop_reason=r.reason, trace=tr, trace_stderr=se,
            trace_probes=len(samples[b]),
            density=_density([slq.result(b * P + j) for j in range(P)], dims[b], err) if P else None,
        ))
    failed = [s.name for s in out if not s.converged]
    why = (f"finite-difference products are off by up to {err:.3g} per unit vector, "
           "raise tol or use method='exact'" if err > 0 else f"max_steps={max_steps}")
    message = (
        f"{len(failed)} of {len(out)} blocks did not converge ({why}): " + ", ".join(failed)
        if failed else "all blocks converged"
    )
    return BlockSpectra(
        blocks=tuple(out), num_passes=passes, num_matvecs=columns, converged=not failed,
        tol=tol, message=message, product_error=err,
    )


def _block_products(op: HessianOperator, V: Tensor, column_params: list[list[int]]) -> Tensor:
    """The columns' diagonal-block products: exact products restrict each column's
    second backward to its block (:meth:`ExactProducts.block_matmat`, cheaper for the
    blocks near the output); finite differences take the full product (its other
    blocks are not read)."""
    if op.method != "exact":
        return op.matmat(V)
    op.num_matvecs += V.shape[1]
    return op.products.block_matmat(V, column_params)


def _with_product_error(r: RunResult, err: float, tol: float) -> RunResult:
    """With finite-difference products off by up to ``err`` per unit vector, the true
    residual is at most the measured one plus ``err``: report that bound, and call an end
    converged only if the bound meets its threshold (as :func:`curvature.eigenvalues`)."""
    if err == 0.0:
        return r
    anorm = max(abs(float(r.top[0])), abs(float(r.bottom[0])))
    top_res, bottom_res = r.top_residuals + err, r.bottom_residuals + err
    return dataclasses.replace(
        r, top_residuals=top_res, bottom_residuals=bottom_res,
        top_converged=r.top_converged and bool((top_res <= residual_limit(r.top, anorm, tol)).all()),
        bottom_converged=r.bottom_converged
        and bool((bottom_res <= residual_limit(r.bottom, anorm, tol)).all()),
    )


def _trace(samples: list[float], dim: int) -> tuple[float, float]:
    """Hutchinson mean and stderr; a one-parameter block's probes are all exact (``z^2 = 1``)."""
    if not samples:
        return float("nan"), float("nan")
    mean, se = mean_stderr(torch.tensor(samples, dtype=torch.float64))
    return mean, (0.0 if dim == 1 else se)


def _density(runs, dim: int, err: float) -> SpectralDensity:
    """Pack the quadratures of one block's SLQ runs (a run that closed an invariant
    subspace early is padded with zero-weight copies of its last node)."""
    m = max(r.nodes.size for r in runs)
    nodes = np.empty((len(runs), m))
    weights = np.zeros((len(runs), m))
    for i, r in enumerate(runs):
        nodes[i, : r.nodes.size] = r.nodes
        nodes[i, r.nodes.size:] = r.nodes[-1]
        weights[i, : r.nodes.size] = r.weights
    return SpectralDensity(
        nodes=torch.as_tensor(nodes), weights=torch.as_tensor(weights),
        num_matvecs=sum(r.steps for r in runs), dim=dim, product_error=err,
    )
