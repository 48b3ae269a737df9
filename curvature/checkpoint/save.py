"""Writing a checkpoint: :func:`save_checkpoint`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from curvature.checkpoint.files import FORMAT, FORMAT_VERSION, jsonable, write_checkpoint_file
from curvature.errors import CheckpointError
from curvature.models import MODELS, ModelFactoryError, resolve_factory

__all__ = ["save_checkpoint"]


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    factory: str,
    factory_kwargs: Mapping[str, Any] | None = None,
    data_spec: Any = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s state dict with how to rebuild it, atomically.

    Args:
        path: target file; ``.safetensors`` selects safetensors, any other suffix the
            ``torch.save`` format.
        model: the model; its ``state_dict()`` (parameters and persistent buffers) is
            saved as contiguous CPU copies.
        factory: ``"package.module:function"`` or a short name from
            :data:`curvature.models.MODELS` (recorded in its long form) that builds an
            equivalent model from ``factory_kwargs``.
        factory_kwargs: JSON keyword arguments of the factory.
        data_spec: dataset spec (string, dict, or a :class:`curvature.data.Dataset`,
            whose canonical ``spec`` is recorded), or ``None``.
        metadata: JSON training metadata (step, optimizer, hyperparameters, seed,
            metrics); 0-d tensors and numpy scalars are converted to numbers.

    Returns:
        the path written.

    Raises:
        CheckpointError: unknown factory, or a non-JSON value in kwargs/spec/metadata.
    """
    from curvature.data import Dataset  # local: keep checkpoint importable on its own

    path = Path(path)
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"model must be an nn.Module, got {type(model).__name__}")
    try:
        resolve_factory(factory)
    except ModelFactoryError as e:
        raise CheckpointError(f"cannot record the model factory: {e}") from None
    factory = MODELS.get(factory, factory)
    if isinstance(data_spec, Dataset):
        data_spec = data_spec.spec
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "factory": factory,
        "factory_kwargs": jsonable(dict(factory_kwargs or {}), "factory_kwargs"),
        "data_spec": jsonable(data_spec, "data_spec"),
        "metadata": jsonable(dict(metadata or {}), "metadata"),
    }
    # clone: contiguous, CPU, and no shared storage (safetensors refuses tied tensors)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    write_checkpoint_file(path, state, header)
    return path
