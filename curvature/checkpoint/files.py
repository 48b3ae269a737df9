"""The two checkpoint file formats, written and read without executing anything.

A checkpoint is a *header* (JSON: format, version, factory, its kwargs, data spec,
metadata, SHA-256 digest) and a state dict (name -> tensor):

``.safetensors``
    the state dict as safetensors tensors; the header as one JSON string in the
    safetensors metadata (key ``"curvature"``).
any other suffix
    ``torch.save`` of the header dict plus ``"state_dict"``: only tensors, strings,
    numbers, booleans, ``None``, lists and dicts, read back with
    ``torch.load(weights_only=True)``.

:func:`read_checkpoint_file` also reads bare state dicts (header ``None``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from curvature.atomic import atomic_write
from curvature.errors import CheckpointError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "digest",
    "jsonable",
    "read_checkpoint_file",
    "write_checkpoint_file",
]

FORMAT = "curvature-checkpoint"
FORMAT_VERSION = 1
_SAFETENSORS_KEY = "curvature"
_BARE_KEYS = ("state_dict", "model_state_dict", "model")


def jsonable(obj: Any, where: str) -> Any:
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
            out[k] = jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise CheckpointError(
        f"{where}: a {type(obj).__name__} is not JSON-able (use numbers, strings, "
        f"booleans, None, lists and dicts)"
    )


def digest(state: Mapping[str, Tensor], header: Mapping[str, Any]) -> str:
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


# -------------------------------------------------------------------------- write


def write_checkpoint_file(path: Path, state: dict[str, Tensor], header: dict[str, Any]) -> None:
    """Write ``header`` (JSON values) and ``state`` (contiguous CPU tensors) atomically,
    in the format the suffix of ``path`` selects; the header gets its ``"sha256"``."""
    header["sha256"] = digest(state, header)
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        blob = save(state, metadata={"format": FORMAT, _SAFETENSORS_KEY: json.dumps(header)})
        atomic_write(path, lambda f: f.write(blob))
    else:
        atomic_write(path, lambda f: torch.save({**header, "state_dict": state}, f))


# --------------------------------------------------------------------------- read


def read_checkpoint_file(
    path: Path, map_location: Any
) -> tuple[str, dict[str, Tensor], dict[str, Any] | None]:
    """``(format, state_dict, header)`` of a file (``"pt"`` or ``"safetensors"``; the
    header is ``None`` for a bare state dict), never executing its contents; the
    recorded checksum is verified.

    Raises:
        CheckpointError: empty, truncated, corrupt or hostile file, or no state dict.
    """
    fmt, payload = _read(path, map_location)
    state, header = _split(path, fmt, payload)
    recorded = header.get("sha256") if header else None
    if recorded is not None and recorded != digest(state, header):
        raise CheckpointError(
            f"{path}: corrupt checkpoint: its contents do not match the SHA-256 checksum "
            f"recorded when it was saved"
        )
    return fmt, state, header


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


def _split(path: Path, fmt: str, payload: Any) -> tuple[dict[str, Tensor], dict | None]:
    """``(state_dict, header or None for a bare state dict)`` of a payload."""
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
