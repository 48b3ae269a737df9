"""Smoke test of the ResNet-18-scale measurement driver: ``python -m analysis.scale --quick``
(a width-1/16 ResNet-18, 16 examples, a reduced analysis) in a subprocess, then what it
wrote: a training-step row and analysis rows with finite times and peak memory, the
per-layer table and figure of the ``--per-layer`` run, the report and figure, and
``--report-only`` rebuilding the report from the CSV alone."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "analysis.scale", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_scale_quick(tmp_path):
    out = tmp_path / "scale"
    proc = _run("--quick", "--out", str(out), "--parts", "train,per_layer,sweep")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_csv(out / "runs.csv").set_index("run")
    assert {"train_w0.0625", "per_layer", "sweep_w0.0625"} <= set(df.index)
    for run in ("train_w0.0625", "per_layer", "sweep_w0.0625"):
        row = df.loc[run]
        assert row["exit_code"] == 0, run
        assert math.isfinite(row["wall_s"]) and row["wall_s"] > 0
        assert 50 < row["peak_rss_mib"] < 8192  # a whole Python process with torch
    assert df.loc["train_w0.0625", "num_params"] == 44622
    layer = df.loc["per_layer"]
    assert layer["dtype"] == "float64"  # a small model keeps float64
    log = (out / "work" / "per_layer.log").read_text()
    # the per-layer table and figure, or the budget planner's statement that it cut them
    assert (layer["per_layer_csv"] and layer["per_layer_png"] and layer["per_layer_blocks"] > 1) \
        or "per_layer: skipped: budget" in log
    assert layer["products"] > 0
    assert math.isfinite(layer["lambda_max"]) or "eigenvalues_largest: skipped: budget" in log
    report = (out / "report.md").read_text()
    assert "per_layer" in report and (out / "cost_vs_params.png").exists()
    (out / "report.md").unlink()
    proc = _run("--report-only", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "report.md").read_text() == report.replace(
        f"python -m analysis.scale --quick --out {out}", f"python -m analysis.scale --out {out}")
