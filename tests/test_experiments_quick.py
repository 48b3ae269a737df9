"""Experiment drivers in ``analysis/``: each ``--quick`` run writes a complete report
folder with finite numbers; the stability thresholds of the edge-of-stability driver
against closed forms and against the iteration they describe."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.edge_of_stability import (
    sam_threshold,
    usam_step,
    usam_threshold,
)
from analysis.harness.stats import mean_ci

REPO = Path(__file__).resolve().parents[1]


def _run_quick(module: str, out: Path, *extra: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE",
           "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", f"analysis.{module}", "--quick", "--out", str(out), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"{module} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _check_report(out: Path, pngs: list[str]) -> str:
    md = (out / "report.md").read_text()
    assert "## Reproduce" in md and "--quick" in md and "Runtime:" in md
    for name in pngs:
        p = out / name
        assert p.exists(), f"missing figure {name}"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 10_000 < p.stat().st_size < 300_000, f"{name}: {p.stat().st_size} bytes"
        assert f"]({name})" in md, f"{name} not shown in report.md"
    return md


def _finite(df: pd.DataFrame, cols: list[str]) -> None:
    for c in cols:
        v = df[c].to_numpy(dtype=float)
        assert v.size and np.isfinite(v).all(), f"column {c} has non-finite values: {v}"


def test_lr_wd_heatmap_quick(tmp_path):
    out = tmp_path / "heat"
    _run_quick("lr_wd_heatmap", out)
    md = _check_report(out, ["heatmaps.png", "lr_sensitivity.png", "cellwise_ratio.png"])
    assert "## Verdicts" in md
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 6 * 2 * 2 * 2  # optimizers x learning rates x weight decays x seeds
    _finite(runs[runs.status == "ok"], ["test_accuracy", "trace_test", "lambda_max_test"])
    _finite(pd.read_csv(out / "summary.csv"), ["test_acc_mean", "lr_spread_mean"])
    rows = pd.read_csv(out / "claims_rows.csv")
    (out / "report.md").unlink()
    _run_quick("lr_wd_heatmap", out, "--report-only")  # rebuilt from runs.csv alone
    assert "## Verdicts" in (out / "report.md").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(out / "claims_rows.csv"), rows)


def test_edge_of_stability_quick(tmp_path):
    out = tmp_path / "eos"
    _run_quick("edge_of_stability", out)
    _check_report(out, ["gd_edge_of_stability.png", "sam_edge_of_stability.png",
                        "settled_vs_predicted.png", "eos_window.png"])
    window = pd.read_csv(out / "window.csv")
    _finite(window.dropna(subset=["lambda_max"]), ["lambda_max", "g_along_v", "eta"])
    (out / "report.md").unlink()
    _run_quick("edge_of_stability", out, "--report-only")
    assert "every step" in (out / "report.md").read_text()
    traj = pd.read_csv(out / "trajectories.csv")
    assert set(traj.method) == {"gd", "sam", "usam"}
    _finite(traj, ["loss", "grad_norm", "lambda_max", "threshold"])
    gd = traj[traj.method == "gd"]
    assert np.allclose(gd.threshold, 2 / gd.eta)
    _finite(pd.read_csv(out / "settled_summary.csv"), ["lambda_settled_mean",
                                                       "ratio_to_threshold_mean"])


# ------------------------------------------------------------- closed forms


@pytest.mark.parametrize("eta,rho,g", [(0.2, 0.05, 0.1), (0.01, 0.5, 3.0), (1.0, 1e-3, 1e-2)])
def test_thresholds_solve_their_equations(eta, rho, g):
    lu = usam_threshold(eta, rho)
    assert lu > 0 and math.isclose(eta * (lu + rho * lu**2), 2.0, rel_tol=1e-12)
    ls = sam_threshold(eta, rho, g)
    assert ls > 0 and math.isclose(eta * (ls + rho * ls**2 / g), 2.0, rel_tol=1e-12)
    assert ls < 2 / eta and lu < 2 / eta  # both edges lie below the GD edge
    # rho -> 0 recovers gradient descent's 2/eta
    assert math.isclose(usam_threshold(eta, 1e-12), 2 / eta, rel_tol=1e-6)
    assert math.isclose(sam_threshold(eta, 1e-12, g), 2 / eta, rel_tol=1e-6)


@pytest.mark.parametrize("factor,grows", [(0.98, False), (1.02, True)])
def test_usam_step_is_stable_exactly_below_its_threshold(factor, grows):
    """On L(w) = lambda w^2 / 2 the unnormalised SAM step multiplies w by
    1 - eta lambda (1 + rho lambda): |w| shrinks below lambda* and grows above it."""
    eta, rho = 0.2, 0.05
    lam = factor * usam_threshold(eta, rho)
    w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=eta)

    def closure():
        opt.zero_grad()
        loss = 0.5 * lam * (w**2).sum()
        loss.backward()
        return loss

    for _ in range(200):
        usam_step(opt, [w], closure, rho)
    expected = abs(1 - eta * lam * (1 + rho * lam)) ** 200
    final = abs(float(w.detach()))
    assert math.isclose(final, expected, rel_tol=1e-9)
    assert (final > 1.0) == grows


def test_mean_ci_student_t():
    s = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert s["n"] == 3 and s["n_failed"] == 1
    assert math.isclose(s["mean"], 2.0) and math.isclose(s["std"], 1.0)
    # Student t with 2 degrees of freedom has the closed-form quantile
    # t_p = (2p - 1) / sqrt(2 p (1 - p)); p = 0.975 gives 4.3027
    p = 0.975
    t = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    assert math.isclose(s["ci"], t * 1.0 / math.sqrt(3), rel_tol=1e-9)
