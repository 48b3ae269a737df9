"""Fitting a zoo model to a data shape (:func:`default_kwargs`), and the size of a model
(:func:`count_parameters`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from curvature.models.factory import MODELS

__all__ = ["count_parameters", "default_kwargs"]


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of scalar parameters (those with ``requires_grad`` unless
    ``trainable_only=False``); shared parameters are counted once."""
    return sum(
        p.numel() for p in model.parameters() if p.requires_grad or not trainable_only
    )


def default_kwargs(
    name: str, input_shape: Sequence[int], num_outputs: int
) -> dict[str, Any]:
    """Keyword arguments that fit the zoo model ``name`` to a data shape.

    Args:
        name: a short name from :data:`curvature.models.MODELS`.
        input_shape: shape of one example, without the batch dimension
            (``[64]``, ``[1, 8, 8]``, ``[3, 32, 32]``, ``[T, F]``, ``[40]`` for
            ``cnn1d``: ``[L]`` or ``[C, L]``).
        num_outputs: number of classes (or regression outputs).

    Returns:
        e.g. ``{"in_features": 64, "num_classes": 10}`` for ``"mlp"``; the caller may
        add or override any other argument.
    """
    shape = [int(s) for s in input_shape]
    numel = math.prod(shape)
    kw: dict[str, Any] = {"num_classes": int(num_outputs)}
    if name == "mlp":
        return {"in_features": numel, **kw}
    if name == "transformer":
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) == 2:
            return {"seq_len": shape[0], "in_features": shape[1], **kw}
        side = math.isqrt(numel)
        if side * side == numel:
            return {"seq_len": side, "in_features": side, **kw}
        return {"seq_len": 1, "in_features": numel, **kw}
    if name == "cnn1d":
        if len(shape) == 1:
            return {"in_channels": 1, "input_length": shape[0], **kw}
        if len(shape) == 2:
            return {"in_channels": shape[0], "input_length": shape[1], **kw}
        raise ValueError(
            f"model 'cnn1d' needs signals [L] or [C, L], got input shape {list(input_shape)}"
        )
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(
            f"model {name!r} needs square images [C, S, S], got input shape {list(input_shape)}"
        )
    c, s = shape[0], shape[1]
    if name in ("resnet", "resnet20"):
        return {"in_channels": c, **kw}
    if name in ("cnn", "vgg"):
        return {"in_channels": c, "input_size": s, **kw}
    patch = next(p for p in (4, 2, 1) if s % p == 0 and s // p >= 2 or p == 1)
    return {"image_size": s, "patch_size": patch, "in_channels": c, **kw}
