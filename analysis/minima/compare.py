"""The minima study's statistics: paired comparisons by seed, rank correlations between
sharpness and generalisation, Benjamini-Hochberg within the report, and the rows the
claims ledger collects (``claims_rows.csv``).

Every test is :func:`analysis.harness.stats.paired_comparison` (paired t on log ratios,
the primary test: with 5 seeds the two-sided Wilcoxon signed-rank test cannot go below
p = 0.0625, so it is reported but never decides) or, for the rank correlations, a
Spearman test.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis.claims.rules import equivalence_verdict, ledger_verdict, verdict_from
from analysis.harness.stats import benjamini_hochberg, paired_comparison
from analysis.minima.config import (
    COMPARISONS,
    EQUIVALENCE_RATIO,
    METRIC_LABELS,
    POINTS,
    PRIMARY,
    SECONDARY,
    WORKLOADS,
)

SEED_FILES = {
    "sam-flatter": "sam-introduction.md",
    "sam-generalises": "sam-introduction.md",
    "alpha2-flatter-than-sam": "alpha-sam.md",
    "antisam-sharper-than-sam": "alpha-sam.md",
    "negrho-equals-sam": "alpha-sam.md",
    "diaghessian-flatter-than-adahessian": "sam-hessian-sgdhess.md",
    "sgdhess-noise-aligns-with-ggn": "sam-hessian-sgdhess.md",
    "flat-minima-generalise": "sam-introduction.md",
}


def pairs(df: pd.DataFrame, workload: str, point: str, a: str, b: str,
          metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``metric`` for optimizers ``a`` and ``b`` paired by seed (seeds where
    both runs have a finite value at ``point``), ordered by seed."""
    d = df[(df.workload == workload) & (df.point == point) & (df.status == "ok")]
    va = d[d.optimizer == a].set_index("seed")[metric]
    vb = d[d.optimizer == b].set_index("seed")[metric]
    both = sorted(set(va.index) & set(vb.index))
    x, y = va.loc[both].to_numpy(float), vb.loc[both].to_numpy(float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def comparison_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every (workload, point, metric, comparison) of :data:`COMPARISONS` on the primary
    and secondary metrics, plus SAM vs SGD test accuracy; BH over all rows here."""
    rows: list[dict[str, Any]] = []
    workloads = [w for w in WORKLOADS if w in set(df.workload)]
    for wl in workloads:
        for point in POINTS:
            for claim, a, b, expected in COMPARISONS:
                for metric in PRIMARY + SECONDARY:
                    rows.append(_one(df, wl, point, claim, a, b, expected, metric, log=True))
            rows.append(_one(df, wl, point, "sam-generalises", "SAM", "SGD", "greater",
                             "test_accuracy", log=False))
    out = pd.DataFrame([r for r in rows if r is not None])
    if len(out):
        out["p_bh"] = benjamini_hochberg(out.p_t.to_numpy())
        out["verdict"] = [_verdict(r) for r in out.itertuples()]
    return out


def _one(df, wl, point, claim, a, b, expected, metric, log):
    if metric not in df.columns:
        return None
    x, y = pairs(df, wl, point, a, b, metric)
    base = {"workload": wl, "point": point, "claim": claim, "a": a, "b": b,
            "expected": expected, "metric": metric, "primary": metric in PRIMARY
            or metric == "test_accuracy", "n": int(x.size)}
    if x.size < 2 or (log and ((x <= 0).any() or (y <= 0).any())):
        return {**base, "effect": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "p_t": math.nan, "p_wilcoxon": math.nan}
    r = paired_comparison(x, y, log=log)
    return {**base, "effect": r.effect, "ci_low": r.ci_low, "ci_high": r.ci_high,
            "p_t": r.p_ttest, "p_wilcoxon": r.p_wilcoxon}


def _verdict(r) -> str:
    if r.n < 2 or not math.isfinite(r.effect):
        return "inconclusive"
    if r.expected == "equivalent":
        return equivalence_verdict(r.ci_low, r.ci_high, math.log(EQUIVALENCE_RATIO))
    return verdict_from(r.effect, r.ci_low, r.ci_high, r.p_bh, r.expected)


def spearman_ci(rho: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Fisher-z interval of a Spearman correlation with the Fieller-Hartley-Pearson
    standard error ``sqrt(1.06 / (n - 3))``."""
    if n <= 3 or not math.isfinite(rho):
        return (math.nan, math.nan)
    z = math.atanh(max(min(rho, 0.999999), -0.999999))
    half = stats.norm.ppf(0.5 + level / 2) * math.sqrt(1.06 / (n - 3))
    return (math.tanh(z - half), math.tanh(z + half))


def correlation_table(df: pd.DataFrame) -> pd.DataFrame:
    """Spearman rank correlation between each sharpness metric and test accuracy over
    the runs of a workload at the fixed budget, **minima only**: runs whose final
    training loss is above the workload's target loss are left out (counted in
    ``n_left_out``). BH over the rows of this table."""
    rows = []
    for wl in [w for w in WORKLOADS if w in set(df.workload)]:
        d = df[(df.workload == wl) & (df.point == "budget") & (df.status == "ok")]
        minima = d[d.train_loss <= WORKLOADS[wl].target_loss]
        for metric in PRIMARY + SECONDARY:
            v = minima[[metric, "test_accuracy"]].dropna()
            n = len(v)
            rho, p = (stats.spearmanr(v[metric], v.test_accuracy) if n >= 4
                      else (math.nan, math.nan))
            lo, hi = spearman_ci(float(rho), n)
            rows.append({"workload": wl, "metric": metric, "n_runs": n,
                         "n_left_out": int(len(d) - len(minima)),
                         "optimizers": ", ".join(sorted(set(minima.optimizer))),
                         "spearman": float(rho), "ci_low": lo, "ci_high": hi,
                         "p": float(p), "primary": metric in PRIMARY})
    out = pd.DataFrame(rows)
    if len(out):
        out["p_bh"] = benjamini_hochberg(out.p.to_numpy())
        out["verdict"] = [verdict_from(r.spearman, r.ci_low, r.ci_high, r.p_bh, "negative")
                          if r.n_runs >= 4 else "inconclusive" for r in out.itertuples()]
    return out


def _cmp_text(a: str, b: str, expected: str, point: str, metric: str) -> str:
    where = "at equal training loss" if point == "equal_loss" else "at the fixed budget"
    if expected == "equivalent":
        exp = f"expect equivalent within {EQUIVALENCE_RATIO}x"
    else:
        exp = f"expect {expected}"
    kind = "difference" if metric == "test_accuracy" else "log ratio"
    return f"{a} vs {b}, {kind}, paired by seed, {where} ({exp})"


def claims_rows(comp: pd.DataFrame, corr: pd.DataFrame,
                extra: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """The ledger's rows from this study: primary metrics only (``PRIMARY`` and SAM vs
    SGD test accuracy; the secondary metrics stay in the minima report). ``p_adjusted``
    here is BH within these rows; the ledger recomputes it over every report's rows."""
    rows = []
    for r in comp[comp.primary].itertuples():
        rows.append({"claim": r.claim, "seed_file": SEED_FILES[r.claim],
                     "workload": r.workload, "metric": METRIC_LABELS.get(r.metric, r.metric),
                     "comparison": _cmp_text(r.a, r.b, r.expected, r.point, r.metric),
                     "effect": r.effect, "ci_low": r.ci_low, "ci_high": r.ci_high,
                     "p_value": r.p_t, "p_adjusted": math.nan, "n_seeds": r.n,
                     "verdict": ""})
    for r in corr[corr.primary].itertuples():
        rows.append({"claim": "flat-minima-generalise", "seed_file":
                     SEED_FILES["flat-minima-generalise"], "workload": r.workload,
                     "metric": f"{METRIC_LABELS[r.metric]} vs test accuracy",
                     "comparison": f"Spearman rank correlation over {r.n_runs} minima "
                     f"(train loss <= target; {r.n_left_out} non-minima left out) "
                     "(expect negative)",
                     "effect": r.spearman, "ci_low": r.ci_low, "ci_high": r.ci_high,
                     "p_value": r.p, "p_adjusted": math.nan, "n_seeds": r.n_runs,
                     "verdict": ""})
    out = pd.DataFrame(rows + list(extra or []))
    testable = out.verdict != "not testable at this scale"
    out.loc[testable, "p_adjusted"] = benjamini_hochberg(out.loc[testable, "p_value"]
                                                         .to_numpy(float))
    out.loc[testable, "verdict"] = [ledger_verdict(r, r.p_adjusted)
                                    for r in out[testable].itertuples()]
    return out
