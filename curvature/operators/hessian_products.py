"""Exact Hessian-vector products and their measured path choice.

``H V`` for a block ``V: Tensor[n, k]`` of an :class:`~curvature.risk.EmpiricalRisk`,
in one pass over the data (:meth:`curvature.data_loop.DataLoop.accumulate`). Per
batch, either

* **double backward**: one forward and one first backward with ``create_graph=True``
  (shared by the ``k`` columns), then ``d(g . v)/dw`` per column -- all columns in one
  vmapped second backward (``is_grads_batched``) or one backward each, whichever the
  first multi-column block measured faster; batch graphs may be kept and reused by
  later products (then only the second backwards are paid), or
* **forward-over-reverse**: ``jvp`` of ``grad`` vectorised over the columns with
  ``vmap``, for blocks of at least :data:`FUNC_MIN_COLUMNS` columns, adopted only
  after it reproduced double backward and was faster.

Columns go through a vectorised pass in chunks sized from measured memory: each
column holds about one copy of the tensors autograd saves for a batch's gradient
graph. The choices are measured once per module and shared by every operator built
on it (:class:`PathChoice`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vmap

from curvature.errors import DoubleBackwardError
from curvature.risk import EmpiricalRisk

__all__ = [
    "CALIBRATION_COLUMNS", "CHEAP_BLOCK_S", "CLOSE_CALL", "FUNC_MIN_COLUMNS", "PROBE_COLUMNS",
    "ExactProducts", "PathChoice", "check_second_derivatives", "columns_per_pass",
    "double_backward_error", "saved_bytes",
]

FUNC_MIN_COLUMNS = 4
"""Products with at least this many columns per pass may use vectorised
forward-over-reverse (measured per column against warm double backward: 0.29 against
0.35 s at 4 columns on a ResNet-20 of width 32, equal at 4 on a small GPT-2, 0.12
against 0.14 s there at 10)."""

PROBE_COLUMNS = 4
"""Width of the slices on which batched and looped second backwards are timed."""

CALIBRATION_COLUMNS = 8
"""Narrowest slice on which the jvp and double-backward paths are timed side by side;
narrower blocks are timed whole, both ways."""

CLOSE_CALL = 0.15
"""Per-column times of the two paths closer than this (relative) on a narrow block leave
the choice to the next block, once."""

CHEAP_BLOCK_S = 0.5
"""Below this many seconds for the timed slices on one batch, their timings are
repeated (best of two)."""


@dataclasses.dataclass
class PathChoice:
    """Measured choices for multi-column exact products on one module.

    ``batched``: second backward vmapped over columns (else one backward per column).
    ``func``: blocks of >= ``FUNC_MIN_COLUMNS`` columns by vectorised jvp-of-grad,
    adopted only after it matched double backward. ``None``: not decided yet.
    Setting a field forces that path for every operator on the module.
    """

    batched: bool | None = None
    func: bool | None = None
    func_trials: int = 0
    """Narrow blocks whose jvp-path timing was a close call, left undecided."""


_PATH_CHOICES: weakref.WeakKeyDictionary[nn.Module, PathChoice] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def saved_bytes() -> Iterator[list[int]]:
    """Count the bytes of the tensors autograd saves inside the block (into ``[total]``)."""
    total = [0]

    def pack(t: Tensor) -> Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def columns_per_pass(
    k: int, chunk_size: int | None, max_chunk_bytes: float, per_column: int | None
) -> int | None:
    """Columns per vectorised pass for a ``k``-column product (``None``: all at once).

    An explicit ``chunk_size`` wins. Otherwise at most ``max_chunk_bytes`` over the
    measured bytes one column holds (``per_column``; unknown: all at once), at least 1,
    and the passes balanced: 10 columns under a bound of 9 go as 5 + 5, not 9 + 1 (a
    column of a narrow pass costs more: 0.43 s at width 1 against 0.12 s at width 9 by
    forward-over-reverse on a small GPT-2).
    """
    if chunk_size is not None:
        return max(1, int(chunk_size))
    if not per_column:
        return None
    fit = int(max_chunk_bytes // per_column)
    if fit >= k:
        return None
    passes = math.ceil(k / max(1, fit))
    return math.ceil(k / passes)


def double_backward_error(err: Exception) -> DoubleBackwardError:
    """The error for a model without second derivatives, naming the fix (``method='fd'``)."""
    return DoubleBackwardError(
        "exact Hessian-vector products need second derivatives of every operation "
        "(custom autograd.Functions need setup_context and a differentiable backward), "
        f"but the model failed ({str(err).splitlines()[0]}); use "
        "HessianOperator(..., method='fd') or method='fd-central': finite differences "
        "of gradients need only first derivatives. Cost per product: about 2 gradients "
        "('fd') or 4 ('fd-central'), up to 3x that when a step is corrected. Accuracy "
        "measured on a small GPT-2 (median relative error of a product): 'fd-central' "
        "1e-10 in float64 and 8e-5 in float32, 'fd' 3e-8 and 7e-4; each product's "
        "error is estimated and reported as op.product_error"
    )


def check_second_derivatives(loss: Tensor) -> None:
    """Refuse graphs with custom autograd.Functions whose backward is once_differentiable.

    Double backward through such a node does not raise: it silently drops the
    node's second-order terms (measured: 86% error on an MLP with such a tanh).
    """
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            backward = node._forward_cls.backward
            if hasattr(backward, "__wrapped__") and backward.__code__.co_filename.endswith(
                "function.py"
            ):
                raise double_backward_error(
                    RuntimeError(f"{node._forward_cls.__name__}.backward is once_differentiable")
                )
        stack.extend(n for n, _ in node.next_functions)


def _sync(t: Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


class ExactProducts:
    """Exact ``H V`` of ``risk`` with the per-module path choice and the graph cache.

    Attributes:
        paths: the :class:`PathChoice` of the module, shared by every operator on it.
        column_bytes: bytes autograd saves for one batch's gradient graph (measured on
            the first batch that builds one; ``None`` before), the memory one column
            of a vectorised pass is charged.
    """

    def __init__(self, risk: EmpiricalRisk) -> None:
        self.risk = risk
        self.paths = _PATH_CHOICES.setdefault(risk.model, PathChoice())
        self.column_bytes: int | None = None
        self._graphs: dict[int, tuple[Tensor, Tensor]] = {}
        self._cache_ok: bool | None = None
        self._graphs_key: tuple[int, int] | None = None  # DataLoop.cache_key of _graphs
        self._graph_checked = False
        self.record_parts = False
        """When set, :attr:`parts` holds the last product's seconds spent building batch
        graphs (``"graph"``) and in second backwards (``"second_backward"``), with a
        device sync per batch (for cost measurements only)."""
        self.parts: dict[str, float] = {}

    @property
    def num_cached_graphs(self) -> int:
        """Batch gradient graphs kept for later products."""
        return len(self._graphs)

    def chunk_for(
        self, k: int, chunk_size: int | None, max_chunk_bytes: float, per_column: int | None = None
    ) -> int | None:
        """Columns per vectorised pass (:func:`columns_per_pass`), charged
        :attr:`column_bytes` per column unless ``per_column`` is given."""
        per_column = self.column_bytes if per_column is None else per_column
        return columns_per_pass(k, chunk_size, max_chunk_bytes, per_column)

    def matmat(
        self,
        V: Tensor,
        chunk_size: int | None = None,
        progress: bool = False,
        cache_graphs: bool | None = None,
        max_cache_bytes: float = 2**30,
        max_chunk_bytes: float = 2**29,
    ) -> Tensor:
        """Exact ``H V`` for ``V: Tensor[n, k]`` in one pass over the data.

        ``cache_graphs=None`` keeps the batch graphs when the bytes saved by the first
        one, times the number of batches, fit in ``max_cache_bytes``; streamed data is
        never cached (a re-iterable being kept is, from its recorded first pass on:
        :attr:`DataLoop.cache_key`). ``chunk_size=None`` sizes the column chunks so
        that the vectorised intermediates stay under ``max_chunk_bytes``
        (:meth:`chunk_for`). Blocks of at least :data:`FUNC_MIN_COLUMNS` columns may
        use forward-over-reverse: once the column path of the second backward is
        settled, the next such product times both paths on its first batch
        (:meth:`_choose_func`) and keeps jvp-of-grad only if it agrees and is faster.
        """
        k = V.shape[1]
        data = self.risk.data
        if self.record_parts:
            self.parts = {"graph": 0.0, "second_backward": 0.0}

        def vectorised(chunk: int | None) -> bool:
            # the jvp path only for blocks of at least FUNC_MIN_COLUMNS columns per pass:
            # a memory-bound chunk of 2 must not decide (or use) the path of wide blocks,
            # where the jvp path's per-column cost is lower (0.44 s a column at 1, 0.12 at 10)
            width = k if chunk is None else min(k, chunk)
            return width >= FUNC_MIN_COLUMNS and self.paths.func is not False

        def step(i: int, batch: Any) -> tuple[Tensor, Tensor]:
            if self.paths.func and vectorised(None):
                if self.column_bytes is None and chunk_size is None:
                    self.gradient_graph(batch, measure=True)
            chunk = self.chunk_for(k, chunk_size, max_chunk_bytes)
            if self.paths.func and vectorised(chunk):
                return self.hvp_forward_over_reverse(V, batch, chunk)
            kept = i in self._graphs and data.cache_key == self._graphs_key
            t0 = time.perf_counter()
            g, loss = self.batch_graph(i, batch, cache_graphs, max_cache_bytes)
            chunk = self.chunk_for(k, chunk_size, max_chunk_bytes)
            t1 = time.perf_counter()
            # decide the jvp path only once the column path is settled, so that the
            # double-backward timing holds no timing experiment of its own
            if vectorised(chunk) and self.paths.func is None and self.paths.batched is not None:
                # what double backward costs from now on: the second backward alone once
                # the graph is kept, else graph and second backward
                return self._choose_func(g, V, batch, chunk, 0.0 if kept else t1 - t0), loss
            hv = self.second_backward(g, V, chunk)
            if self.record_parts:
                _sync(V)
                self.parts["graph"] += t1 - t0
                self.parts["second_backward"] += time.perf_counter() - t1
            return hv, loss

        with self.risk.differentiable():
            return data.accumulate(step, torch.zeros_like(V), progress=progress, desc="hvp")

    def batch_graph(
        self, i: int, batch: Any, cache_graphs: bool | None, max_cache_bytes: float
    ) -> tuple[Tensor, Tensor]:
        """Batch ``i``'s flat gradient with its graph, and its loss: the kept graph, or a
        new one, kept when the cache applies (``cache_graphs`` as in :meth:`matmat`)."""
        data = self.risk.data
        key = data.cache_key
        if key != self._graphs_key:  # other batches than the kept graphs were built on
            self._graphs.clear()
            self._graphs_key = key
        if i in self._graphs:
            return self._graphs[i]
        g, loss = self.gradient_graph(batch, measure=self.column_bytes is None)
        n = data.num_batches
        if cache_graphs is None and self._cache_ok is None and key is not None and n:
            self._cache_ok = self.column_bytes * n <= max_cache_bytes
        if self.keeps_graphs(cache_graphs) and (cache_graphs or self._cache_ok):
            self._graphs[i] = (g, loss)
        return g, loss

    def keeps_graphs(self, cache_graphs: bool | None) -> bool:
        """Whether batch graphs may be kept: cacheable data, and the cache on, or
        automatic and not found too big (undecided before the first graph)."""
        if self.risk.data.cache_key is None:
            return False
        return bool(cache_graphs) or (cache_graphs is None and self._cache_ok is not False)

    def loss_and_gradient(
        self, cache_graphs: bool | None = None, max_cache_bytes: float = 2**30,
        progress: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Dataset loss (0-d) and gradient ``Tensor[n]`` at the module's weights, one pass
        that builds the batch gradient graphs the products need and keeps those the
        graph cache admits, so that the first product after it is warm (a Lanczos
        started from the gradient saves the graph-building half of a fresh product).
        Batches after the cache is found too big take a plain gradient."""

        def batch_gradient(i: int, batch: Any) -> tuple[Tensor, Tensor]:
            if self.keeps_graphs(cache_graphs):
                g, loss = self.batch_graph(i, batch, cache_graphs, max_cache_bytes)
                return g.detach(), loss
            return self.gradient_graph(batch, create_graph=False)

        with self.risk.differentiable():
            return self.risk.accumulate_loss_and_gradient(batch_gradient, progress)

    def block_matmat(self, V: Tensor, column_params: Sequence[Sequence[int]]) -> Tensor:
        """``H_bb v_b`` for every column of ``V: Tensor[n, k]``, column ``j`` nonzero only
        on the parameters ``column_params[j]`` (indices into ``risk.param_list``, its
        block ``b``): the block-diagonal products of per-block spectra, in one pass.

        Each column's second backward runs from the gradient tensors of its own block to
        that block's parameters only, so autograd visits only the part of the double
        backward between them: ``d(g_b . v_b) / dw_b``, where a full product would carry
        the zeros of the other blocks through the whole graph. Entries outside a column's
        block are 0 (the full product's off-diagonal blocks ``H_cb v_b`` are not formed).
        """
        params = self.risk.param_list
        offsets = [0]
        for p in params:
            offsets.append(offsets[-1] + p.numel())

        def step(_: int, batch: Any) -> tuple[Tensor, Tensor]:
            loss = self.risk.module_loss(batch)
            if not self._graph_checked:
                check_second_derivatives(loss)
                self._graph_checked = True
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            out = torch.zeros_like(V)
            for j, idx in enumerate(column_params):
                live = [i for i in idx if grads[i] is not None and grads[i].requires_grad]
                if not live:  # the loss is at most linear in this block
                    continue
                vs = [V[offsets[i]:offsets[i + 1], j].view_as(params[i]) for i in live]
                try:
                    hs = torch.autograd.grad([grads[i] for i in live], [params[i] for i in live],
                                             vs, retain_graph=True, allow_unused=True)
                except RuntimeError as err:
                    raise double_backward_error(err) from err
                for i, h in zip(live, hs):
                    if h is not None:
                        out[offsets[i]:offsets[i + 1], j] = h.reshape(-1)
            return out, loss.detach()

        with self.risk.differentiable():
            return self.risk.data.accumulate(step, torch.zeros_like(V))

    def hvp_forward_over_reverse(
        self, V: Tensor, batch: Any, chunk_size: int | None
    ) -> tuple[Tensor, Tensor]:
        """``(H_b V, loss_b)`` by forward-over-reverse (``jvp`` of ``grad``) vectorised
        over columns. The primal forward and backward are shared by the ``k`` tangents,
        which on conv nets costs about 1 gradient per column against 2.5 for double
        backward."""
        risk = self.risk

        def loss_at(w):
            loss = risk.batch_loss(w, batch)
            return loss, loss.detach()

        grad_fn = grad(loss_at, has_aux=True)

        def one(v):
            (_, loss), (hv, _) = jvp(grad_fn, (risk.w0,), (v,))
            return hv, loss

        hv, loss = vmap(one, in_dims=1, out_dims=(1, 0), chunk_size=chunk_size)(V)
        return hv, loss[0]

    def _choose_func(
        self, g: Tensor, V: Tensor, batch: Any, chunk_size: int | None, graph_s: float
    ) -> Tensor:
        """``H_b V`` for this batch while deciding, once per module, whether wide blocks go
        through :meth:`hvp_forward_over_reverse` (``graph_s``: seconds the batch graph
        ``g`` took to build, 0 if it was kept).

        Both paths are timed per column at equal width, as wide as possible, because
        the jvp path's lead grows with the width (per column on a small GPT-2: equal
        at 5 columns, 15% ahead at 10; on the digits MLP, 8-column slices chose
        double backward, whose 120-product Hutch++ then took 0.45 s against 0.27 s).
        A block whose halves (or passes) are at least ``CALIBRATION_COLUMNS`` wide
        times each path on one half, both part of the product, and the rest goes by
        the faster; extra work: two checked columns and a two-column warm-up of the
        transforms (timing a whole extra block instead cost 10.6 s of an 18.2 s first
        Hutch++ trace on a ResNet-20 of width 32). A narrower block is run both ways
        whole. The jvp path is used only if it also reproduces
        double backward to ``1e4`` units of roundoff: torch.func's Hessians of
        affine LayerNorm are wrong in torch 2.13 along some code paths
        (tests/operators/test_dense.py), and curvlinops' products on a ViT were
        measured 1.6e-2 off (reports/benchmark).
        """
        k = V.shape[1]
        p = min(k // 2, k if chunk_size is None else chunk_size)
        wide = p >= CALIBRATION_COLUMNS
        func_cols, db_cols = (slice(0, p), slice(p, 2 * p)) if wide else (slice(0, k),) * 2
        width = None if wide else chunk_size
        out = torch.empty_like(V)
        # the first call of a transform on a model is several times slower than later
        # ones (measured 4.5x on ResNet-20): warm up on two columns first
        try:
            self.hvp_forward_over_reverse(V[:, :2], batch, None)
        except Exception:  # no forward-mode or batching rule somewhere: double backward
            self.paths.func = False
            return self.second_backward(g, V, chunk_size)
        t_func = t_db = math.inf
        cols = V[:, func_cols].shape[1]
        # cheap timings are repeated, best of two (on the digits MLP one cold timing
        # chose jvp, whose Hutch++ trace then took 0.61 s against 0.54 s by double
        # backward)
        for _ in range(2):
            _sync(V)
            t = time.perf_counter()
            by_func = self.hvp_forward_over_reverse(V[:, func_cols], batch, width)[0]
            _sync(V)
            t_func = min(t_func, (time.perf_counter() - t) / cols)
            t = time.perf_counter()
            out[:, db_cols] = self.second_backward(g, V[:, db_cols], width)
            _sync(V)
            t_db = min(t_db, (time.perf_counter() - t) / cols + graph_s / k)
            if (t_func + t_db) * cols >= CHEAP_BLOCK_S:
                break
        reference = self.second_backward(g, V[:, :2], None) if wide else out[:, :2]
        scale = torch.linalg.vector_norm(reference).clamp_min(torch.finfo(V.dtype).tiny)
        agrees = float(torch.linalg.vector_norm(by_func[:, :2] - reference) / scale) <= (
            1e4 * torch.finfo(V.dtype).eps
        )
        if not wide and agrees and self.paths.func_trials == 0 and (
            abs(t_func - t_db) < CLOSE_CALL * min(t_func, t_db)
        ):
            # a close call on a narrow block, where the jvp path was timed cold at this
            # width: leave the choice to the next block (on a small GPT-2 the 10-column
            # trial chose double backward at 0.139 against 0.134 s a column; settled,
            # the jvp path is 15% ahead there)
            self.paths.func_trials += 1
            return out
        self.paths.func = agrees and t_func < t_db
        if wide:
            # a jvp slice that disagrees is not trusted: recomputed by double backward
            out[:, func_cols] = (by_func if agrees
                                 else self.second_backward(g, V[:, func_cols], None))
            rest = V[:, 2 * p :]
            if rest.shape[1]:
                out[:, 2 * p :] = (
                    self.hvp_forward_over_reverse(rest, batch, chunk_size)[0]
                    if self.paths.func else self.second_backward(g, rest, chunk_size)
                )
        return out

    def gradient_graph(
        self, batch: Any, measure: bool = False, create_graph: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Flat batch gradient with its graph (``create_graph``; else a plain gradient)
        and the loss; with ``measure``, the bytes autograd saved for it go to
        :attr:`column_bytes`. Needs :meth:`EmpiricalRisk.differentiable`."""
        params = self.risk.param_list
        with saved_bytes() if measure else contextlib.nullcontext([0]) as nbytes:
            loss = self.risk.module_loss(batch)
            if not self._graph_checked:
                check_second_derivatives(loss)
                self._graph_checked = True
            grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
        if measure:
            self.column_bytes = max(nbytes[0], 1)
        g = torch.cat(
            [torch.zeros_like(p).reshape(-1) if t is None else t.reshape(-1)
             for p, t in zip(params, grads)]
        )
        return g, loss.detach()

    def second_backward(self, g: Tensor, V: Tensor, chunk_size: int | None) -> Tensor:
        """``d(g . v)/dw`` for every column ``v`` of ``V``; the graph of ``g`` is kept.

        Columns go through one vmapped backward (``is_grads_batched``) or one backward
        each. Which is faster depends on the model: measured on digits MLPs, the
        batched pass costs 0.4x the loop per column at 2.4k parameters and 3.4x at 38k.
        The first multi-column block on a module times both on its first columns and
        the faster is kept.
        """
        k = V.shape[1]
        if not g.requires_grad:  # loss linear in the parameters: zero Hessian
            return torch.zeros_like(V)
        if k == 1:  # a matvec: no column split, stack and copy (~0.2 ms a batch)
            try:
                return self.vjp_columns(g, V[:, 0], batched=False).unsqueeze(1)
            except RuntimeError as err:
                raise double_backward_error(err) from err
        out = torch.empty_like(V)
        step = k if chunk_size is None else max(1, int(chunk_size))
        for start in range(0, k, step):
            block = V[:, start : start + step]
            try:
                if block.shape[1] > 1 and self.paths.batched is None:
                    out[:, start : start + step] = self._time_both(g, block)
                elif block.shape[1] > 1 and self.paths.batched:
                    out[:, start : start + step] = self.vjp_columns(g, block.T, batched=True).T
                else:
                    out[:, start : start + step] = self._loop_columns(g, block)
            except RuntimeError as err:
                if self.paths.batched is not False and block.shape[1] > 1 and "vmap" in str(err).lower():
                    self.paths.batched = False  # an op without a batching rule: loop instead
                    return self.second_backward(g, V, chunk_size)
                raise double_backward_error(err) from err
        return out

    def _loop_columns(self, g: Tensor, block: Tensor) -> Tensor:
        return torch.stack([self.vjp_columns(g, v, batched=False) for v in block.T], dim=1)

    def _time_both(self, g: Tensor, block: Tensor) -> Tensor:
        """Time batched and looped second backwards on slices of ``block`` (up to
        ``PROBE_COLUMNS`` columns), keep the faster (per column) for the rest of it and
        for later products.

        The batched path runs twice, the first run paying vmap's one-off setup. A block
        of at least 6 columns times each run on a slice of its own, so the timing is
        real work; a narrower one repeats its first slice (two extra runs).
        """
        k = block.shape[1]
        p = min(PROBE_COLUMNS, k // 3) if k >= 6 else min(PROBE_COLUMNS, k)
        starts = (0, p, 2 * p) if k >= 3 * p else (0, 0, 0)
        out = torch.empty_like(block)
        times: dict[bool, float] = {True: math.inf, False: math.inf}
        for batched, start in zip((True, False, True), starts):
            probe = block[:, start : start + p]
            _sync(block)
            t0 = time.perf_counter()
            if batched:
                out[:, start : start + p] = self.vjp_columns(g, probe.T, batched=True).T
            else:
                out[:, start : start + p] = self._loop_columns(g, probe)
            _sync(block)
            times[batched] = min(times[batched], time.perf_counter() - t0)
        self.paths.batched = times[True] <= times[False]
        done = starts[-1] + p
        rest = block[:, done:]
        if rest.shape[1]:
            out[:, done:] = (self.vjp_columns(g, rest.T, batched=True).T if self.paths.batched
                             else self._loop_columns(g, rest))
        return out

    def vjp_columns(self, g: Tensor, v: Tensor, batched: bool) -> Tensor:
        """Flat ``d(g . v)/dw``: ``v: Tensor[n]``, or ``Tensor[m, n]`` rows with ``batched``."""
        params = self.risk.param_list
        hs = torch.autograd.grad(
            g, params, v, retain_graph=True, allow_unused=True, is_grads_batched=batched
        )
        lead = (v.shape[0],) if batched else ()
        return torch.cat(
            [torch.zeros(*lead, p.numel(), dtype=v.dtype, device=v.device) if h is None
             else h.reshape(*lead, -1) for p, h in zip(params, hs)],
            dim=-1,
        )
