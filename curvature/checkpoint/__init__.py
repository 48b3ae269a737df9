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

Rooms: :mod:`~curvature.checkpoint.files` (the two file formats, the checksum),
:mod:`~curvature.checkpoint.trust` (which recorded factory may be called),
:mod:`~curvature.checkpoint.save` and :mod:`~curvature.checkpoint.load` (the front
doors).
"""

from __future__ import annotations

from curvature.checkpoint.load import LoadedCheckpoint, check_state_dict, load_checkpoint
from curvature.checkpoint.save import save_checkpoint
from curvature.errors import CheckpointError, CheckpointNotFoundError

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "LoadedCheckpoint",
    "check_state_dict",
    "load_checkpoint",
    "save_checkpoint",
]
