"""Reading a checkpoint and rebuilding its model: :func:`load_checkpoint`, and the check
that a state dict fits a model (:func:`check_state_dict`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from curvature.checkpoint.files import read_checkpoint_file
from curvature.checkpoint.trust import choose_factory
from curvature.errors import CheckpointError, CheckpointNotFoundError
from curvature.models import MODELS, ModelFactoryError, build_model

__all__ = ["LoadedCheckpoint", "check_state_dict", "load_checkpoint"]


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A loaded checkpoint.

    Attributes:
        model: the rebuilt model with the state dict loaded, on ``map_location``, in
            eval mode.
        state_dict: the tensors read from the file.
        factory: the factory that built ``model``.
        factory_kwargs: its keyword arguments.
        data_spec: the recorded dataset spec (``None`` if absent or a bare state dict).
        metadata: the recorded training metadata (``{}`` if absent).
        path: the file read.
        format: ``"pt"`` or ``"safetensors"``.
        bare: whether the file was a bare state dict.
    """

    model: nn.Module
    state_dict: dict[str, Tensor]
    factory: str
    factory_kwargs: dict[str, Any]
    data_spec: Any
    metadata: dict[str, Any]
    path: str
    format: str
    bare: bool


def _names(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "state dict"
) -> None:
    """Raise :class:`CheckpointError` listing missing keys, unexpected keys and shape
    mismatches (by name) between ``model.state_dict()`` and ``state_dict``; ``source``
    names the state dict in the message."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} (checkpoint {list(state_dict[k].shape)}, model {list(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_names(shapes)}")
    if problems:
        raise CheckpointError(f"{source} does not match the model; " + "; ".join(problems))


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model_factory: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    map_location: Any = "cpu",
    trusted_modules: Sequence[str] = (),
) -> LoadedCheckpoint:
    """Read a checkpoint and rebuild its model, without executing code from the file.

    Args:
        path: a checkpoint from :func:`save_checkpoint`, or a bare state dict
            (``.pt``/``.pth`` from ``torch.save(model.state_dict())``, also under a
            ``"state_dict"``, ``"model_state_dict"`` or ``"model"`` key, or
            ``.safetensors``).
        model_factory: ``"package.module:function"`` (or a short name) to build the
            model with instead of the recorded factory -- the caller's explicit choice
            to trust it. Required for a bare state dict, and for a recorded factory
            outside the zoo and ``trusted_modules``.
        trusted_modules: modules (``"mypkg.models"``) whose model factories a
            checkpoint may name and have called. The zoo (:data:`curvature.models.MODELS`)
            is always trusted.
        model_kwargs: keyword arguments for the factory; they update the recorded
            ones when the factory is the recorded one, else replace them.
        map_location: where the tensors and the model go (``torch.load`` semantics;
            the model is moved only for a device or device string).

    Returns:
        :class:`LoadedCheckpoint` with the model in eval mode.

    Raises:
        CheckpointError: missing, empty, truncated, corrupt or hostile file; bare
            state dict without ``model_factory``; unknown or untrusted factory; a
            state dict that does not match the model (names every missing,
            unexpected and mis-shaped entry). A missing file raises
            ``CheckpointNotFoundError`` (also a ``FileNotFoundError``).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file")
    fmt, state_dict, header = read_checkpoint_file(path, map_location)
    recorded = MODELS.get(header["factory"], header["factory"]) if header else None
    recorded_kwargs = dict(header.get("factory_kwargs") or {}) if header else {}
    factory = choose_factory(path, recorded, model_factory, trusted_modules)
    # recorded kwargs go with the recorded factory (compared as strings: nothing the
    # file names is imported unless trusted)
    same = recorded is not None and (
        model_factory is None or MODELS.get(model_factory, model_factory) == recorded
    )
    kwargs = {**recorded_kwargs, **(model_kwargs or {})} if same else dict(model_kwargs or {})
    try:
        model = build_model(factory, **kwargs)
    except ModelFactoryError as e:
        raise CheckpointError(f"cannot rebuild the model of {path}: {e}") from None
    check_state_dict(
        model, state_dict, f"the state dict in {path} (model built by {factory}(**{kwargs}))"
    )
    model.load_state_dict(state_dict)
    state_dict = {k: state_dict[k] for k in model.state_dict()}  # the model's order
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    return LoadedCheckpoint(
        model=model,
        state_dict=state_dict,
        factory=MODELS.get(factory, factory),
        factory_kwargs=kwargs,
        data_spec=header.get("data_spec") if header else None,
        metadata=dict(header.get("metadata") or {}) if header else {},
        path=str(path),
        format=fmt,
        bare=header is None,
    )
