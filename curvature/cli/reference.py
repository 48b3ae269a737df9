"""The reference text at the end of ``curvature train --help`` and ``curvature analyze
--help``: the zoo models with every default of their arguments, and the ``--data``
syntax with every dataset and its options' defaults -- generated from
:data:`curvature.models.MODELS` and :data:`curvature.data.DATASETS`, so it cannot
drift from them."""

from __future__ import annotations

import inspect
import shutil
import textwrap

__all__ = ["data_reference", "model_reference"]


def _fill(text: str, indent: str = "", subsequent: str = "") -> str:
    width = max(40, shutil.get_terminal_size().columns - 2)  # as argparse wraps
    return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=subsequent,
                         break_on_hyphens=False)


def model_reference(intro: str) -> str:
    """``intro``, then each zoo model with the defaults of its keyword arguments."""
    from curvature.models import MODELS, resolve_factory

    lines = [_fill(intro)]
    for name in MODELS:
        params = inspect.signature(resolve_factory(name)).parameters.values()
        lines.append(_fill(", ".join(f"{p.name}={p.default!r}" for p in params),
                           f"  {name}: ", " " * 6))
    lines.append(_fill("or --model package.module:function, a factory of your own (a module "
                       "in the current directory is found)", "  ", "  "))
    return "\n".join(lines)


def data_reference() -> str:
    """The ``--data`` syntax, the dataset names and their options' defaults."""
    from curvature.data import DATASETS

    lines = [_fill(
        "--data syntax: NAME or NAME:key=value,key=value; path/to/file.npz[,key=value...] "
        "(arrays x, y, optional x_test, y_test); cifar10:/dir[,key=value...] (a local copy "
        "of the python version). Nothing is downloaded. Datasets and their options:")]
    for name, options in DATASETS.items():
        lines.append(_fill(", ".join(f"{k}={v}" for k, v in options.items()),
                           f"  {name}: ", " " * 6))
    return "\n".join(lines)
