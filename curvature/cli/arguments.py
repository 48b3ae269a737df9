"""How the ``curvature`` command reads its arguments: the parser class (one-line errors,
exit status 2), the help formatter that states every default, the value types of the
options, and the options every subcommand shares."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any, NoReturn

__all__ = [
    "HelpFormatter",
    "Parser",
    "UsageError",
    "add_common",
    "duration",
    "json_object",
    "metrics",
    "nonnegative_float",
    "positive_float",
    "positive_int",
    "step_list",
]


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default X)`` to an option's help unless the help already names its
    default or there is none to name (``None``, ``False``, empty); descriptions and
    epilogs are printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, argparse.SUPPRESS)
                or (not isinstance(default, (int, float)) and not default)):
            return text
        if isinstance(default, (list, tuple)):
            default = ",".join(str(v) for v in default)
        return f"{text} (default {default})"


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def duration(text: str) -> float:
    """A wall time: ``90s``, ``5m``, ``1h`` or plain seconds; returns seconds."""
    from curvature.errors import InputError
    from curvature.pipeline.plan import parse_budget

    try:
        return parse_budget(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def json_object(text: str) -> dict[str, Any]:
    """A JSON object (keyword arguments)."""
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"hidden\": [32]}}', got {text!r}")
    return v


def step_list(text: str) -> list[int]:
    """Comma-separated positive step numbers, ``100,200``."""
    try:
        out = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated step numbers like 100,200, got {text!r}") from None
    if any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"step numbers must be positive, got {text!r}")
    return out


def metrics(text: str) -> tuple[str, ...]:
    """A comma-separated subset of :data:`curvature.pipeline.METRICS`."""
    from curvature.pipeline import METRICS

    items = tuple(t for t in text.replace(" ", "").split(",") if t)
    bad = [t for t in items if t not in METRICS]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"unknown metrics {', '.join(bad) or text!r}; choose from {', '.join(METRICS)}")
    return items


def add_common(p: argparse.ArgumentParser) -> None:
    """``--seed``, ``--device`` and ``--quiet``."""
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages")
