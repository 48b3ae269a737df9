"""Batches: what one ``(inputs, targets)`` batch may hold, its size, its device moves,
and the check that ``loss_fn`` reduces its batch the way the caller declared.

Inputs may be a tensor, any :class:`collections.abc.Mapping` (``dict``,
``collections.UserDict``, HuggingFace ``BatchEncoding``), or tuples/lists of these,
nested. Tuple inputs are passed to the model as positional arguments, anything else
as its one argument (see :meth:`curvature.risk.EmpiricalRisk.forward`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from curvature.errors import DataWarning

__all__ = [
    "as_batches", "batch_size_of", "check_pair", "check_reduction", "map_tensors", "model_args",
    "to_device",
]

REDUCTIONS = ("mean", "sum")


def _is_inputs(obj: Any) -> bool:
    """Whether ``obj`` can be the inputs of one batch: a tensor or a Mapping."""
    return isinstance(obj, (Tensor, Mapping))


def _is_batch(data: Any) -> bool:
    """Whether ``data`` is one ``(inputs, targets)`` pair rather than a list of batches.

    A pair whose first element is a tensor or a Mapping is one batch. Tuple/list
    inputs make ``((x1, x2), y)`` look like a list of two batches; it is one batch
    when its second element (the targets) is a tensor or a Mapping, which the second
    element of a list of batches (itself a pair) never is.
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        return False
    if _is_inputs(data[0]):
        return True
    return isinstance(data[0], (tuple, list)) and _is_inputs(data[1])


def as_batches(data: Any) -> Iterable:
    """``data`` as an iterable of ``(inputs, targets)`` batches.

    A single ``(inputs, targets)`` pair (inputs a tensor, a Mapping such as a dict or
    a HuggingFace ``BatchEncoding``, or a tuple/list of them) becomes a one-element
    list; any other iterable (list of batches, DataLoader) is returned as is.
    """
    if _is_batch(data):
        return [tuple(data)]
    if isinstance(data, (Tensor, Mapping)) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be one (inputs, targets) batch or an iterable of such batches, "
            f"got {type(data).__name__}"
        )
    return data


def _first_tensor(obj: Any) -> Tensor | None:
    """The first tensor of at least one dimension in ``obj``, depth first (Mappings in
    their iteration order, tuples/lists in order), or ``None``."""
    if isinstance(obj, Tensor):
        return obj if obj.ndim > 0 else None
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for item in obj:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def check_pair(batch: Any, index: int | None = None) -> None:
    """Raise ``TypeError`` unless ``batch`` is an ``(inputs, targets)`` pair."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return
    where = "" if index is None else f" {index}"
    what = type(batch).__name__
    if isinstance(batch, Mapping):
        what += f" with keys {list(batch.keys())[:6]}"
    elif isinstance(batch, (tuple, list)):
        what += f" of length {len(batch)}"
    raise TypeError(
        f"batch{where} is a {what}, but every batch must be an (inputs, targets) pair; "
        "for a dataset of dicts that hold the labels, have it return (inputs, labels) "
        "or split each batch, e.g. [({k: v for k, v in b.items() if k != 'labels'}, "
        "b['labels']) for b in loader]"
    )


def batch_size_of(batch: Any) -> int:
    """Number of examples in ``(inputs, targets)``: the leading dimension of the first
    tensor of at least one dimension in the inputs.

    The inputs are searched depth first: Mappings (``dict``, ``UserDict``,
    ``BatchEncoding``) in their iteration order, tuples and lists in order. Tensors
    further on are not compared with it (a graph's ``edge_index [2, E]`` or a
    ``head_mask`` legitimately has another leading dimension), so put a batch-major
    tensor first. Raises ``TypeError`` for a batch that is not a pair and
    ``ValueError`` for inputs without a tensor of at least one dimension.
    """
    check_pair(batch)
    t = _first_tensor(batch[0])
    if t is None:
        raise ValueError(
            f"cannot tell the batch size: the inputs ({type(batch[0]).__name__}) contain "
            "no tensor with a leading (batch) dimension"
        )
    return int(t.shape[0])


def _rebuild(obj: Mapping, items: dict) -> Any:
    """A Mapping of ``type(obj)`` holding ``items`` (a ``dict`` if the type cannot be
    built from a dict, e.g. ``defaultdict``); ``obj`` itself is never written."""
    if type(obj) is dict:
        return items
    try:
        new = type(obj)(items)
    except Exception:  # noqa: BLE001 - a constructor that takes no dict: a plain dict
        return items
    if isinstance(new, Mapping) and list(new.keys()) == list(items.keys()):
        return new
    return items


def map_tensors(fn: Callable[[Tensor], Tensor], obj: Any, plain: bool = False) -> Any:
    """Apply ``fn`` to every tensor in a nested structure of Mappings, tuples and lists.

    Containers are rebuilt with their own type (named tuples too; a Mapping whose
    type cannot be built from a dict, e.g. ``defaultdict``, becomes a ``dict``);
    ``plain=True`` makes every Mapping a ``dict`` (what ``torch.func.vmap`` can split).
    Other objects pass through unchanged; ``obj`` itself is never written.
    """
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        items = {k: map_tensors(fn, v, plain) for k, v in obj.items()}
        return items if plain else _rebuild(obj, items)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # named tuple
        return type(obj)(*(map_tensors(fn, o, plain) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(fn, o, plain) for o in obj)
    return obj


def to_device(obj: Any, device: torch.device | str, dtype: torch.dtype | None) -> Any:
    """Move every tensor in a nested structure to ``device``; floating tensors are cast
    to ``dtype`` (``None``: kept), integer and bool tensors (``input_ids``,
    ``attention_mask``, class labels) keep their dtype.

    Tuples (named tuples too), lists and Mappings are rebuilt with their own type where
    it can be built from a dict (``dict``, ``OrderedDict``, ``UserDict``,
    ``BatchEncoding``), else as a ``dict``; other objects pass through unchanged.
    """

    def move(t: Tensor) -> Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype, non_blocking=True)
        return t.to(device=device, non_blocking=True)

    return map_tensors(move, obj)


def model_args(inputs: Any) -> tuple:
    """The positional arguments of the model call: a tuple of inputs is the arguments,
    anything else (a tensor, a Mapping, a list) the one argument."""
    return inputs if isinstance(inputs, tuple) else (inputs,)


def check_reduction_name(reduction: Any) -> str:
    """``reduction`` if it is ``"mean"`` or ``"sum"``, else one ``ValueError``."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"reduction must be 'mean' (loss_fn averages over its batch) or 'sum' "
            f"(loss_fn sums over its batch), got {reduction!r}"
        )
    return reduction


def check_reduction(
    loss_fn: Callable[[Any, Any], Tensor],
    outputs: Any,
    targets: Any,
    reduction: str,
    num_batches: int | None = None,
) -> str | None:
    """Check that ``loss_fn`` reduces its batch as ``reduction`` declares.

    Deterministic test on one batch: the loss of the batch repeated twice,
    ``loss_fn(cat([out, out]), cat([y, y]))``, equals ``loss_fn(out, y)`` for a loss
    that averages over its examples and is twice it for one that sums. Returns the
    kind found (``"mean"``/``"sum"``), or ``None`` when the test cannot tell: outputs
    or targets that are not tensors with a batch dimension, a loss that fails on the
    repeated batch, a zero or non-finite loss, or any other ratio (a loss coupling
    the examples of a batch, e.g. in-batch negatives). It never guesses.

    A mismatch raises ``ValueError`` when the data has several batches or an unknown
    number (``num_batches`` not 1): the result would be a third operator,
    ``sum_b (n_b / N) H(S_b)`` for a summed loss under ``"mean"`` or ``sum_b H(L_b)``
    for a mean loss under ``"sum"``, neither the Hessian of the dataset's mean loss
    nor of its summed loss -- a wrong answer, which this project refuses instead of
    returning; the fix is one argument. With exactly one batch both reductions give
    the Hessian of ``loss_fn`` on that batch, so nothing is wrong yet: a
    ``UserWarning`` says so and names the fix. A loss that is not a scalar raises
    ``ValueError``.
    """
    if not (isinstance(outputs, Tensor) and isinstance(targets, Tensor)):
        return None
    with torch.no_grad():
        single = loss_fn(outputs, targets)
        if not isinstance(single, Tensor):
            return None
        if single.numel() != 1:
            raise ValueError(
                f"loss_fn returned a tensor of shape {list(single.shape)}; it must return "
                "a scalar: the mean (reduction='mean') or the sum (reduction='sum') of the "
                "batch's per-example losses"
            )
        if outputs.ndim == 0 or targets.ndim == 0:
            return None
        try:
            double = loss_fn(torch.cat([outputs, outputs]), torch.cat([targets, targets]))
            ratio = float(double.reshape(())) / float(single.reshape(()))
        except Exception:  # noqa: BLE001 - the loss does not take a longer batch: no test
            return None
    if not torch.isfinite(torch.tensor(ratio)):
        return None
    tol = max(1e-3, 8 * torch.finfo(single.dtype).eps) if single.is_floating_point() else 1e-3
    kind = "mean" if abs(ratio - 1) <= tol else "sum" if abs(ratio - 2) <= 2 * tol else None
    if kind is None or kind == reduction:
        return kind
    value = float(single.reshape(()))
    if kind == "sum":
        message = (
            f"loss_fn sums over its batch (its value {value:.6g} doubled when the batch "
            "was repeated twice) but reduction='mean' averages batch losses with batch-size "
            "weights; over several batches that is neither the Hessian of the mean nor of "
            "the summed dataset loss. Pass reduction='sum' for the Hessian of the loss "
            "summed over the whole dataset, or a loss_fn that averages over its batch "
            "(e.g. nn.MSELoss()) for the Hessian of the mean loss"
        )
    else:
        message = (
            f"loss_fn averages over its batch (its value {value:.6g} stayed the same when "
            "the batch was repeated twice) but reduction='sum' adds up the batch losses; "
            "over several batches that is neither the Hessian of the mean nor of the summed "
            "dataset loss. Pass reduction='mean' (the default) for the Hessian of the mean "
            "loss, or a loss_fn that sums over its batch (e.g. nn.MSELoss(reduction='sum')) "
            "for the Hessian of the summed loss"
        )
    if num_batches == 1:
        warnings.warn(
            message + "; with a single batch both give the Hessian of loss_fn on it, so "
            "this result is right, but several batches would be refused",
            DataWarning,
            stacklevel=4,
        )
        return kind
    raise ValueError(message)
