"""Keeping a streamed dataset in memory after its first pass, when that is exact.

A list of batches is moved to the device once; a DataLoader (any re-iterable) is
re-read, re-collated and re-moved on every pass, and the per-batch gradient graphs
cannot be reused because its batches may change. :class:`DataKeeper` gives a
re-iterable the speed of a list when keeping it changes no result:

1. The first pass keeps the moved batches while their tensors total at most
   ``max_data_bytes`` (else it lets them go: streamed).
2. The second pass starts a fresh iteration and compares its first batch with the
   kept one, exactly (same structure, ``torch.equal`` tensors). Equal: the kept list
   is used from then on (and the graph cache may apply, as for a list).
3. A changed first batch is still exact to keep when the loader is a DataLoader whose
   sampler only reorders the whole dataset (``shuffle=True``: a ``RandomSampler``
   without replacement over every example, batches of a ``BatchSampler`` that drop
   none) *and* every example of the fresh first batch is, byte for byte, an example
   of the kept pass. Then every pass holds the same examples grouped differently, and
   the dataset loss ``sum_b n_b L_b / N`` is the mean of the per-example losses in
   any grouping (the assumption under which batch-size weighting is exact at all;
   the model runs in eval mode, so BatchNorm uses its running statistics); only the
   rounding of the sum differs.
4. Anything else -- random augmentation (examples that change between passes),
   a sampler with replacement or a subset, ``drop_last`` dropping different examples,
   a reordering iterable that is not a DataLoader -- streams, with one warning: every
   product then sees different data, i.e. a different operator.

``cache_data=True`` keeps the first pass without the check (the caller vouches for
it); ``cache_data=False`` always streams. :attr:`DataKeeper.mode` says what was done.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from curvature.batches import batch_size_of
from curvature.errors import DataWarning

__all__ = ["DataKeeper", "examples_of", "reorders_only", "same_batch"]

PENDING = "streamed (first pass pending)"


def _leaves(obj: Any) -> Iterator[Any]:
    """Leaves of a nested batch: tensors and other non-container objects, in order."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield k
            yield from _leaves(v)
    elif isinstance(obj, (tuple, list)):
        yield len(obj)
        for item in obj:
            yield from _leaves(item)
    else:
        yield obj


def batch_bytes(batch: Any) -> int:
    """Bytes held by the tensors of a batch."""
    return sum(t.nbytes for t in _leaves(batch) if isinstance(t, Tensor))


def same_batch(a: Any, b: Any) -> bool:
    """Whether two batches are exactly equal: same structure, dtypes, shapes, values."""
    la, lb = list(_leaves(a)), list(_leaves(b))
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, Tensor) or isinstance(y, Tensor):
            if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
                return False
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


def examples_of(batch: Any) -> list[bytes] | None:
    """One digest per example of ``batch`` (its rows of every tensor, exact bytes), or
    ``None`` when some tensor has no leading batch dimension (not comparable)."""
    n = batch_size_of(batch)
    tensors = [t for t in _leaves(batch) if isinstance(t, Tensor)]
    if any(t.ndim == 0 or t.shape[0] != n for t in tensors):
        return None
    rows = [t.detach().cpu().contiguous().reshape(n, -1).numpy() for t in tensors]
    out = []
    for j in range(n):
        h = hashlib.blake2b(digest_size=16)
        for r in rows:
            h.update(str(r.dtype).encode())
            h.update(r[j].tobytes())
        out.append(h.digest())
    return out


def reorders_only(loader: Any) -> bool:
    """Whether ``loader`` is a DataLoader whose every pass holds every example of its
    dataset exactly once, in a random order (``shuffle=True``, no ``drop_last`` loss)."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    if not isinstance(loader, DataLoader):
        return False
    sampler, batches = loader.sampler, loader.batch_sampler
    if type(sampler) is not RandomSampler or sampler.replacement:
        return False
    try:
        n = len(loader.dataset)
    except TypeError:
        return False
    if sampler.num_samples != n or type(batches) is not BatchSampler:
        return False
    return not batches.drop_last or n % batches.batch_size == 0


class DataKeeper:
    """The first pass of a re-iterable kept (moved), and the decision to use it.

    Args:
        loader: the re-iterable as the user passed it (inspected, never modified).
        trust: ``True`` keeps the first pass without the second-pass check.
        max_bytes: keep only while the moved batches total at most this many bytes.
    """

    def __init__(self, loader: Iterable, trust: bool, max_bytes: float) -> None:
        self.loader = loader
        self.trust = trust
        self.max_bytes = max_bytes
        self.kept: list | None = None
        """The complete first pass (moved batches), once it has finished."""
        self.mode = PENDING
        """What was done: ``"streamed (first pass pending)"``, ``"kept"``, ``"kept
        (...)"`` or ``"streamed (reason)"``."""
        self.decided = False
        self.generation = 0
        """Counts the recording passes begun: results cached for the batches of a pass
        (gradient graphs) are valid for the kept list only if that pass was recorded
        under the current generation."""

    def record(self, stream: Iterator[Any]) -> Iterator[Any]:
        """The first pass: yields ``stream``'s batches and keeps them if they fit."""
        self.generation += 1
        kept: list | None = []
        used = 0
        for batch in stream:
            if kept is not None:
                used += batch_bytes(batch)
                if used > self.max_bytes:
                    kept = None
                    self.mode = (
                        f"streamed (the data exceed max_data_bytes={self.max_bytes:.4g})"
                    )
                    self.decided = True
                else:
                    kept.append(batch)
            yield batch
        if kept is not None and not self.decided:  # the pass ran to its end
            self.kept = kept

    def decide(self, stream: Iterator[Any]) -> list | Iterator[Any]:
        """The second pass: the kept list if keeping is exact, else the stream (its
        first batch already drawn for the check, and yielded first)."""
        self.decided = True
        kept = self.kept
        if self.trust:
            self.mode = "kept (cache_data=True, not checked)"
            return kept
        first = next(stream, None)
        if first is None:
            self.mode = "streamed (the data were empty on the second pass)"
            return stream
        if same_batch(first, kept[0]):
            self.mode = "kept"
            stream.close()
            return kept
        if reorders_only(self.loader) and self._all_kept(first):
            self.mode = (
                "kept (shuffling sampler: the same examples in another order; the dataset "
                "sum does not depend on the order)"
            )
            stream.close()
            return kept
        self.kept = None
        if reorders_only(self.loader):
            why = "its examples change between passes (random augmentation?)"
        else:
            why = "its first batch changed between passes (a shuffling sampler or random augmentation)"
        self.mode = f"streamed ({why})"
        warnings.warn(
            f"the data are streamed on every pass: {why}, so every product sees different "
            "data (a different operator); pass a list of batches, a loader without "
            "augmentation, or cache_data=True to keep the first pass",
            DataWarning,
            stacklevel=4,
        )
        return chain([first], stream)

    def _all_kept(self, batch: Any) -> bool:
        fresh = examples_of(batch)
        if fresh is None:
            return False
        known: set[bytes] = set()
        for b in self.kept:
            keys = examples_of(b)
            if keys is None:
                return False
            known.update(keys)
        return all(k in known for k in fresh)
