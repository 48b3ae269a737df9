"""Shared pieces of the experiment drivers: command line, curvature measurements,
statistics over seeds and the report scaffolding (command + runtime footer).

Every driver writes one folder ``reports/<name>/`` with ``report.md``, PNG figures
and CSV tables, and records the exact command that regenerates it.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor, nn

import curvature as cv

__all__ = [
    "Timer",
    "base_parser",
    "command_line",
    "curvature_metrics",
    "finish_report",
    "markdown_table",
    "mean_ci",
    "fmt_pm",
    "png_sizes",
]

REPO = Path(__file__).resolve().parents[1]


def base_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """``--out``, ``--quick``, ``--seeds``, ``--progress`` shared by all drivers."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=str(REPO / default_out),
                   help=f"report folder (default: {default_out})")
    p.add_argument("--quick", action="store_true",
                   help="tiny CI variant: few steps, one seed, coarse estimators")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default per mode)")
    p.add_argument("--progress", action="store_true", help="tqdm bars for the estimators")
    return p


def command_line() -> str:
    """The command that was run, relative to the repository root where possible."""
    argv = list(sys.argv)
    script = Path(argv[0]).resolve()
    try:
        argv[0] = str(script.relative_to(REPO))
    except ValueError:
        argv[0] = str(script)
    env = "OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE"
    return f"{env} python " + " ".join(shlex.quote(a) for a in argv)


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


# ------------------------------------------------------------------ curvature


def curvature_metrics(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    max_examples: int = 1000,
    tol: float = 1e-3,
    trace_matvecs: int = 100,
    k: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """``lambda_max`` (Lanczos) and ``Tr(H)`` (Hutch++) of the loss Hessian on the
    first ``max_examples`` examples of ``(x, y)``.

    Returns a dict with ``lambda_max``, ``lambda_max_residual``, ``lambda_converged``,
    ``trace``, ``trace_stderr``, ``matvecs`` and, under ``"_eig"``, the
    :class:`curvature.EigenResult` (its vectors are the top-``k`` eigenvectors).
    """
    batch = (x[:max_examples], y[:max_examples])
    op = cv.HessianOperator(model, loss_fn, batch, progress=progress)
    eig = cv.eigenvalues(op, k=k, tol=tol, seed=seed, progress=progress)
    tr = cv.trace(op, num_matvecs=trace_matvecs, seed=seed, progress=progress)
    return {
        "lambda_max": float(eig.values[0]),
        "lambda_max_residual": float(eig.residuals[0]),
        "lambda_converged": bool(eig.converged),
        "trace": float(tr.estimate),
        "trace_stderr": float(tr.stderr),
        "matvecs": int(op.num_matvecs),
        "_eig": eig,
        "_op": op,
    }


# ------------------------------------------------------------------ statistics


def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean, sample std, Student-t ``level`` confidence half-width, and ``n`` over the
    finite entries (NaN entries -- diverged runs -- are counted in ``n_failed``)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    n = finite.size
    out = {"n": n, "n_failed": int(v.size - n)}
    if n == 0:
        return {**out, "mean": math.nan, "std": math.nan, "ci": math.nan}
    std = float(finite.std(ddof=1)) if n > 1 else math.nan
    ci = float(stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    return {**out, "mean": float(finite.mean()), "std": std, "ci": ci}


def fmt_pm(mean: float, spread: float, digits: int = 3) -> str:
    """``"1.23 ± 0.04"`` with ``digits`` significant digits (``"n/a"`` for NaN)."""
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(spread):
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {spread:.2g}"


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A GitHub markdown table of ``df`` (no dependency on ``tabulate``)."""
    cols = [str(c) for c in df.columns]

    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "n/a" if not math.isfinite(float(v)) else floatfmt.format(float(v))
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ report


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
    path = out / "report.md"
    path.write_text(body.rstrip() + footer)
    return path
