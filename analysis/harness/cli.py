"""The command line every experiment driver shares and the command that regenerates a report."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["REPO", "base_parser", "command_line", "module_command"]

REPO = Path(__file__).resolve().parents[2]


def base_parser(description: str, default_out: str,
                report_only: str | None = None) -> argparse.ArgumentParser:
    """``--out``, ``--quick``, ``--seeds``, ``--progress`` shared by all drivers, and
    ``--report-only`` (with help text ``report_only``) for drivers that rebuild their
    report from saved tables."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=str(REPO / default_out),
                   help=f"report folder (default: {default_out})")
    p.add_argument("--quick", action="store_true",
                   help="tiny CI variant: few steps, one seed, coarse estimators")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default per mode)")
    p.add_argument("--progress", action="store_true", help="tqdm bars for the estimators")
    if report_only is not None:
        p.add_argument("--report-only", action="store_true", help=report_only)
    return p


def settings_and_out(args: argparse.Namespace, quick: Any, full: Any) -> tuple[Any, Path]:
    """A driver's settings (``quick`` under ``--quick``, else ``full``; ``--seeds``
    overrides their ``seeds``) and its ``--out`` folder, created."""
    settings = quick if args.quick else full
    if args.seeds:
        settings.seeds = args.seeds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return settings, out


def module_command(script: str | Path) -> str:
    """``python -m analysis.X`` for a driver file (``__main__.py`` of a package names the
    package); ``python <path>`` for a file outside the repository's ``analysis/``."""
    path = Path(script).resolve()
    try:
        rel = path.relative_to(REPO)
    except ValueError:
        return f"python {path}"
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__main__":
        parts = parts[:-1]
    return "python -m " + ".".join(parts)


def command_line() -> str:
    """The command that was run (threads as recommended), runnable from the repository root."""
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    env = "OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE"
    return f"{env} {module_command(sys.argv[0])}" + (f" {args}" if args else "")
