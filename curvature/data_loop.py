"""The data loop: the one place that walks over a dataset and sums over it.

Every dataset quantity of the package -- the gradient, every curvature product
(exact, finite differences, GGN, dense Hessian), the loss landscape, the monitor's
per-example statistics, the pipeline's accuracy and example count, the training
evaluation -- is one call of :meth:`DataLoop.accumulate`. This room owns

* iterating the batches: a list of batches is checked and moved to the device once,
  any other iterable (a DataLoader) is streamed and moved batch by batch on every
  pass (batch structure, sizes and moves: :mod:`curvature.batches`) -- or, with
  ``cache_data``, kept after its first pass when that is exact
  (:mod:`curvature.kept_data`), and from then on iterated like a list,
* batch-size weighting and the loss reduction: with ``reduction="mean"`` batch ``b``
  has weight ``n_b`` and the sum is divided by ``N = sum_b n_b`` (exactly what one
  big batch gives, for batches of any size); with ``"sum"`` every weight is 1 and
  nothing is divided,
* the all-reduce of the sums over ranks when ``torch.distributed`` is initialised
  (``data`` is then this rank's shard), done *before* the non-finite check so that a
  rank with a bad batch never leaves the others waiting in a collective,
* the non-finite loss check naming the batch (:class:`NonFiniteLossError`),
* eval mode and its restoration, and the refusal to run on a model whose parameters
  or buffers were written after the loop was built (their version counters moved).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from curvature.batches import (
    as_batches,
    batch_size_of,
    check_pair,
    check_reduction_name,
    to_device,
)
from curvature.errors import NonFiniteLossError
from curvature.kept_data import DataKeeper

__all__ = [
    "DataLoop", "NonFiniteLossError", "all_reduce_sum", "eval_mode", "is_distributed",
    "state_tensors", "state_versions",
]

Step = Callable[[int, Any], "tuple[Tensor, Tensor | None]"]
"""``step(index, batch) -> (contribution, loss)``: one batch's term of a dataset sum
(shaped like the running total) and its loss (a scalar, a vector of losses at several
points, or ``None`` for sums that hold no loss)."""


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` in place over ranks when ``torch.distributed`` is initialised; return it."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        if any(training for _, training in modes):  # the walk of model.eval() costs ~1-2 ms
            model.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training


def state_tensors(model: nn.Module) -> list[Tensor]:
    """The model's parameters and buffers (whose versions :func:`state_versions` reads)."""
    return [*model.parameters(), *model.buffers()]


def state_versions(model: nn.Module | list[Tensor]) -> list[int]:
    """Version counters of the model's parameters and buffers (in-place writes bump them);
    a list of tensors (:func:`state_tensors`, collected once) is read without walking the
    module tree again (0.8 ms per pass on a ResNet-20)."""
    tensors = model if isinstance(model, list) else state_tensors(model)
    return [t._version for t in tensors]


class DataLoop:
    """A dataset of ``(inputs, targets)`` batches and the weighted sums over it.

    Args:
        data: one ``(inputs, targets)`` batch or an iterable of batches (a list is
            moved once, anything else is streamed; see :func:`curvature.batches.as_batches`).
        device, dtype: where batches go; floating tensors are cast to ``dtype``
            (``None``: kept, integer tensors always kept). ``device=None`` leaves them.
        reduction: ``"mean"`` (weights ``n_b``, divided by ``N``) or ``"sum"``.
        model: put in eval mode during every pass (its flags restored) and checked
            not to have been modified since this loop was built (``None``: neither).
        first_batch: called as ``first_batch(batch, num_batches)`` on the first batch
            of a pass until that pass's first step completes without raising (the
            loss-reduction check). It may return a callable ``finish()``, called after
            the step of that batch: a check the step itself can do on the forward it runs
            anyway defers to it and finishes whatever is left.
        cache_data: for a streamed iterable: ``None`` keeps the (moved) first pass when
            it fits ``max_data_bytes`` and the second pass shows that keeping it is
            exact (:mod:`curvature.kept_data`), ``True`` keeps it unchecked (still
            bounded), ``False`` (default here) streams every pass.
        max_data_bytes: memory bound of the kept batches (bytes of their tensors).
    """

    def __init__(
        self,
        data: Any,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        reduction: str = "mean",
        model: nn.Module | None = None,
        first_batch: Callable[[Any, int | None], None] | None = None,
        cache_data: bool | None = False,
        max_data_bytes: float = 2**30,
    ) -> None:
        if cache_data not in (None, True, False):
            raise ValueError(f"cache_data must be None, True or False, got {cache_data!r}")
        if not max_data_bytes >= 0:
            raise ValueError(f"max_data_bytes must be >= 0, got {max_data_bytes!r}")
        self.reduction = check_reduction_name(reduction)
        self.device = None if device is None else torch.device(device)
        self.dtype = dtype
        self.model = model
        self._first_batch = first_batch
        self._finish: Callable[[], None] | None = None
        batches = as_batches(data)
        self.streamed = not isinstance(batches, (list, tuple))
        """Whether the batches are re-read (and moved) on every pass."""
        self._keeper: DataKeeper | None = None
        if self.streamed:
            self.batches: Iterable = batches
            if cache_data is not False:
                self._keeper = DataKeeper(batches, bool(cache_data), max_data_bytes)
        else:
            for i, b in enumerate(batches):
                check_pair(b, i)
            self.batches = [self._move(b) for b in batches]
            if not self.batches:
                raise ValueError("data is empty: no batches to compute the loss on")
        self._state = state_tensors(model) if model is not None else []
        self._versions = state_versions(self._state) if model is not None else None

    def _move(self, batch: Any) -> Any:
        return batch if self.device is None else to_device(batch, self.device, self.dtype)

    @property
    def data_mode(self) -> str:
        """How the batches are iterated: ``"list"`` (given as a list, moved once),
        ``"streamed"`` (re-read every pass), ``"kept"`` / ``"kept (reason)"`` (a
        re-iterable kept after its first pass) or ``"streamed (reason)"``."""
        if self._keeper is not None:
            return self._keeper.mode
        return "streamed" if self.streamed else "list"

    @property
    def cache_key(self) -> tuple[int, int] | None:
        """Per-batch results of a pass (gradient graphs at fixed parameters) may be
        kept under their batch index and reused by later passes while this key stays
        the same; ``None``: not reusable (streamed batches may change). A re-iterable
        being kept gets its key on its recorded first pass, so that pass's graphs serve
        the kept batches; a key change (a new recording, a decision to stream)
        invalidates what was kept under the old one."""
        keeper = self._keeper
        if not self.streamed:
            return (0, 0) if keeper is None else (1, keeper.generation)
        if keeper is None or keeper.decided or keeper.generation == 0:
            return None
        return (1, keeper.generation)

    def _stream(self) -> Iterator[Any]:
        for i, batch in enumerate(self.batches):
            check_pair(batch, i)
            yield self._move(batch)

    def _source(self) -> Iterable:
        """The batches of one pass (checked and moved); switches to the kept first
        pass when the keeper decides so, before the pass begins."""
        keeper = self._keeper
        if not self.streamed:
            return self.batches
        if keeper is None or (keeper.decided and keeper.kept is None):
            return self._stream()
        if keeper.kept is None:
            return keeper.record(self._stream())
        source = keeper.decide(self._stream())
        if isinstance(source, list):
            self.batches, self.streamed = source, False
        return source

    @property
    def num_batches(self) -> int | None:
        """Number of batches, ``None`` for an iterable without a length."""
        return len(self.batches) if hasattr(self.batches, "__len__") else None

    def weight(self, batch: Any) -> int:
        """Weight of ``batch`` in a dataset sum: ``n_b`` (``"mean"``) or 1 (``"sum"``)."""
        return batch_size_of(batch) if self.reduction == "mean" else 1

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """The model (if any) unchanged since construction, in eval mode for the block."""
        if self.model is None:
            yield
            return
        if state_versions(self._state) != self._versions:
            raise RuntimeError(
                "the model's parameters or buffers were modified after this operator was "
                "built; an operator is taken at the parameters it was built with, so build "
                "a new one"
            )
        with eval_mode(self.model):
            yield

    def iterate(self, progress: bool = False, desc: str = "") -> Iterator[tuple[int, Any]]:
        """``(index, batch)`` over the data, each batch checked and on the device."""
        batches = self._source()
        total = self.num_batches
        if progress and total != 1:
            batches = tqdm(batches, total=total, desc=desc, leave=False)
        for i, batch in enumerate(batches):
            hook = self._first_batch
            self._finish = hook(batch, total) if hook is not None else None
            yield i, batch
            if hook is not None:  # the step of the first batch returned
                self._finish_first_batch()
                self._first_batch = None

    def _finish_first_batch(self) -> None:
        """Run what the first-batch hook left for after the step (once)."""
        finish, self._finish = self._finish, None
        if finish is not None:
            finish()

    def accumulate(
        self,
        step: Step,
        total: Tensor,
        *,
        weighted: bool = True,
        progress: bool = False,
        desc: str = "",
        first_point: int | None = None,
    ) -> Tensor:
        """The dataset sum ``sum_b c_b`` of ``step``'s contributions, over all ranks.

        ``weighted=True``: ``c_b`` is the contribution times the batch weight
        (:meth:`weight`) and the result is divided by ``N`` under ``"mean"``: the
        dataset mean of a per-batch mean, or the dataset sum under ``"sum"``.
        ``weighted=False``: a plain sum of the contributions (counts).
        ``total`` (the running sum, written in place) is returned after the
        all-reduce and the check that every batch loss ``step`` returned is finite;
        ``first_point`` names a vector of losses as points ``first_point + j``.
        """
        count, seen, losses = 0, 0, []
        with self.session():
            for i, batch in self.iterate(progress, desc):
                try:
                    contribution, loss = step(i, batch)
                except Exception:
                    # a wrong loss declaration explains a failing step better than the
                    # step's own error: finish the first-batch check before re-raising
                    self._finish_first_batch()
                    raise
                w = self.weight(batch) if weighted else 1
                total.add_(contribution, alpha=w)
                count += w
                seen += 1
                if loss is not None:
                    losses.append(loss.detach().reshape(-1))
        if not seen:
            raise ValueError("data is empty: no batches to compute the loss on")
        n = torch.tensor(float(count), dtype=torch.float64, device=total.device)
        all_reduce_sum(total)
        all_reduce_sum(n)
        if losses:
            self._check_finite(torch.stack(losses), first_point)
        if is_distributed() and not bool(torch.isfinite(total).all()):
            raise NonFiniteLossError("a batch on another rank has a non-finite loss")
        if weighted and self.reduction == "mean":
            return total / n.to(total.dtype)
        return total

    @staticmethod
    def _check_finite(losses: Tensor, first_point: int | None) -> None:
        """Raise :class:`NonFiniteLossError` naming the first batch (and point) whose loss
        is not finite; ``losses: Tensor[batches, points]`` (one host sync)."""
        bad = ~torch.isfinite(losses)
        if not bool(bad.any()):
            return
        i, j = (int(t) for t in bad.nonzero()[0])
        where = f" on rank {dist.get_rank()}" if is_distributed() else ""
        at = "the current parameters" if first_point is None else f"point {first_point + j}"
        raise NonFiniteLossError(
            f"loss of batch {i}{where} is {float(losses[i, j])} (non-finite) at {at}; "
            "check the data and the model"
        )
