"""The measurements of :mod:`analysis.scale`: each run is a child process (a user's
``curvature analyze``, or one training step), timed, its peak resident set polled from
``/proc/<pid>/status`` (``VmHWM``) and taken from the child's own final reading when it
finishes, its outputs read back into one CSV row.

Rows (``run`` is the key; a re-run replaces the row of its key):

* ``train_w<W>`` -- one training step of the ResNet-18 at width ``W`` at the analysis
  batch (all examples): the memory a user already pays, the reference of the bound;
* ``per_layer`` -- the default ``curvature analyze`` with ``--per-layer`` (done-when (a));
* ``budget`` -- ``curvature analyze --budget <B> --per-layer`` (done-when (b)), when the
  installed CLI has ``--budget``;
* ``sweep_w<W>`` -- a fixed reduced analysis (:data:`SWEEP_ARGS`) at each width: time,
  products and peak memory against the parameter count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["SWEEP_ARGS", "Setup", "has_budget_option", "merge_rows", "run_all"]

REPO = Path(__file__).resolve().parents[2]
FACTORY = "analysis.scale.resnet18:resnet18_cifar"
SWEEP_ARGS = ("--metrics", "eigenvalues,trace", "--top-k", "1", "--max-matvecs", "12",
              "--trace-matvecs", "12")
"""The sweep's analysis: lambda_max and lambda_min (at most 12 products each) and a
12-product Hutch++ trace -- a fixed amount of work, so its time and memory against the
parameter count show the cost of a product and of the stored vectors as the model grows."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """Sizes of one invocation (``--quick`` shrinks them to seconds)."""

    examples: int = 256
    resnet_width: float = 1.0
    widths: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
    budget: str = "5m"
    threads: int = 2
    timeout_s: float = 1800.0  # per child
    sweep_timeout_s: float = 900.0
    analyze_args: tuple[str, ...] = ()  # added to the per_layer and budget runs


QUICK = Setup(examples=16, resnet_width=1 / 16, widths=(1 / 16,), budget="20s", threads=1,
              timeout_s=300.0, sweep_timeout_s=300.0,
              analyze_args=("--metrics", "eigenvalues,trace", "--top-k", "1", "--max-matvecs",
                            "8", "--trace-matvecs", "4", "--budget", "2m"))
"""Seconds: a 44.6k-parameter ResNet-18 (width 1/16), 16 examples, a reduced analysis."""


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get(
                "PYTHONPATH", "")}


def _vmhwm_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_child(args: list[str], log: Path, timeout_s: float, threads: int) -> dict[str, Any]:
    """Run ``python -m analysis.scale.child RESULT args`` (at ``nice 5``); returns its
    result dict plus ``timed_out`` (the child is killed at ``timeout_s``; the peak it had
    reached so far is kept)."""
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    cmd = ["nice", "-n", "5", sys.executable, "-m", "analysis.scale.child", str(result), *args]
    peak, t0 = 0.0, time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(threads), stdout=fh,
                                stderr=subprocess.STDOUT)
        timed_out = False
        while proc.poll() is None:
            peak = max(peak, _vmhwm_mib(proc.pid) or 0.0)
            if time.perf_counter() - t0 > timeout_s:
                proc.kill()  # this child only, started here
                timed_out = True
                break
            time.sleep(1.0)
        proc.wait()
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"wall_s": wall, "exit_code": proc.returncode, "peak_rss_mib": peak}
    if result.exists():
        out.update(json.loads(result.read_text()))
        out["peak_rss_mib"] = max(out["peak_rss_mib"], peak)
    out["timed_out"] = timed_out
    return out


def has_budget_option() -> bool:
    """Whether this checkout's ``curvature analyze`` accepts ``--budget``."""
    from curvature.cli import build_parser

    parser = build_parser()
    for action in parser._subparsers._group_actions:  # noqa: SLF001 - argparse has no API
        sub = getattr(action, "choices", {}).get("analyze")
        if sub is not None:
            return "--budget" in sub._option_string_actions  # noqa: SLF001
    return False


def _checkpoint(folder: Path, width: float) -> Path:
    """A bare state dict of the width-``width`` ResNet-18 (what a user saves)."""
    import torch

    from analysis.scale.resnet18 import resnet18_cifar

    path = folder / f"resnet18_w{width:g}.pt"
    if not path.exists():
        torch.save(resnet18_cifar(width=width).state_dict(), path)
    return path


def _num_params(width: float) -> int:
    from analysis.scale.resnet18 import resnet18_cifar

    return sum(p.numel() for p in resnet18_cifar(width=width).parameters())


def _analyze_args(ckpt: Path, width: float, examples: int, out: Path) -> list[str]:
    return ["cli", "--", "analyze", str(ckpt), "--model", FACTORY,
            "--model-kwargs", json.dumps({"width": width}),
            "--data", f"synthetic-image:n_train={examples}", "--no-test", "--out", str(out)]


def _read_analysis(out: Path) -> dict[str, Any]:
    """Headline numbers of a written analysis folder (empty when it was not written)."""
    row: dict[str, Any] = {}
    summary = out / "summary.json"
    if not summary.exists():
        return row
    s = json.loads(summary.read_text())
    split = s.get("splits", {}).get("train", {})
    row.update({
        "dtype": s.get("dtype"),
        "dtype_reason": s.get("dtype_reason"),
        "products": s.get("num_matvecs_total"),
        "lambda_max": split.get("lambda_max"), "lambda_min": split.get("lambda_min"),
        "converged_largest": split.get("converged_largest"),
        "converged_smallest": split.get("converged_smallest"),
        "trace": split.get("trace"), "trace_stderr": split.get("trace_stderr"),
        "analysis_s": (s.get("timings_s") or {}).get("total"),
    })
    table, figure = out / "per_layer.csv", out / "per_layer.png"
    row["per_layer_csv"] = table.exists()
    row["per_layer_png"] = figure.exists()
    if table.exists():
        blocks = pd.read_csv(table)
        row["per_layer_blocks"] = len(blocks)
        row["per_layer_max_converged"] = int(blocks["lambda_max_converged"].sum())
        row["per_layer_min_converged"] = int(blocks["lambda_min_converged"].sum())
    return row


def merge_rows(csv: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``csv`` with ``rows`` added, replacing earlier rows of the same ``run``."""
    new = pd.DataFrame(rows)
    if csv.exists():
        old = pd.read_csv(csv)
        old = old[~old["run"].isin(new["run"])]
        new = pd.concat([old, new], ignore_index=True)
    csv.parent.mkdir(parents=True, exist_ok=True)
    new.to_csv(csv, index=False)
    return new


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_all(setup: Setup, out: Path, parts: tuple[str, ...]) -> pd.DataFrame:
    """Run the ``parts`` (``train``, ``budget``, ``per_layer``, ``sweep``) in that order,
    writing ``out/runs.csv`` after each run (so an interrupted run keeps what it had)."""
    from curvature.memory import analysis_dtype

    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    csv = out / "runs.csv"
    df = pd.DataFrame()
    base = {"examples": setup.examples, "threads": setup.threads}

    def record(row: dict[str, Any]) -> None:
        nonlocal df
        df = merge_rows(csv, [{**base, **row}])
        _say(f"{row['run']}: {row.get('wall_s', math.nan):.1f} s, peak "
             f"{row.get('peak_rss_mib', math.nan):.0f} MiB, exit {row.get('exit_code')}"
             + (" (timed out)" if row.get("timed_out") else ""))

    if "train" in parts:
        import torch

        from analysis.scale.resnet18 import resnet18_cifar

        for w in setup.widths:
            n = sum(p.numel() for p in resnet18_cifar(width=w).parameters())
            dtype = str(analysis_dtype(n, torch.device("cpu"))[0]).replace("torch.", "")
            _say(f"training step, width {w:g} ({n:,} parameters, {dtype})")
            res = run_child(["train", "--width", str(w), "--examples", str(setup.examples),
                             "--dtype", dtype], work / f"train_w{w:g}.log", setup.timeout_s,
                            setup.threads)
            record({"run": f"train_w{w:g}", "kind": "train_step", "width": w,
                    "num_params": n, "dtype": dtype, **res})
    cases = []
    if "budget" in parts:
        if has_budget_option():
            cases.append(("budget", ["--budget", setup.budget, "--per-layer"], setup.timeout_s))
        else:
            _say("this checkout's curvature analyze has no --budget: the budget run is skipped")
            record({"run": "budget", "kind": "analyze", "width": setup.resnet_width,
                    "exit_code": None, "note": "--budget not available in this checkout"})
    if "per_layer" in parts:
        cases.append(("per_layer", ["--per-layer"], setup.timeout_s))
    for name, extra, timeout in cases:
        ckpt = _checkpoint(work, setup.resnet_width)
        folder = work / name
        _say(f"{name}: curvature analyze {' '.join(extra)} (timeout {timeout:.0f} s)")
        args = (_analyze_args(ckpt, setup.resnet_width, setup.examples, folder) + extra
                + list(setup.analyze_args))
        res = run_child(args, work / f"{name}.log", timeout, setup.threads)
        record({"run": name, "kind": "analyze", "width": setup.resnet_width,
                "num_params": _num_params(setup.resnet_width),
                "command": "curvature " + " ".join(args[2:]), **res, **_read_analysis(folder)})
    if "sweep" in parts:
        for w in setup.widths:
            ckpt = _checkpoint(work, w)
            folder = work / f"sweep_w{w:g}"
            _say(f"sweep: width {w:g}")
            args = _analyze_args(ckpt, w, setup.examples, folder) + list(
                setup.analyze_args or SWEEP_ARGS)
            res = run_child(args, work / f"sweep_w{w:g}.log", setup.sweep_timeout_s,
                            setup.threads)
            record({"run": f"sweep_w{w:g}", "kind": "sweep", "width": w,
                    "num_params": _num_params(w),
                    "command": "curvature " + " ".join(args[2:]), **res,
                    **_read_analysis(folder)})
    return df
