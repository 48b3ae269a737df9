"""Report writing shared by the drivers: markdown tables, atomic writes, the figure
inventory and the footer that says how to regenerate a report."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from analysis.harness.cli import command_line
from analysis.harness.timing import Timer

__all__ = ["markdown_table", "write_atomic", "png_sizes", "finish_report", "write_run_meta",
           "read_run_meta", "printed_report"]


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.4g}", *,
                   columns: Sequence[str] | None = None, formats: dict[str, str] | None = None,
                   nan: str = "n/a", inf: str | None = None) -> str:
    """A GitHub markdown table of ``df`` (no dependency on ``tabulate``).

    ``columns`` selects and orders the columns (default: all); floats are written with
    ``formats[column]`` (a ``str.format`` pattern) or ``floatfmt``; NaN as ``nan``; an
    infinity as ``inf`` (default: as ``nan``); anything else with ``str``.
    """
    cols = [str(c) for c in df.columns] if columns is None else list(columns)
    formats = formats or {}

    def cell(v: Any, col: str) -> str:
        if isinstance(v, (float, np.floating)):
            x = float(v)
            if math.isnan(x):
                return nan
            if math.isinf(x):
                return nan if inf is None else inf
            return formats.get(col, floatfmt).format(x)
        return str(v)

    table = df if columns is None else df[cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v, c) for v, c in zip(row, cols)) + " |")
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a
    rename, so that a reader never sees a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def png_sizes(out: Path) -> dict[str, int]:
    """Bytes of every PNG in ``out``."""
    return {p.name: p.stat().st_size for p in sorted(Path(out).glob("*.png"))}


def finish_report(out: Path, body: str, timer: Timer, quick: bool, *,
                  runtime_s: float | None = None, command: str | None = None,
                  note: str = "") -> Path:
    """Write ``out/report.md``: ``body`` plus the regenerating command and runtime.

    ``runtime_s``/``command`` override the current process's (when a report is rebuilt
    from saved runs); ``note`` is appended to the runtime line."""
    out = Path(out)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    seconds = timer.elapsed if runtime_s is None else runtime_s
    footer = (
        "\n\n## Reproduce\n\n"
        f"```\n{command or command_line()}\n```\n\n"
        f"Runtime: {seconds:.0f} s wall clock on {torch.get_num_threads()} torch "
        f"threads (OMP_NUM_THREADS={threads}), torch {torch.__version__}, CPU"
        + (" -- **quick mode** (CI smoke run; numbers are not meaningful)" if quick else "")
        + f".{(' ' + note) if note else ''}\n"
    )
    return write_atomic(out / "report.md", body.rstrip() + footer)


def write_run_meta(out: Path, timer: Timer) -> dict[str, Any]:
    """Save ``out/run_meta.json``: the command that ran and its runtime (seconds), which a
    later ``--report-only`` rebuild puts in the report's footer."""
    meta = {"command": command_line(), "runtime_s": timer.elapsed}
    write_atomic(Path(out) / "run_meta.json", json.dumps(meta, indent=1))
    return meta


def read_run_meta(out: Path) -> dict[str, Any]:
    """``out/run_meta.json`` as written by :func:`write_run_meta` (``{}`` when absent)."""
    path = Path(out) / "run_meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


class _Tee(io.TextIOBase):
    """A text stream that writes to several streams."""

    def __init__(self, *streams: io.TextIOBase) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for stream in self.streams:
            stream.write(s)
        return len(s)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def printed_report(out: Path | None, title: str) -> Iterator[None]:
    """Print as usual inside the block; on leaving it, also write what was printed to
    ``out/report.md`` (a code block under ``# title``, with the regenerate footer).
    ``out=None`` prints only."""
    timer = Timer()
    buf = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, buf)):
        yield
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        finish_report(Path(out), f"# {title}\n\n```\n{buf.getvalue().rstrip()}\n```", timer,
                      quick=False)
