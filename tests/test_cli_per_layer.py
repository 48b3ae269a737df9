"""``curvature analyze --per-layer``: the per-module table and figure, checked against the
diagonal blocks of the dense float64 Hessian of the analysed data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import curvature as cv
from curvature.data import load_dataset
from curvature.pipeline import make_loss

DATA = "digits:n_train=120,n_test=40"


def test_analyze_per_layer_writes_table_and_figure(tmp_path):
    torch.manual_seed(0)
    model = cv.build_model("mlp", hidden=[6])
    ckpt = tmp_path / "m.pt"
    cv.save_checkpoint(ckpt, model, factory="mlp", factory_kwargs={"hidden": [6]},
                       data_spec=DATA)
    out = tmp_path / "an"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "curvature.cli", "analyze", str(ckpt), "--out", str(out), "-q",
         "--metrics", "trace,density", "--trace-matvecs", "8",
         "--density-probes", "2", "--density-steps", "12", "--no-test", "--per-layer",
         "--tol", "1e-8"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out / "per_layer.csv", dtype={"block": str})
    assert (out / "per_layer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "per_layer.png" in report and "per_layer_density.png" in report
    assert (out / "per_layer_density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text())["config"]["per_layer"] is True
    ds = load_dataset(DATA)
    parts = [b for b in cv.partition.partition(model, "module")]
    assert list(df["block"]) == [name for name, _ in parts]
    names = [p for _, ps in parts for p in ps]
    H = cv.dense_hessian(model, make_loss("ce"), (ds.x_train, ds.y_train), params=names).numpy()
    s = 0
    for (_, ps), row in zip(parts, df.itertuples()):
        n = sum(dict(model.named_parameters())[p].numel() for p in ps)
        Hb = H[s:s + n, s:s + n]
        s += n
        ev = np.linalg.eigvalsh(Hb)
        assert row.num_params == n and row.lambda_max_converged and row.lambda_min_converged
        assert row.lambda_max == pytest.approx(ev[-1], rel=1e-6)
        assert row.lambda_min == pytest.approx(ev[0], abs=1e-6 * abs(ev).max())
        assert abs(row.trace - np.trace(Hb)) <= 5 * row.trace_stderr
