"""What a subcommand checks and sets up around its work: the output folder, the device,
the module of a ``--model package.module:function`` factory, the ``torchrun`` process
group, and its messages on stderr."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from curvature.cli.arguments import UsageError

__all__ = [
    "check_device",
    "check_out",
    "import_factory_module",
    "init_distributed",
    "messenger",
    "one_line",
]


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (its type name if it has none)."""
    text = " ".join(str(e).split())
    return text or type(e).__name__


def messenger(args: argparse.Namespace) -> Callable[[str], None]:
    """A function printing a message on stderr, silent under ``--quiet``."""
    quiet = getattr(args, "quiet", False)

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    return say


def check_out(out: str) -> None:
    """``--out`` may be a folder or not exist yet."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {out!r} exists and is not a directory")


def check_device(device: str | None) -> None:
    """``--device`` names a device this machine has."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UsageError(f"--device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device!r}: CUDA is not available on this machine")


def init_distributed(device: str | None) -> int:
    """Join the process group that ``torchrun`` describes in the environment (gloo on
    CPU, NCCL on CUDA); returns this process's rank (0 without torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = device is not None and device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank()


def import_factory_module(model: str | None) -> None:
    """Import the module of a ``--model package.module:function`` factory, so that any
    failure is one line (exit 2) naming the module and the cause.

    As with ``python -m``, the current directory comes first on ``sys.path`` (the
    ``curvature`` console script otherwise has only its own folder there), so a
    ``mymodule.py`` next to the user is found. Zoo names and malformed strings are left
    to :func:`curvature.models.resolve_factory`, which reports them. Importing the
    named module is the user's explicit choice; nothing from a checkpoint is imported.
    """
    from curvature.models import MODELS

    if model is None or model in MODELS or model.count(":") != 1:
        return
    module = model.split(":")[0].strip()
    if not module or not all(p.isidentifier() for p in module.split(".")):
        return
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and (module == missing or module.startswith(missing + ".")):
            where = f"{missing}.py" if "." not in module else f"the package {missing.split('.')[0]}/"
            raise UsageError(
                f"unknown model factory {model!r}: no module named {missing!r} in the current "
                f"directory ({cwd}) or on the Python path; run from the folder that holds "
                f"{where}, add that folder to PYTHONPATH, or pip install the package that "
                f"provides it"
            ) from None
        raise UsageError(
            f"model factory {model!r}: importing module {module!r} failed: it imports "
            f"{missing or 'a module'!r}, which is not installed ({one_line(e)})"
        ) from None
    except (Exception, SystemExit) as e:  # any failure at import: broken extension, syntax, ...
        raise UsageError(
            f"model factory {model!r}: importing module {module!r} failed: "
            f"{type(e).__name__}: {one_line(e)}"
        ) from None
