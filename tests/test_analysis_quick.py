"""The estimates-vs-truth study runs end to end in quick mode (CI) and writes a
complete report: figures shown in report.md, finite ground truth for every optimizer,
and the monitor's truths at the probed steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def test_estimates_vs_truth_quick(tmp_path):
    out = tmp_path / "evt"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.estimates_vs_truth", "--quick", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "report.md").read_text()
    assert "## Reproduce" in md and "--quick" in md and "Runtime:" in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 8, pngs
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md, f"{name} not shown in report.md"
    hist = pd.read_csv(out / "history.csv")
    expected = {"SGD", "Adam", "SAM", "OnlineEigenSAM", "AlphaSAM", "AcceleratedSAM", "ForwardSAM",
                "SASGD", "SASAM", "ExtendedSGDHess", "AdaHessian", "IRE", "ASAM", "SAM-pinf",
                "Saddam", "SGDHess", "DiagHessianSGD"}
    for wl in ("digits-mlp", "wide-mlp"):
        assert set(hist.loc[hist.workload == wl, "optimizer"]) == expected
    assert np.isfinite(hist[["lambda_max_full", "trace_full"]].to_numpy()).all()
    assert (hist.lambda_max_full > 0).all()
    sam = hist[hist.optimizer.isin(["SAM", "AlphaSAM", "SASAM", "OnlineEigenSAM"])]
    assert np.isfinite(sam[["lambda_max", "lambda_max_truth_batch", "hvp_rel_error"]].to_numpy()).all()
    # ||H u|| <= lambda_max(|H|): a SAM-type estimate never exceeds the batch spectral radius
    # by more than its finite-difference error
    s = hist[hist.optimizer == "SAM"]
    assert (s.lambda_max <= 1.2 * s.lambda_max_truth_batch.abs()).all()
    # SGDHess's product is exact autograd: it must agree with the monitor's to roundoff
    sg = hist[(hist.optimizer == "SGDHess")]["hvp_rel_error"].dropna()
    assert len(sg) and (sg < 1e-4).all()
    cal = pd.read_csv(out / "calibrate.csv")
    assert set(cal.workload) == {"digits-mlp", "wide-mlp"}
    assert np.isfinite(cal[["norm_v", "truth"]].to_numpy()).all() and (cal.truth > 0).all()
    summary = pd.read_csv(out / "summary.csv")
    assert {"median_rel_error", "iqr_rel_error", "median_ratio", "correlation"} <= set(summary.columns)
    assert {"lambda_max", "smoothness", "hvp", "hessian_diag", "noise_variance"} <= set(summary.estimate)
