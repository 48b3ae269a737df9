"""The claim drivers of issue 15 (lr-wd-heatmap statistics, accelerated-sam, the EoS window,
the demo's equal-loss headline): verdicts recomputed from synthetic CSVs whose answer is
known, the accelerated-sam ``--quick`` run and its ``--report-only`` rebuild."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from analysis.claim_rows import COLUMNS, VERDICT_WORDS, claim_row, finish_rows, write_rows
from analysis.eos_window import WindowSettings, window_summary
from analysis.harness.stats import benjamini_hochberg, paired_comparison
from analysis.lr_wd_stats import claims_table, friedman, lr_spread, per_cell_tests
from curvature.demo import equal_loss_lambda

OPTS = ["SGD", "MSGD", "Adam", "SAM", "SA-SGD", "SA-SAM"]


def _grid(seeds: int = 5) -> SimpleNamespace:
    return SimpleNamespace(seeds=seeds, lrs=[0.01, 0.1, 1.0], wds=[0.0, 1e-3], optimizers=OPTS,
                           failed_loss=0.5, workload="synthetic")


def _runs(s: SimpleNamespace, sa_sam_factor: float, rng: np.random.Generator) -> pd.DataFrame:
    """Every optimizer shares a per-(seed, cell) lambda_max; SA-SAM's is ``sa_sam_factor``
    times it (2% noise). Test accuracy depends on the learning rate for SGD only."""
    rows = []
    for seed in range(s.seeds):
        for lr in s.lrs:
            for wd in s.wds:
                base = math.exp(rng.normal(0, 0.3))
                for o in OPTS:
                    lam = base * (sa_sam_factor if o == "SA-SAM" else 1.0) * math.exp(
                        rng.normal(0, 0.02))
                    acc = (0.6 + 0.1 * math.log10(lr) * -1 if o == "SGD" else 0.9) + rng.normal(
                        0, 0.005)
                    rows.append({"optimizer": o, "lr": lr, "weight_decay": wd, "seed": seed,
                                 "status": "ok", "train_loss": 0.1, "test_accuracy": acc,
                                 "lambda_max_test": lam, "trace_test": 10 * lam})
    return pd.DataFrame(rows)


def test_heatmap_claims_recover_a_known_flatness_ratio():
    s = _grid()
    df = _runs(s, 0.5, np.random.default_rng(0))
    t = claims_table(df, s)
    assert list(t.columns[:len(COLUMNS)]) == COLUMNS
    assert set(t.verdict) <= set(VERDICT_WORDS)
    grid = t[t.metric == "log lambda_max(H_test), geometric mean over the LR x WD grid"]
    assert len(grid) == 5
    assert np.allclose(np.exp(grid.effect), 0.5, rtol=0.03)
    assert (grid.verdict == "holds").all()
    # the verdict is the shared module's paired t on the per-seed grid geometric means
    a = df[df.optimizer == "SA-SAM"].groupby("seed").lambda_max_test.apply(
        lambda v: np.exp(np.log(v).mean()))
    b = df[df.optimizer == "SGD"].groupby("seed").lambda_max_test.apply(
        lambda v: np.exp(np.log(v).mean()))
    r = paired_comparison(a.to_numpy(), b.to_numpy())
    row = grid[grid.comparison == "SA-SAM vs SGD"].iloc[0]
    assert row.p_value == pytest.approx(r.p_ttest) and row.effect == pytest.approx(r.effect)
    assert row.p_bh_report == pytest.approx(
        benjamini_hochberg(t.p_value.to_numpy(dtype=float))[grid.index[0]])
    # SGD's accuracy falls with the learning rate: larger spread, Friedman rejects
    assert lr_spread(df, "SGD", s).mean() > 10 * lr_spread(df, "SA-SAM", s).mean()
    assert friedman(df, "SGD", s)[1] < 1e-3
    sens = t[(t.comparison == "SA-SAM vs SGD") & t.claim.str.contains("learning rate")]
    assert sens.verdict.iloc[0] == "holds"
    cells = per_cell_tests(df, s)
    lam = cells[cells.metric == "lambda_max_test"]
    assert len(lam) == 5 * 6 and (lam.verdict == "holds").all()


def test_heatmap_claims_without_an_effect_are_not_holds():
    s = _grid()
    t = claims_table(_runs(s, 1.0, np.random.default_rng(1)), s)
    grid = t[t.metric == "log lambda_max(H_test), geometric mean over the LR x WD grid"]
    assert not (grid.verdict == "holds").any()


def test_finish_rows_adjusts_within_the_report(tmp_path):
    rng = np.random.default_rng(2)
    strong = paired_comparison(np.exp(rng.normal(0, 0.01, 5)) * 0.5, np.ones(5))
    weak = paired_comparison(np.exp(rng.normal(0, 0.3, 5)), np.ones(5))
    rows = [claim_row("c1", "s.md", "w", "log m", "a vs b", strong, "less"),
            claim_row("c2", "s.md", "w", "log m", "a vs b", weak, "less"),
            claim_row("c3", "s.md", "w", "count", "x", None, None,
                      fixed_verdict="not testable at this scale")]
    t = finish_rows(rows)
    assert list(t.verdict) == ["holds", "inconclusive", "not testable at this scale"]
    assert t.p_bh_report.iloc[0] == pytest.approx(min(1.0, 2 * strong.p_ttest))
    write_rows(tmp_path, t)
    back = pd.read_csv(tmp_path / "claims_rows.csv")
    assert list(back.columns) == COLUMNS and back.p_adjusted.isna().all()
    with pytest.raises(ValueError, match="verdict"):
        claim_row("c", "s", "w", "m", "x", None, None, fixed_verdict="held")


def test_window_summary_detects_a_period_two_oscillation():
    steps = np.arange(0, 31)
    lam = 4.0 + 0.01 * (-1.0) ** steps
    df = pd.DataFrame({"run": "r", "data": "d", "loss_name": "mse", "kind": "fixed", "seed": 0,
                       "warmup": 10, "step": steps, "loss": 0.1, "lambda_max": lam,
                       "residual": 1e-6, "g_along_v": 0.3 * (-1.0) ** steps, "eta": 0.5})
    r = window_summary(df, WindowSettings()).iloc[0]
    assert r.flip_fraction == 1.0 and r.zigzag_fraction == 1.0
    assert r.eta_lambda_window_median == pytest.approx(2.0, rel=0.01)
    df["g_along_v"] = 0.3  # no oscillation
    assert window_summary(df, WindowSettings()).iloc[0].flip_fraction == 0.0


def test_equal_loss_lambda_interpolates_in_log_loss():
    ev = pd.DataFrame({"step": [10, 20, 30], "train_loss": [1.0, 0.1, 0.01]})
    traj = [{"step": 10, "lambda_max": 5.0}, {"step": 20, "lambda_max": 3.0},
            {"step": 30, "lambda_max": 1.0}]
    lam, a, b = equal_loss_lambda(ev, traj, math.sqrt(0.1 * 0.01))  # halfway in log
    assert (a, b) == (20, 30) and lam == pytest.approx(2.0)
    assert equal_loss_lambda(ev, traj, 2.0) == (5.0, 10, 10)
    assert equal_loss_lambda(ev, traj, 1e-3) is None


def test_accelerated_sam_quick_and_report_only(tmp_path, one_thread):
    from analysis.accelerated_sam import main

    out = tmp_path / "acc"
    assert main(["--quick", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    for name in ("lr_multiples.png", "convergence.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and f"]({name})" in md
    a = pd.read_csv(out / "lr_multiples.csv")
    assert set(a["loss"]) == {"ce", "mse"} and set(a.multiple) == {0.5, 1.0, 4.0}
    assert np.allclose(a.lr * a.lambda_0, a.multiple)
    b = pd.read_csv(out / "convergence.csv")
    assert {"SAM", "SAM at 1/lambda_0", "AcceleratedSAM", "oracle"} <= set(b.method)
    tr = pd.read_csv(out / "trajectories.csv")
    orc = tr[tr.method == "oracle"].dropna(subset=["lambda_max"])
    assert np.allclose(orc.step_times_lambda, 1.0)  # the oracle's step is 1/lambda_max(w_t)
    rows = pd.read_csv(out / "claims_rows.csv")
    assert list(rows.columns) == COLUMNS and set(rows.verdict) <= set(VERDICT_WORDS)
    (out / "report.md").unlink()
    (out / "convergence.png").unlink()
    assert main(["--quick", "--report-only", "--out", str(out)]) == 0
    assert (out / "convergence.png").exists() and "## Claims" in (out / "report.md").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(out / "claims_rows.csv"), rows)
