"""Safe checkpoints: a state dict plus everything needed to rebuild and analyse it.

A checkpoint written by :func:`save_checkpoint` records

* ``factory`` -- ``"package.module:function"`` that builds the model, and
  ``factory_kwargs`` -- its JSON keyword arguments,
* ``state_dict`` -- the model's parameters and persistent buffers,
* ``data_spec`` -- the dataset spec (:func:`curvature.data.load_dataset`), or ``None``,
* ``metadata`` -- JSON training metadata (step, optimizer, hyperparameters, seed,
  metrics, ...).

Two formats, chosen by the file suffix:

``.safetensors``
    the state dict as safetensors tensors; the rest as one JSON string in the
    safetensors header metadata (key ``"curvature"``).
any other suffix (``.pt``, ``.pth``, ...)
    ``torch.save`` of a dict holding only tensors, strings, numbers, booleans,
    ``None``, lists and dicts, with ``"format": "curvature-checkpoint"``. It loads
    with ``torch.load(path, weights_only=True)``.

Loading never executes code from the file: ``.pt`` files are read with
``torch.load(weights_only=True)`` (a hostile pickle raises :class:`CheckpointError`),
safetensors files hold no code. The recorded factory string is data from the file
too: calling whatever callable it names with its keyword arguments would run code of
the file's choosing (``"subprocess:run"`` with ``args``). So a recorded factory is
imported and called only if it is a zoo model (:data:`curvature.models.MODELS`) or a
model factory (``nn.Module`` subclass or function annotated to return one) defined at
the top level of a module the caller lists in ``trusted_modules``; otherwise the
caller names it explicitly with ``model_factory`` (CLI ``--model
package.module:function``), and the recorded keyword arguments are used with it.

Bare state dicts (``torch.save(model.state_dict())`` or a safetensors file of the
state dict) load when ``model_factory`` is given.

Writes are atomic: a temporary file in the target directory is written, flushed,
fsynced and renamed over the target, so a crash never leaves a half-written
checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from curvature.atomic import atomic_write
from curvature.errors import CheckpointError, CheckpointNotFoundError
from curvature.models import (
    MODELS,
    ModelFactoryError,
    build_model,
    is_model_factory,
    resolve_factory,
)

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "LoadedCheckpoint",
    "check_state_dict",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT = "curvature-checkpoint"
FORMAT_VERSION = 1
_SAFETENSORS_KEY = "curvature"
_BARE_KEYS = ("state_dict", "model_state_dict", "model")


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


# -------------------------------------------------------------------------- JSON


def _jsonable(obj: Any, where: str) -> Any:
    """``obj`` as plain JSON types (tuples become lists, numpy/0-d tensor scalars become
    numbers); anything else raises :class:`CheckpointError` naming ``where``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, Tensor) and obj.numel() == 1 and obj.ndim == 0:
        return obj.item()
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where}: key {k!r} is not a string (JSON needs string keys)")
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise CheckpointError(
        f"{where}: a {type(obj).__name__} is not JSON-able (use numbers, strings, "
        f"booleans, None, lists and dicts)"
    )


# -------------------------------------------------------------------------- save


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
        "factory_kwargs": _jsonable(dict(factory_kwargs or {}), "factory_kwargs"),
        "data_spec": _jsonable(data_spec, "data_spec"),
        "metadata": _jsonable(dict(metadata or {}), "metadata"),
    }
    # clone: contiguous, CPU, and no shared storage (safetensors refuses tied tensors)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    header["sha256"] = _digest(state, header)
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        blob = save(state, metadata={"format": FORMAT, _SAFETENSORS_KEY: json.dumps(header)})
        atomic_write(path, lambda f: f.write(blob))
    else:
        atomic_write(path, lambda f: torch.save({**header, "state_dict": state}, f))
    return path


def _digest(state: Mapping[str, Tensor], header: Mapping[str, Any]) -> str:
    """SHA-256 over the header (canonical JSON, without this digest) and the names,
    dtypes, shapes and bytes of the tensors (sorted by name): neither format checks the
    integrity of tensor data, so the header carries this."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in header.items() if k != "sha256"}, sort_keys=True)
             .encode())
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -------------------------------------------------------------------------- load


def _read(path: Path, map_location: Any) -> tuple[str, Any]:
    """``(format, payload)`` of a file, never executing its contents."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or zipfile.is_zipfile(path) or head[:1] == b"\x80":
        return "pt", _read_torch(path, map_location)
    if len(head) == 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 8 + n > size:
            raise CheckpointError(
                f"{path}: truncated safetensors file (header says {n} bytes, file has {size})"
            )
        return "safetensors", _read_safetensors(path, map_location)
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{path}: corrupt safetensors file (no valid header)")
    raise CheckpointError(
        f"{path}: not a checkpoint (neither a torch.save zip/pickle nor a safetensors file)"
    )


def _read_torch(path: Path, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects a weights-only load refuses "
            f"(anything but tensors and plain containers; unpickling them could execute "
            f"code from the file). {first}"
        ) from None
    except Exception as e:  # whatever a damaged zip or pickle stream raises

        raise CheckpointError(
            f"{path}: corrupt or truncated torch checkpoint ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no details'})"
        ) from None


def _read_safetensors(path: Path, map_location: Any) -> tuple[dict[str, Tensor], dict]:
    from safetensors import safe_open

    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError and friends
        raise CheckpointError(
            f"{path}: corrupt or truncated safetensors file ({type(e).__name__}: {e})"
        ) from None
    return tensors, meta


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _parse(path: Path, fmt: str, payload: Any) -> tuple[dict[str, Tensor], dict | None]:
    """``(state_dict, header or None for a bare state dict)``; verifies the checksum."""
    state, header = _split(path, fmt, payload)
    digest = header.get("sha256") if header else None
    if digest is not None and digest != _digest(state, header):
        raise CheckpointError(
            f"{path}: corrupt checkpoint: its contents do not match the SHA-256 checksum "
            f"recorded when it was saved"
        )
    return state, header


def _split(path: Path, fmt: str, payload: Any) -> tuple[dict[str, Tensor], dict | None]:
    if fmt == "safetensors":
        tensors, meta = payload
        if meta.get("format") != FORMAT:
            return dict(tensors), None
        try:
            header = json.loads(meta[_SAFETENSORS_KEY])
        except (KeyError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt checkpoint header ({e})") from None
        return dict(tensors), _check_header(path, header)
    if isinstance(payload, Mapping) and payload.get("format") == FORMAT:
        state = payload.get("state_dict")
        if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
        ):
            raise CheckpointError(f"{path}: corrupt checkpoint: 'state_dict' is not name -> tensor")
        header = {k: v for k, v in payload.items() if k != "state_dict"}
        return dict(state), _check_header(path, header)
    if _is_state_dict(payload):
        return dict(payload), None
    if isinstance(payload, Mapping):
        for key in _BARE_KEYS:
            if _is_state_dict(payload.get(key)):
                return dict(payload[key]), None
        keys = ", ".join(repr(k) for k in list(payload)[:8])
        raise CheckpointError(
            f"{path}: not a curvature checkpoint or state dict (a dict with keys {keys}, "
            f"no 'format': {FORMAT!r} and no name -> tensor mapping)"
        )
    raise CheckpointError(
        f"{path}: not a curvature checkpoint or state dict (holds a {type(payload).__name__})"
    )


def _check_header(path: Path, header: Any) -> dict[str, Any]:
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint header (not a dict)")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported "
            f"(this curvature reads up to {FORMAT_VERSION})"
        )
    if not isinstance(header.get("factory"), str):
        raise CheckpointError(f"{path}: corrupt checkpoint header: no model factory string")
    if not isinstance(header.get("factory_kwargs", {}), dict) or not isinstance(
        header.get("metadata", {}), dict
    ):
        raise CheckpointError(f"{path}: corrupt checkpoint header: kwargs/metadata not dicts")
    return header


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
    fmt, payload = _read(path, map_location)
    state_dict, header = _parse(path, fmt, payload)

    recorded = MODELS.get(header["factory"], header["factory"]) if header else None
    recorded_kwargs = dict(header.get("factory_kwargs") or {}) if header else {}
    if model_factory is None and recorded is None:
        raise CheckpointError(
            f"{path} is a bare state dict with no model factory recorded; name the model "
            f"with model_factory='package.module:function' (CLI: --model package.module:function)"
        )
    if model_factory is None:
        _check_trusted(path, recorded, trusted_modules)
    factory = model_factory if model_factory is not None else recorded
    assert factory is not None
    try:
        fn = resolve_factory(factory)
    except ModelFactoryError as e:
        where = "given" if model_factory is not None else f"recorded in {path}"
        raise CheckpointError(f"unknown model factory ({where}): {e}") from None
    except Exception as e:  # the module raised while importing: broken extension, syntax error
        cause = " ".join(str(e).split()) or "no message"
        raise CheckpointError(
            f"model factory {factory!r}: importing module {factory.split(':')[0]!r} failed: "
            f"{type(e).__name__}: {cause}"
        ) from None
    if model_factory is None and factory not in MODELS.values() and not (
        getattr(fn, "__module__", None) == factory.split(":")[0] and is_model_factory(fn)
    ):
        raise CheckpointError(
            f"{path} names the factory {factory!r}, which is not a model factory defined in "
            f"its module (an nn.Module subclass or a function annotated '-> nn.Module'), so "
            f"it is not called; if you trust it, pass model_factory={factory!r} "
            f"(CLI: --model {factory})"
        )
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


def _check_trusted(path: Path, factory: str, trusted_modules: Sequence[str]) -> None:
    """A factory recorded in a file is data from the file: calling an arbitrary
    callable with its kwargs would run code of the file's choosing (``subprocess:run``
    with ``args``, or ``build_model`` as a trampoline). Only the zoo and top-level
    names in the caller's ``trusted_modules`` are called -- decided from the string,
    before anything is imported."""
    if factory in MODELS.values():
        return
    module, _, attr = factory.partition(":")
    if isinstance(trusted_modules, str):
        trusted_modules = (trusted_modules,)
    if module in trusted_modules and attr.isidentifier():
        return
    raise CheckpointError(
        f"{path} names the model factory {factory!r}, which is neither a zoo model "
        f"({', '.join(sorted(MODELS))}) nor in trusted_modules, so it is not imported or "
        f"called; if you trust it, pass model_factory={factory!r} (CLI: --model {factory}) "
        f"or trusted_modules=[{module!r}]"
    )
