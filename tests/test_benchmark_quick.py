"""Smoke test of the cross-peer benchmark: ``python -m analysis.benchmark --quick``.

Runs the command in a subprocess (as a user would), then checks what it wrote: one
row per tool and task with finite times, product counts, memory and accuracy against
the dense ground truth, the ratio table, and the report with its regenerate command.
The quick sizes are tiny, so only loose accuracy bounds are asserted (the point is
that the numbers are produced and are sane, not their value).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
TASKS = ["hvp", "hvp_warm", "lambda_max", "top10", "trace", "density"]
TOOLS = ["curvature", "pyhessian", "curvlinops"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    pytest.importorskip("pyhessian", reason="peer baseline: pip install -c constraints.txt -e '.[test]'")
    pytest.importorskip("curvlinops", reason="peer baseline: pip install --no-deps -c "
                        "constraints.txt -r requirements-peers.txt (see README set-up)")
    out = tmp_path_factory.mktemp("benchmark")
    # One thread: on a shared, oversubscribed machine two OpenMP threads on tiny kernels
    # wait for each other far longer than they compute.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.benchmark", "--quick", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_results_have_every_tool_and_task_with_finite_numbers(quick_run: Path) -> None:
    df = pd.read_csv(quick_run / "results.csv")
    assert set(df.workload) == {"mlp8-digits200"}
    grad = df[df.task == "gradient"]
    assert len(grad) == 1 and grad.time_s.iloc[0] > 0
    for task in TASKS:
        for tool in TOOLS:
            rows = df[(df.task == task) & (df.tool == tool)]
            assert len(rows) == 1, (task, tool, len(rows))
            r = rows.iloc[0]
            assert r.status == "ok", (task, tool, r.note)
            for col in ("time_s", "time_in_gradients", "hvps", "rel_error", "peak_mem_mib"):
                assert math.isfinite(r[col]), (task, tool, col, r[col])
            assert r.time_s > 0 and r.hvps >= 1 and r.peak_mem_mib >= 0
    own = df[(df.task == "trace_own_rule") & (df.tool == "pyhessian")]
    assert len(own) == 1 and math.isfinite(own.rel_error.iloc[0])


def test_accuracy_against_dense_ground_truth(quick_run: Path) -> None:
    df = pd.read_csv(quick_run / "results.csv").set_index(["task", "tool"])
    # All three compute the same exact HVP: agreement to float32 round-off.
    for tool in TOOLS:
        assert df.loc[("hvp", tool), "rel_error"] < 1e-4
    # Lanczos at residual tolerance 1e-3 gives eigenvalue errors far below 1e-3.
    assert df.loc[("lambda_max", "curvature"), "rel_error"] < 1e-3
    assert df.loc[("top10", "curvature"), "rel_error"] < 1e-3
    # A 1%-standard-error trace is within 5% (5 sigma) of the exact trace.
    assert df.loc[("trace", "curvature"), "rel_error"] < 0.05
    # SLQ with 2 probes x 8 steps: W1 distance within a tenth of the spectral width.
    assert df.loc[("density", "curvature"), "rel_error"] < 0.1
    # The trace budget rule: Hutch++ budgets come from the ladder, Hutchinson's from
    # the exact variance; each is a positive count.
    assert df.loc[("trace", "curvature"), "hvps"] in (12, 24, 48)
    assert df.loc[("trace", "pyhessian"), "hvps"] >= 2


def test_ratios_targets_report_and_figures(quick_run: Path) -> None:
    ratios = pd.read_csv(quick_run / "ratios.csv")
    assert set(ratios.peer) == {"pyhessian", "curvlinops"}
    assert set(TASKS) <= set(ratios.task)
    assert (ratios.speedup > 0).all() and ratios.speedup.map(math.isfinite).all()
    targets = pd.read_csv(quick_run / "targets.csv")
    assert {"workload", "target", "measured", "met"} <= set(targets.columns)
    report = (quick_run / "report.md").read_text()
    assert "python -m analysis.benchmark --quick" in report
    assert "runtime of this run" in report
    assert (quick_run / "speedup.png").stat().st_size > 10_000
    assert (quick_run / "density_mlp8-digits200.png").stat().st_size > 10_000
