"""The claims ledger (analysis/claims): BH over every report's rows, the verdict rules,
the seeds' quotes verbatim, one committed claim recomputed from the raw runs CSV, and the
minima driver's --quick run feeding the ledger."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.claims.ledger import COLUMNS, build, collect
from analysis.claims.quotes import QUOTES
from analysis.claims.rules import ledger_verdict
from analysis.harness.stats import benjamini_hochberg, paired_comparison, paired_verdict

REPO = Path(__file__).resolve().parents[1]
SEEDS = Path("/work/shared/seeds")


def _row(claim, comparison, effect, half, p, verdict=""):
    return {"claim": claim, "seed_file": "alpha-sam.md", "workload": "w", "metric": "m",
            "comparison": comparison, "effect": effect, "ci_low": effect - half,
            "ci_high": effect + half, "p_value": p, "p_adjusted": math.nan, "n_seeds": 5,
            "verdict": verdict}


def _write(folder: Path, rows) -> None:
    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(folder / "claims_rows.csv", index=False)


def test_ledger_adjusts_over_all_reports_and_decides(tmp_path):
    a = [_row("c1", "x vs y (expect less)", -0.5, 0.2, 0.001),
         _row("c2", "x vs y (expect greater)", -0.5, 0.2, 0.002),
         _row("c3", "x vs y (expect equivalent within 1.25x)", 0.01, 0.05, 0.7)]
    b = [_row("c4", "no expectation written", 0.4, 0.1, 0.02, verdict="holds"),
         _row("c5", "x vs y (expect less)", -0.3, 0.4, 0.04),
         _row("c6", "n/a", math.nan, math.nan, math.nan, "not testable at this scale"),
         _row("c7", "no expectation", 0.5, 0.2, 0.045, verdict="holds"),
         {**_row("c8", "a count", 1.0, math.nan, math.nan, verdict="does not hold"),
          "ci_low": math.nan, "ci_high": math.nan}]
    _write(tmp_path / "one", a)
    _write(tmp_path / "two", b)
    _write(tmp_path / "claims", [_row("stale", "(expect less)", 1, 1, 0.5)])  # excluded
    ledger = build(tmp_path, tmp_path / "claims").set_index("claim")
    assert "stale" not in ledger.index
    p = np.array([0.001, 0.002, 0.7, 0.02, 0.04, 0.045])
    adj = dict(zip(["c1", "c2", "c3", "c4", "c5", "c7"], benjamini_hochberg(p)))
    for c, v in adj.items():
        assert ledger.loc[c, "p_adjusted"] == pytest.approx(v)
    assert math.isnan(ledger.loc["c6", "p_adjusted"])
    assert ledger.loc["c1", "verdict"] == "holds"
    assert ledger.loc["c2", "verdict"] == "does not hold"
    assert ledger.loc["c3", "verdict"] == "holds"  # interval inside +-log 1.25
    assert ledger.loc["c4", "verdict"] == "holds"  # direction kept from its own verdict
    assert ledger.loc["c5", "verdict"] == "inconclusive"  # adjusted 0.04 but CI crosses 0
    assert ledger.loc["c6", "verdict"] == "not testable at this scale"
    assert adj["c7"] > 0.05 and ledger.loc["c7", "verdict"] == "inconclusive"  # downgraded
    assert ledger.loc["c8", "verdict"] == "does not hold"  # a count: its report's verdict
    written = pd.read_csv(tmp_path / "claims" / "claims.csv")
    assert list(written.columns) == COLUMNS and len(written) == 8
    md = (tmp_path / "claims" / "report.md").read_text()
    assert "](../one/report.md)" in md and "](../two/claims_rows.csv)" in md


def test_ledger_refuses_bad_rows(tmp_path):
    _write(tmp_path / "x", [_row("c", "(expect less)", 0.1, 0.1, 0.5, verdict="held")])
    with pytest.raises(ValueError, match="unknown verdicts"):
        collect(tmp_path)
    (tmp_path / "x" / "claims_rows.csv").write_text("claim,effect\nc,1\n")
    with pytest.raises(ValueError, match="missing columns"):
        collect(tmp_path)


def test_equivalence_rule_and_significance():
    r = pd.Series(_row("c", "(expect equivalent within 1.25x)", 0.5, 0.1, 1e-4))
    assert ledger_verdict(r, 1e-4) == "does not hold"  # [0.4, 0.6] outside +-0.223
    r = pd.Series(_row("c", "(expect equivalent within 1.25x)", 0.1, 0.3, 0.4))
    assert ledger_verdict(r, 0.4) == "inconclusive"
    r = pd.Series(_row("c", "(expect negative)", -0.6, 0.2, 0.2))
    assert ledger_verdict(r, 0.2) == "inconclusive"  # not significant after adjustment


@pytest.mark.skipif(not SEEDS.exists(), reason="seed files not on this machine")
def test_quotes_are_verbatim():
    norm = lambda s: re.sub(r"\s+", " ", s)  # noqa: E731
    for claim, (seed_file, quote) in QUOTES.items():
        text = norm((SEEDS / seed_file).read_text())
        assert norm(quote) in text, f"{claim}: quote not found in {seed_file}"


def test_committed_claim_recomputes_from_raw_runs():
    """SAM vs SGD, lambda_max of the training-set Hessian at equal training loss on
    digits-mlp: from reports/minima/runs_digits-mlp.csv with the shared statistics module,
    against reports/claims/claims.csv."""
    runs = pd.read_csv(REPO / "reports/minima/runs_digits-mlp.csv")
    ledger = pd.read_csv(REPO / "reports/claims/claims.csv")
    d = runs[(runs.point == "equal_loss") & (runs.status == "ok")]
    sam = d[d.optimizer == "SAM"].set_index("seed").lambda_max_train
    sgd = d[d.optimizer == "SGD"].set_index("seed").lambda_max_train
    seeds = sorted(set(sam.index) & set(sgd.index))
    res = paired_comparison(sam.loc[seeds].to_numpy(), sgd.loc[seeds].to_numpy(), log=True)
    row = ledger[(ledger.claim == "sam-flatter") & (ledger.workload == "digits-mlp")
                 & (ledger.metric == "lambda_max (train Hessian)")
                 & ledger.comparison.str.contains("equal training loss")]
    assert len(row) == 1
    row = row.iloc[0]
    assert row.n_seeds == res.n >= 5
    assert row.effect == pytest.approx(res.effect, rel=1e-9)
    assert (row.ci_low, row.ci_high) == pytest.approx((res.ci_low, res.ci_high), rel=1e-9)
    assert row.p_value == pytest.approx(res.p_ttest, rel=1e-9)
    testable = ledger.verdict != "not testable at this scale"
    adj = benjamini_hochberg(ledger.p_value.where(testable).to_numpy(float))
    assert row.p_adjusted == pytest.approx(adj[row.name], rel=1e-9)
    assert row.verdict == paired_verdict(res, expected="less", p_value=row.p_adjusted)


def test_minima_quick_feeds_the_ledger(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from analysis.minima.__main__ import main

    out = tmp_path / "reports" / "minima"
    assert main(["--quick", "--out", str(out)]) == 0
    runs = pd.read_csv(out / "runs_digits-mlp.csv")
    assert set(runs.point) == {"budget", "equal_loss"} and runs.seed.nunique() == 3
    ok = runs[runs.status == "ok"]
    for c in ("lambda_max_train", "asharp_worst", "asharp_avg", "trace_train"):
        assert np.isfinite(ok[c].to_numpy(float)).all(), c
    assert (ok.asharp_worst >= 0).all()
    lrs = pd.read_csv(out / "lr_selection_digits-mlp.csv")
    assert lrs.groupby("optimizer").lr.nunique().eq(3).all()
    md = (out / "report.md").read_text()
    for png in ("digits-mlp_seeds.png", "paired_ratios.png", "accuracy_vs_asharp_worst.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in md
    assert "## Reproduce" in md and "quick mode" in md
    # --report-only rebuilds the same rows from the CSVs
    before = pd.read_csv(out / "claims_rows.csv")
    assert main(["--quick", "--report-only", "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(before, pd.read_csv(out / "claims_rows.csv"))
    ledger = build(tmp_path / "reports", tmp_path / "reports" / "claims")
    assert set(ledger.verdict) <= {"holds", "does not hold", "inconclusive",
                                   "not testable at this scale"}
    assert (ledger[ledger.claim == "sam-flatter"].n_seeds == 3).all()


def test_ledger_reads_several_report_roots(tmp_path):
    _write(tmp_path / "a" / "minima", [_row("c1", "(expect less)", -0.5, 0.2, 0.001)])
    _write(tmp_path / "b" / "minima", [_row("hidden", "(expect less)", -0.5, 0.2, 0.001)])
    _write(tmp_path / "b" / "heat", [_row("c2", "(expect less)", -0.5, 0.2, 0.003)])
    rows = collect([tmp_path / "a", tmp_path / "b"])
    assert sorted(rows.claim) == ["c1", "c2"] and set(rows.source) == {"minima", "heat"}
