"""The estimates-vs-truth full-curvature figure and its report paragraph, on a small
made-up history (no training): non-positive traces are counted and described, the
curves named as on SGD's line are those within 5% at every probe, and a run with a
single probe or no positive value does not break the figure."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.estimates_vs_truth.config import Workload
from analysis.estimates_vs_truth.full_figure import (
    describe,
    fig_full,
    final_ratios,
    near_sgd,
)

WLS = [Workload("a", "workload a", "digits", "mlp", {}, steps=30, every=10, probe_examples=8),
       Workload("b", "workload b", "digits", "mlp", {}, steps=10, every=10, probe_examples=8)]


def _history() -> pd.DataFrame:
    rows = []
    lam = {"SGD": 1.0, "SAM": 1.03, "ASAM": 0.8, "AcceleratedSAM": 0.05, "SASGD": 0.5,
           "SASAM": 0.3, "Adam": 0.6}
    for wl, steps in (("a", (10, 20, 30)), ("b", (10,))):
        for o, v in lam.items():
            for i, s in enumerate(steps):
                trace = -2.0 if (o == "SASAM" and wl == "a" and s == 20) else 10 * v / (1 + i)
                rows.append({"workload": wl, "optimizer": o, "step": s,
                             "lambda_max_full": v / (1 + i), "trace_full": trace})
    return pd.DataFrame(rows)


def test_figure_and_text_agree_with_the_data(tmp_path):
    hist = _history()
    assert fig_full(hist, WLS, tmp_path) == "full_curvature.png"
    assert (tmp_path / "full_curvature.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h = hist[hist.workload == "a"]
    assert near_sgd(h, "lambda_max_full", ["SAM", "ASAM"]) == ["SAM"]  # 3% in, 20% out
    assert final_ratios(h, "lambda_max_full", ["ASAM"])["ASAM"] == pytest.approx(0.8)
    text = describe(hist, WLS)
    assert "on both workloads: SAM." in text
    assert "More than a decade below SGD on both workloads: AcceleratedSAM." in text
    assert "SASAM's Hutch++ trace on a is ≤ 0 at 1 of 3 probes (steps 20; down to -2)" in text
    assert "SASGD jumps by up to 0.3," in text  # b has one probe: a alone counts
    assert "The figure draws 7 trajectories" in text


def test_no_positive_value_in_a_row_still_draws(tmp_path):
    hist = _history()
    hist.loc[hist.workload == "b", "trace_full"] = -1.0
    fig_full(hist, WLS, tmp_path)
    assert (tmp_path / "full_curvature.png").stat().st_size > 10_000
    assert "on b is ≤ 0 at 1 of 1 probes" in describe(hist, WLS)
