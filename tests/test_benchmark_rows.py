"""Pure logic of the benchmark's row groups and scale figure: ``--rows`` parsing, merging a
group run into an earlier report, and the log-log points and slopes of ``scale.png``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.benchmark.config import GROUPS, parse_rows
from analysis.benchmark.merge import merge_frames
from analysis.benchmark.scaling import loglog_slope, scale_points


def test_parse_rows_orders_groups_and_refuses_unknown_names() -> None:
    assert parse_rows("scale,small") == ("small", "scale")
    assert parse_rows(" big ") == ("big",)
    assert parse_rows("all") == GROUPS
    with pytest.raises(ValueError, match="huge"):
        parse_rows("small,huge")
    with pytest.raises(ValueError):
        parse_rows(",")


def test_merge_frames_replaces_rows_of_the_workloads_run_and_keeps_the_rest() -> None:
    old = pd.DataFrame({"workload": ["a", "a", "b"], "task": ["hvp", "trace", "hvp"],
                        "time_s": [1.0, 2.0, 3.0], "old_only": [7, 8, 9]})
    new = pd.DataFrame({"workload": ["a", "c"], "task": ["hvp", "hvp"], "time_s": [10.0, 30.0],
                        "feed": ["tensor", "loader"]})
    m = merge_frames(old, new, ["a", "c"])
    assert list(m.workload) == ["b", "a", "c"]  # a's old rows (both tasks) are gone
    assert list(m.time_s) == [3.0, 10.0, 30.0]
    assert list(m.columns[:4]) == ["workload", "task", "time_s", "feed"]
    assert m.old_only.iloc[0] == 9 and math.isnan(m.old_only.iloc[1])
    assert merge_frames(pd.DataFrame(), new, ["a"]).equals(new)
    assert list(merge_frames(old, pd.DataFrame(), ["a"]).workload) == ["b"]


def _rows() -> pd.DataFrame:
    base = {"sweep": "", "status": "ok", "extrapolated": False, "time_in_gradients": 2.0, "hvps": 1}
    rows = [
        {**base, "workload": "m1", "feed": "tensor", "n_params": 100, "task": "hvp_warm",
         "tool": "curvature", "time_s": 0.01},
        {**base, "workload": "m2", "feed": "tensor", "n_params": 10_000, "task": "hvp_warm",
         "tool": "curvature", "time_s": 1.0},
        {**base, "workload": "m2-loader", "feed": "loader", "n_params": 10_000,
         "task": "hvp_warm", "tool": "curvature", "time_s": 1.5},
        {**base, "workload": "m2", "feed": "tensor", "n_params": 10_000, "task": "density",
         "tool": "pyhessian", "time_s": 50.0, "extrapolated": True},
        {**base, "workload": "m2", "feed": "tensor", "n_params": 10_000, "task": "lambda_max",
         "tool": "pyhessian", "time_s": 90.0, "status": "timeout"},
        {**base, "workload": "m2", "feed": "tensor", "n_params": 10_000, "task": "trace",
         "tool": "pyhessian", "time_s": math.nan, "status": "error"},
        {**base, "workload": "s", "feed": "tensor", "sweep": "params", "n_params": 50,
         "task": "hvp_warm", "tool": "curvature", "time_s": 0.001},
    ]
    return pd.DataFrame(rows)


def test_scale_points_keep_main_rows_of_one_feed_and_mark_extrapolated_hollow() -> None:
    pts = scale_points(_rows())
    assert set(pts.workload) == {"m1", "m2"}  # no sweep, no loader, no failed run
    warm = pts[pts.task == "hvp_warm"]
    assert list(warm.n_params) == [100, 10_000]
    assert not warm.hollow.any()
    assert pts[pts.task == "density"].hollow.all()
    assert pts[pts.task == "lambda_max"].hollow.all()  # a lower bound
    assert list(scale_points(_rows(), feed="loader").workload) == ["m2-loader"]


def test_loglog_slope_recovers_a_power_law() -> None:
    n = np.array([1e4, 1e5, 1e6, 1e7])
    assert loglog_slope(n, 3e-6 * n**1.3) == pytest.approx(1.3, abs=1e-9)
    # points from the warm-product rows above: 100x parameters, 100x time
    warm = scale_points(_rows()).query("task == 'hvp_warm'")
    assert loglog_slope(warm.n_params, warm.time_s) == pytest.approx(1.0)
    assert math.isnan(loglog_slope(np.array([5.0, 5.0]), np.array([1.0, 2.0])))
