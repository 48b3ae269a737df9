"""The HVP engine: one place that turns (model, loss, data) into curvature products.

A :class:`Problem` owns

* the functional model call on a *flat* parameter vector ``w: Tensor[n]``
  (``torch.func.functional_call``; other parameters and buffers held fixed),
* the data loop with full-dataset semantics: with ``reduction="mean"`` the loss is
  ``L(w) = sum_b n_b L_b(w) / N`` with ``L_b`` the mean loss of batch ``b`` and
  ``N = sum_b n_b`` -- exactly what one big batch gives, for batches of any size;
  with ``reduction="sum"`` it is ``L(w) = sum_b S_b(w)``, ``S_b`` the summed loss
  of batch ``b`` (batches, their sizes and device moves: :mod:`curvature.batches`),
* the all-reduce of those batch-weighted sums over ranks when ``torch.distributed``
  is initialised (``data`` is then this rank's shard),
* the products: exact Hessian (forward-over-reverse ``jvp(grad)`` vectorised over
  the columns with ``vmap``; double backward as a fallback), finite differences of
  gradients, and the generalised Gauss-Newton ``J^T H_out J``.

The model is run in eval mode and its mode is restored afterwards; its tensors
are never written (a different dtype/device works on a copy).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from tqdm.auto import tqdm

from curvature import _fd
from curvature.batches import (  # noqa: F401  (re-exported: engine.as_batches, ...)
    _is_batch,
    as_batches,
    batch_size_of,
    check_pair,
    check_reduction,
    check_reduction_name,
    model_args,
    to_device,
)
from curvature.errors import DoubleBackwardError, NonFiniteLossError

_to = to_device  # the engine's historical name for the device/dtype move

__all__ = [
    "Problem", "all_reduce_sum", "as_batches", "batch_size_of", "to_device", "NonFiniteLossError",
]


FUNC_MIN_COLUMNS = 8
"""Products with at least this many columns may use vectorised forward-over-reverse."""


@dataclasses.dataclass
class _PathChoice:
    """Measured choices for multi-column exact products on one module.

    ``batched``: second backward vmapped over columns (else one backward per column).
    ``func``: blocks of >= ``FUNC_MIN_COLUMNS`` columns by vectorised jvp-of-grad,
    adopted only after it matched double backward. ``None``: not decided yet.
    """

    batched: bool | None = None
    func: bool | None = None


_PATH_CHOICES: weakref.WeakKeyDictionary[nn.Module, _PathChoice] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _saved_bytes() -> Iterator[list[int]]:
    """Count the bytes of the tensors autograd saves inside the block (into ``[total]``)."""
    total = [0]

    def pack(t: Tensor) -> Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` in place over ranks when ``torch.distributed`` is initialised; return it."""
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _check_second_derivatives(loss: Tensor) -> None:
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
                raise Problem._no_double_backward(
                    RuntimeError(f"{node._forward_cls.__name__}.backward is once_differentiable")
                )
        stack.extend(n for n, _ in node.next_functions)


class Problem:
    """A model, a loss and a dataset, viewed as a function of flat parameters ``w``.

    See :class:`curvature.HessianOperator` for the meaning of the arguments.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        data: Any,
        *,
        params: Sequence[Tensor] | Sequence[str] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        reduction: str = "mean",
    ) -> None:
        self.reduction = check_reduction_name(reduction)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
        named = dict(model.named_parameters())
        if not named:
            raise ValueError("model has no parameters to differentiate")
        names = self._select(model, named, params)
        ref = named[names[0]]
        self.device = torch.device(device) if device is not None else ref.device
        self.dtype = dtype if dtype is not None else ref.dtype
        if not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {self.dtype}")
        needs_copy = any(
            p.dtype != self.dtype or p.device != self.device for p in named.values()
        ) or any(b.is_floating_point() and b.dtype != self.dtype for b in model.buffers())
        self.user_model = model
        # A different dtype/device works on a copy; the user's model is never cast.
        self.model = copy.deepcopy(model).to(device=self.device, dtype=self.dtype) if needs_copy else model
        self.loss_fn = loss_fn
        self.names = names
        own = dict(self.model.named_parameters())
        self.shapes = [own[k].shape for k in names]
        self.numels = [own[k].numel() for k in names]
        self.num_params = sum(self.numels)
        self.w0 = torch.cat([own[k].detach().reshape(-1) for k in names]).clone()
        selected = set(names)
        self.fixed = {k: v.detach() for k, v in own.items() if k not in selected}
        self.fixed.update(dict(self.model.named_buffers()))
        batches = as_batches(data)
        # Lists of batches are moved to the device once; other iterables (DataLoaders)
        # are streamed and moved batch by batch on every pass.
        if isinstance(batches, (list, tuple)):
            self._stream = False
            for i, b in enumerate(batches):
                check_pair(b, i)
            self.batches = [_to(b, self.device, self.dtype) for b in batches]
            if not self.batches:
                raise ValueError("data is empty: no batches to compute the loss on")
        else:
            self._stream = True
            self.batches = batches
        self._grad0: Tensor | None = None
        self._loss0: float | None = None
        self.param_list = [own[k] for k in names]
        self._graphs: dict[int, tuple[Tensor, Tensor]] = {}
        self._cache_ok: bool | None = None
        # bytes autograd saves for one batch's gradient graph (first batch, measured once)
        self._column_bytes: int | None = None
        self._forward_column_bytes: int | None = None  # the same for a forward pass (GGN)
        # In-place writes bump a tensor's version counter: products must not run on a
        # model that changed after the operator was built.
        self._versions = self._state_versions()
        self._graph_checked = False
        self._reduction_checked = False
        # How multi-column products are computed, decided by measurement on first use
        # and shared by every operator built on the same module afterwards.
        self._paths = _PATH_CHOICES.setdefault(self.model, _PathChoice())

    @staticmethod
    def _select(model: nn.Module, named: dict[str, Tensor], params) -> list[str]:
        if params is None:
            names = [k for k, p in named.items() if p.requires_grad]
            if not names:
                raise ValueError("model has no trainable parameters (none with requires_grad)")
            return names
        params = list(params)
        if not params:
            raise ValueError("params is empty: select at least one parameter")
        by_id = {id(p): k for k, p in named.items()}
        names = []
        for i, p in enumerate(params):
            if isinstance(p, str):
                if p not in named:
                    raise ValueError(f"params[{i}] = {p!r} is not a parameter name of the model")
                names.append(p)
            elif isinstance(p, Tensor):
                if id(p) not in by_id:
                    raise ValueError(
                        f"params[{i}] (shape {list(p.shape)}) is not a parameter of the model"
                    )
                names.append(by_id[id(p)])
            else:
                raise TypeError(f"params[{i}] must be a Tensor or a name, got {type(p).__name__}")
        if len(set(names)) != len(names):
            raise ValueError("params lists the same parameter twice")
        return names

    # ------------------------------------------------------------------ basics
    def unflatten(self, w: Tensor) -> dict[str, Tensor]:
        """Split ``w: Tensor[n]`` into named parameter views."""
        return {
            k: t.view(s)
            for k, t, s in zip(self.names, torch.split(w, self.numels), self.shapes)
        }

    def forward(self, w: Tensor, inputs: Any) -> Any:
        """Model outputs at flat parameters ``w``: a tuple of inputs is passed as the
        positional arguments, anything else (tensor, Mapping, list) as the one argument."""
        params = {**self.fixed, **self.unflatten(w)}
        return functional_call(self.model, params, model_args(inputs))

    def batch_loss(self, w: Tensor, batch: Any) -> Tensor:
        """Loss of one batch at ``w`` (scalar): its mean or its sum, per ``reduction``."""
        return self.loss_fn(self.forward(w, batch[0]), batch[1])

    def _iterate(self, progress: bool, desc: str) -> Iterator[tuple[int, int, Any]]:
        """``(index, weight, batch)`` over the data, each batch on the device.

        The weight of batch ``b`` in the dataset sum is ``n_b`` for
        ``reduction="mean"`` (:meth:`_finish` divides by ``N``) and 1 for ``"sum"``.
        The first batch of the first pass also checks that ``loss_fn`` reduces as
        declared (:func:`curvature.batches.check_reduction`: one extra forward).
        """
        it = self.batches
        total = len(it) if hasattr(it, "__len__") else None
        bar = tqdm(it, total=total, desc=desc, disable=not progress or total == 1, leave=False)
        for i, batch in enumerate(bar):
            if self._stream:
                check_pair(batch, i)
                batch = _to(batch, self.device, self.dtype)
            nb = batch_size_of(batch)
            if not self._reduction_checked:
                with torch.no_grad():
                    out = self.forward(self.w0, batch[0])
                check_reduction(self.loss_fn, out, batch[1], self.reduction, total)
                self._reduction_checked = True
            yield i, (nb if self.reduction == "mean" else 1), batch

    def _finish(self, total: Tensor, count: int, losses: list[Tensor]) -> Tensor:
        """The dataset sum over all ranks, divided by N for ``reduction="mean"`` (``count``:
        the sum of the weights from :meth:`_iterate`), with the losses checked.

        The all-reduce comes first, so that a rank with a bad batch never leaves the
        others waiting in a collective.
        """
        if not losses:
            raise ValueError("data is empty: no batches to compute the loss on")
        n = torch.tensor(float(count), dtype=torch.float64, device=total.device)
        all_reduce_sum(total)
        all_reduce_sum(n)
        stacked = torch.stack([loss.detach().reshape(()) for loss in losses])
        bad = ~torch.isfinite(stacked)
        if bool(bad.any()):  # one host sync per pass over the data
            i = int(bad.nonzero()[0, 0])
            where = f" on rank {dist.get_rank()}" if _distributed() else ""
            raise NonFiniteLossError(
                f"loss of batch {i}{where} is {float(stacked[i])} (non-finite) at the current "
                "parameters; check the data and the model"
            )
        if _distributed() and not bool(torch.isfinite(total).all()):
            raise NonFiniteLossError("a batch on another rank has a non-finite loss")
        if self.reduction == "sum":
            return total
        return total / n.to(total.dtype)

    def _state_versions(self) -> list[int]:
        return [t._version for t in (*self.model.parameters(), *self.model.buffers())]

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        if self._state_versions() != self._versions:
            raise RuntimeError(
                "the model's parameters or buffers were modified after this operator was "
                "built; an operator is taken at the parameters it was built with, so build "
                "a new one"
            )
        with eval_mode(self.model):
            yield

    # --------------------------------------------------------------- quantities
    def loss(self) -> float:
        """Dataset loss at ``w0``."""
        if self._loss0 is None:
            self.gradient()
        return float(self._loss0)

    def gradient(self, w: Tensor | None = None, progress: bool = False) -> Tensor:
        """Dataset gradient ``g(w): Tensor[n]`` (cached at ``w0``)."""
        at_w0 = w is None
        if at_w0 and self._grad0 is not None:
            return self._grad0
        w = self.w0 if w is None else w
        total = torch.zeros(self.num_params + 1, dtype=self.dtype, device=self.device)
        count, losses = 0, []
        with self._session():
            for _, nb, batch in self._iterate(progress, "gradient"):
                wr = w.detach().requires_grad_(True)
                loss = self.batch_loss(wr, batch)
                (g,) = torch.autograd.grad(loss, wr)
                total[:-1].add_(g, alpha=nb)
                total[-1].add_(loss.detach(), alpha=nb)
                count += nb
                losses.append(loss)
        total = self._finish(total, count, losses)
        if at_w0:
            self._grad0, self._loss0 = total[:-1], total[-1]
        return total[:-1]

    def hvp_exact(
        self,
        V: Tensor,
        chunk_size: int | None = None,
        progress: bool = False,
        cache_graphs: bool | None = None,
        max_cache_bytes: float = 2**30,
        max_chunk_bytes: float = 2**29,
    ) -> Tensor:
        """Exact ``H V`` for ``V: Tensor[n, k]`` in one pass over the data.

        Per batch: one forward and one first backward with ``create_graph=True``
        (shared by all ``k`` columns), then one second backward per column, batched
        with ``is_grads_batched`` in chunks of ``chunk_size`` columns. Cached
        per-batch gradient graphs are reused by every later call, which then costs
        only the second backwards. ``cache_graphs=None`` caches when the tensors
        saved by the first batch's graph, times the number of batches, fit in
        ``max_cache_bytes``; streamed data (DataLoaders) is never cached.
        ``chunk_size=None`` sizes the column chunks from that same measurement so
        that the column-batched intermediates stay under ``max_chunk_bytes``
        (:meth:`chunk_for`).

        Products of at least :data:`FUNC_MIN_COLUMNS` columns may instead use
        vectorised forward-over-reverse (:meth:`_hvp_func`): once the column path of
        the second backward is settled, the next such product also runs its first
        batch that way and keeps it only if it agrees with double backward and is
        faster.
        """
        total = torch.zeros_like(V)
        count, losses = 0, []
        k = V.shape[1]

        def vectorised(chunk: int | None) -> bool:
            # the jvp path only for blocks of at least FUNC_MIN_COLUMNS columns per pass:
            # a memory-bound chunk of 2 must not decide (or use) the path of wide blocks
            width = k if chunk is None else min(k, chunk)
            return width >= FUNC_MIN_COLUMNS and self._paths.func is not False

        with self._session(), self._differentiable():
            for i, nb, batch in self._iterate(progress, "hvp"):
                if self._paths.func and vectorised(None):
                    if self._column_bytes is None and chunk_size is None:
                        self._gradient_graph(batch, measure=True)
                chunk = self.chunk_for(k, chunk_size, max_chunk_bytes)
                if self._paths.func and vectorised(chunk):
                    hv, loss = self._hvp_func(V, batch, chunk)
                else:
                    cached = i in self._graphs
                    t0 = time.perf_counter()
                    if cached:
                        g, loss = self._graphs[i]
                    else:
                        g, loss = self._gradient_graph(batch, measure=self._column_bytes is None)
                        if cache_graphs is None and self._cache_ok is None and not self._stream:
                            self._cache_ok = self._column_bytes * len(self.batches) <= max_cache_bytes
                        if not self._stream and (
                            cache_graphs or (cache_graphs is None and self._cache_ok)
                        ):
                            self._graphs[i] = (g, loss)
                    chunk = self.chunk_for(k, chunk_size, max_chunk_bytes)
                    # decide the jvp path only once the column path is settled, so the
                    # reference time holds no timing experiment of its own
                    calibrate = (
                        vectorised(chunk) and self._paths.func is None
                        and self._paths.batched is not None
                    )
                    t1 = time.perf_counter()
                    hv = self._second_backward(g, V, chunk)
                    if calibrate:
                        self._sync(V)
                        # what this path costs from now on: the second backward alone
                        # once the graph is kept, else graph and second backward
                        t_now = time.perf_counter() - (t1 if i in self._graphs else t0)
                        self._calibrate_func(V, batch, chunk, hv, t_now)
                total.add_(hv, alpha=nb)
                count += nb
                losses.append(loss)
        return self._finish(total, count, losses)

    def chunk_for(
        self, k: int, chunk_size: int | None, max_chunk_bytes: float, per_column: int | None = None
    ) -> int | None:
        """Columns per vectorised pass for a ``k``-column product (``None``: all at once).

        An explicit ``chunk_size`` wins. Otherwise each column of a vmapped pass holds
        about one copy of the tensors autograd saves for a batch's gradient graph (its
        tangents in forward-over-reverse, its cotangents in a batched second backward),
        so the chunk is ``max_chunk_bytes`` over that measured size (``per_column``,
        default the exact-product measurement), at least 1.
        """
        if chunk_size is not None:
            return max(1, int(chunk_size))
        per_column = self._column_bytes if per_column is None else per_column
        if not per_column:
            return None
        fit = int(max_chunk_bytes // per_column)
        return None if fit >= k else max(1, fit)

    def _forward_bytes(self, batch: Any) -> int:
        """Bytes autograd saves for one forward pass and loss of ``batch`` (measured)."""
        with self._differentiable(), _saved_bytes() as nbytes:
            self.loss_fn(self.model(*model_args(batch[0])), batch[1])
        return max(nbytes[0], 1)

    @staticmethod
    def _sync(t: Tensor) -> None:
        if t.is_cuda:
            torch.cuda.synchronize(t.device)

    def _hvp_func(self, V: Tensor, batch: Any, chunk_size: int | None) -> tuple[Tensor, Tensor]:
        """``H_b V`` by forward-over-reverse (``jvp`` of ``grad``) vectorised over columns.

        The primal forward and backward are shared by the ``k`` tangents, which on
        conv nets costs about 1 gradient per column against 2.5 for double backward.
        """

        def loss_at(w):
            loss = self.batch_loss(w, batch)
            return loss, loss.detach()

        grad_fn = grad(loss_at, has_aux=True)

        def one(v):
            (_, loss), (hv, _) = jvp(grad_fn, (self.w0,), (v,))
            return hv, loss

        hv, loss = vmap(one, in_dims=1, out_dims=(1, 0), chunk_size=chunk_size)(V)
        return hv, loss[0]

    def _calibrate_func(
        self, V: Tensor, batch: Any, chunk_size: int | None, reference: Tensor, t_reference: float
    ) -> None:
        """Decide once whether wide products go through :meth:`_hvp_func`.

        The vectorised forward-over-reverse path is used only if it reproduces the
        double-backward products of this block to ``1e4`` units of roundoff and is
        faster. The check guards against wrong forward-mode rules: torch.func's
        Hessians of affine LayerNorm are wrong in torch 2.13 along some code paths
        (tests/test_engine.py), and curvlinops' products on a ViT were measured 1.6e-2
        off (reports/benchmark).
        """
        # the whole block of the first batch: vmap's per-column cost depends on the
        # number of columns, so a smaller trial would misjudge it
        cols = V.shape[1]
        try:
            # the first call of a transform on a model is several times slower than
            # later ones (measured 4.5x on ResNet-20), and the first calls at a new
            # width pay for fresh memory (a ViT's 80-column block: 9 ms per column on
            # the second call, 5 from the third): warm up on the whole block, then
            # keep the faster of two timed runs
            self._hvp_func(V, batch, chunk_size)
            t_func = math.inf
            for _ in range(2):
                t0 = time.perf_counter()
                hv, _ = self._hvp_func(V, batch, chunk_size)
                self._sync(V)
                t_func = min(t_func, (time.perf_counter() - t0) / cols)
        except Exception:  # no forward-mode or batching rule somewhere: keep double backward
            self._paths.func = False
            return
        ref = reference
        scale = torch.linalg.vector_norm(ref).clamp_min(torch.finfo(V.dtype).tiny)
        err = float(torch.linalg.vector_norm(hv - ref) / scale)
        self._paths.func = (
            err <= 1e4 * torch.finfo(V.dtype).eps and t_func < t_reference / V.shape[1]
        )

    @contextlib.contextmanager
    def _differentiable(self) -> Iterator[None]:
        """Let autograd differentiate the selected parameters (restored afterwards)."""
        flags = [p.requires_grad for p in self.param_list]
        try:
            for p in self.param_list:
                p.requires_grad_(True)
            yield
        finally:
            for p, flag in zip(self.param_list, flags):
                p.requires_grad_(flag)

    def _gradient_graph(self, batch: Any, measure: bool = False) -> tuple[Tensor, Tensor]:
        """Flat batch gradient with its graph (``create_graph=True``) and the loss; with
        ``measure``, the bytes autograd saved for it go to ``_column_bytes``."""
        with _saved_bytes() if measure else contextlib.nullcontext([0]) as nbytes:
            loss = self.loss_fn(self.model(*model_args(batch[0])), batch[1])
            if not self._graph_checked:
                _check_second_derivatives(loss)
                self._graph_checked = True
            grads = torch.autograd.grad(
                loss, self.param_list, create_graph=True, allow_unused=True
            )
        if measure:
            self._column_bytes = max(nbytes[0], 1)
        g = torch.cat(
            [torch.zeros_like(p).reshape(-1) if t is None else t.reshape(-1)
             for p, t in zip(self.param_list, grads)]
        )
        return g, loss.detach()

    def _second_backward(self, g: Tensor, V: Tensor, chunk_size: int | None) -> Tensor:
        """``d(g . v)/dw`` for every column ``v`` of ``V``; the graph of ``g`` is kept.

        Columns go through one vmapped backward (``is_grads_batched``) or one backward
        each. Which is faster depends on the model: measured on digits MLPs, the
        batched pass costs 0.4x the loop per column at 2.4k parameters and 3.4x at 38k.
        The first multi-column block of an operator times both on its first columns
        and the faster is kept.
        """
        k = V.shape[1]
        if not g.requires_grad:  # loss linear in the parameters: zero Hessian
            return torch.zeros_like(V)
        out = torch.empty_like(V)
        step = k if chunk_size is None else max(1, int(chunk_size))
        for start in range(0, k, step):
            block = V[:, start : start + step]
            try:
                if block.shape[1] > 1 and self._paths.batched is None:
                    out[:, start : start + step] = self._time_both(g, block)
                elif block.shape[1] > 1 and self._paths.batched:
                    out[:, start : start + step] = self._flat_grad(g, block.T, batched=True).T
                else:
                    out[:, start : start + step] = self._loop_grad(g, block)
            except RuntimeError as err:
                if self._paths.batched is not False and block.shape[1] > 1 and "vmap" in str(err).lower():
                    self._paths.batched = False  # an op without a batching rule: loop instead
                    return self._second_backward(g, V, chunk_size)
                raise self._no_double_backward(err) from err
        return out

    def _loop_grad(self, g: Tensor, block: Tensor) -> Tensor:
        return torch.stack([self._flat_grad(g, v, batched=False) for v in block.T], dim=1)

    def _time_both(self, g: Tensor, block: Tensor) -> Tensor:
        """Time the first ``FUNC_MIN_COLUMNS`` columns batched and looped, keep the faster
        path (per column) for the rest of ``block`` and for later products."""
        probe = block[:, :FUNC_MIN_COLUMNS]
        times = []
        for batched in (True, False):
            self._sync(block)
            t0 = time.perf_counter()
            if batched:
                head = self._flat_grad(g, probe.T, batched=True).T
            else:
                self._loop_grad(g, probe)
            self._sync(block)
            times.append(time.perf_counter() - t0)
        self._paths.batched = times[0] <= times[1]
        rest = block[:, probe.shape[1] :]
        if rest.shape[1] == 0:
            return head
        tail = self._flat_grad(g, rest.T, batched=True).T if self._paths.batched else self._loop_grad(g, rest)
        return torch.cat([head, tail], dim=1)

    def _flat_grad(self, g: Tensor, v: Tensor, batched: bool) -> Tensor:
        hs = torch.autograd.grad(
            g, self.param_list, v, retain_graph=True, allow_unused=True, is_grads_batched=batched
        )
        lead = (v.shape[0],) if batched else ()
        return torch.cat(
            [torch.zeros(*lead, p.numel(), dtype=v.dtype, device=v.device) if h is None
             else h.reshape(*lead, -1) for p, h in zip(self.param_list, hs)],
            dim=-1,
        )

    @staticmethod
    def _no_double_backward(err: Exception) -> DoubleBackwardError:
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

    def default_eps(self, V: Tensor, central: bool) -> Tensor:
        """Largest (and first) finite-difference step per column of ``V``, on ``v``:
        ``c (1 + ||w||) / ||v||``, ``c = u^(1/3)`` (central) or ``u^(1/2)`` (forward).
        The step actually used is adapted per column (:mod:`curvature._fd`)."""
        scale = _fd.start_step(self, central)
        norms = torch.linalg.vector_norm(V, dim=0)
        return torch.where(norms > 0, scale / norms, torch.ones_like(norms))

    def hvp_fd(
        self, V: Tensor, eps: float | None, central: bool, progress: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Finite-difference ``H V`` from gradients only, with an error estimate per column.

        Richardson-extrapolated differences at two steps, the step adapted per
        column to balance truncation and the measured gradient roundoff
        (:func:`curvature._fd.fd_products`). Returns ``(Tensor[n, k], Tensor[k])``:
        the products and the estimated ``||error_j|| / ||v_j||`` (float64, CPU).
        Cost per column: 2 gradients (forward) or 4 (central), up to 3x that when the
        step is corrected; once per problem 4 more (the roundoff measurement).
        """
        return _fd.fd_products(self, V, eps, central, progress)

    def ggn(
        self,
        V: Tensor,
        chunk_size: int | None = None,
        progress: bool = False,
        max_chunk_bytes: float = 2**29,
    ) -> Tensor:
        """Generalised Gauss-Newton product ``G V = J^T H_out J V`` in one pass over the data.

        ``chunk_size=None`` vmaps as many columns at once as keep about one copy per
        column of the first batch's forward activations under ``max_chunk_bytes``.
        """
        total = torch.zeros_like(V)
        count, losses = 0, []
        with self._session():
            for _, nb, batch in self._iterate(progress, "ggn"):
                if chunk_size is None and self._forward_column_bytes is None:
                    self._forward_column_bytes = self._forward_bytes(batch)
                chunk = self.chunk_for(
                    V.shape[1], chunk_size, max_chunk_bytes, self._forward_column_bytes
                )
                inputs, targets = batch

                def model_at(w, inputs=inputs):
                    return self.forward(w, inputs)

                out, pullback = vjp(model_at, self.w0)

                def out_loss(z, targets=targets):
                    return self.loss_fn(z, targets)

                # H_out is symmetric, so H_out u is the pullback of u through grad(loss)
                # (reverse-over-reverse on the small output space).
                _, out_hvp = vjp(grad(out_loss), out.detach())

                def one(v, model_at=model_at, pullback=pullback, out_hvp=out_hvp):
                    _, jv = jvp(model_at, (self.w0,), (v,))
                    (hjv,) = out_hvp(jv)
                    (gv,) = pullback(hjv)
                    return gv

                total.add_(vmap(one, in_dims=1, out_dims=1, chunk_size=chunk)(V), alpha=nb)
                losses.append(self.loss_fn(out.detach(), targets))
                count += nb
        return self._finish(total, count, losses)

    def dense_hessian(self) -> Tensor:
        """Dense ``Tensor[n, n]`` Hessian: rows ``d(g . e_i)/dw`` by double backward (small models).

        ``torch.func.hessian`` is deliberately not used: in torch 2.13 it returns a
        wrong, non-symmetric matrix for affine LayerNorm (see tests/test_engine.py).
        """
        n = self.num_params
        total = torch.zeros(n, n, dtype=self.dtype, device=self.device)
        eye = torch.eye(n, dtype=self.dtype, device=self.device)
        count, losses = 0, []
        with self._session(), self._differentiable():
            for _, nb, batch in self._iterate(False, "hessian"):
                g, loss = self._gradient_graph(batch)
                total.add_(self._second_backward(g, eye, chunk_size=256), alpha=nb)
                losses.append(loss)
                count += nb
        return self._finish(total, count, losses)
