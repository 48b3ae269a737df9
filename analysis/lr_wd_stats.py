"""Statistics of the learning rate x weight decay grid (:mod:`analysis.lr_wd_heatmap`).

Runs are paired by seed (seed ``s`` fixes the initial weights and the batch order of
every optimizer). Every comparison is :func:`analysis.harness.stats.paired_comparison`
over seeds: a mean log ratio with a Student-t interval and the paired t-test for
positive quantities (lambda_max, the spread over learning rates), a mean difference for
signed ones (Tr(H) can be negative away from a minimum, test accuracy).

Per-seed summaries of a grid (one number per seed, then paired over seeds):

* *grid geometric mean* of lambda_max over the cells where both optimizers trained
  without diverging in that seed -- "lower curvature regardless of the hyperparameters"
  in aggregate; :func:`per_cell_tests` tests every cell on its own (BH over cells);
* *learning-rate spread*: per weight decay, the standard deviation of test accuracy over
  the learning rates, averaged over weight decays (a diverged run counts at chance,
  0.1); the Friedman test per optimizer asks whether the learning rate matters at all
  (blocks = seed x weight decay), with Kendall's W = chi2 / (n (k - 1)) as its size;
* *best cell*: each optimizer's cell with the highest mean test accuracy over seeds
  (chosen on the test split, the same oracle tuning for every optimizer).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis.claim_rows import claim_row, finish_rows
from analysis.harness.stats import benjamini_hochberg, paired_comparison, paired_verdict

__all__ = ["CHANCE", "seed_matrix", "summary_table", "per_cell_tests", "claims_table"]

CHANCE = 0.1  # test accuracy of a diverged run (10 classes)
SEED_FILE = "sa-sam-poster.md"


def seed_matrix(df: pd.DataFrame, opt: str, col: str, s: Any, *, fill: float | None = None
                ) -> np.ndarray:
    """Array ``[seed, weight decay, learning rate]`` of ``col`` for ``opt``; diverged or
    missing runs are NaN (or ``fill``)."""
    m = np.full((s.seeds, len(s.wds), len(s.lrs)), np.nan)
    sub = df[df.optimizer == opt]
    for r in sub.itertuples(index=False):
        if r.seed >= s.seeds or r.lr not in s.lrs or r.weight_decay not in s.wds:
            continue
        v = getattr(r, col) if r.status == "ok" else math.nan
        m[r.seed, s.wds.index(r.weight_decay), s.lrs.index(r.lr)] = v
    if fill is not None:
        m[~np.isfinite(m)] = fill
    return m


def lr_spread(df: pd.DataFrame, opt: str, s: Any) -> np.ndarray:
    """Per seed: std over learning rates of test accuracy, averaged over weight decays."""
    acc = seed_matrix(df, opt, "test_accuracy", s, fill=CHANCE)
    return acc.std(axis=2, ddof=1).mean(axis=1)


def best_cell(df: pd.DataFrame, opt: str, s: Any) -> tuple[int, int]:
    """``(wd index, lr index)`` of the highest seed-mean test accuracy (chance for diverged)."""
    acc = seed_matrix(df, opt, "test_accuracy", s, fill=CHANCE).mean(axis=0)
    i, j = np.unravel_index(int(np.argmax(acc)), acc.shape)
    return int(i), int(j)


def friedman(df: pd.DataFrame, opt: str, s: Any) -> tuple[float, float, float]:
    """Friedman chi2, p and Kendall's W of test accuracy over learning rates
    (blocks: seed x weight decay)."""
    acc = seed_matrix(df, opt, "test_accuracy", s, fill=CHANCE)
    blocks = acc.reshape(-1, len(s.lrs))
    if blocks.shape[0] < 2 or len(s.lrs) < 3 or np.ptp(blocks) == 0:
        return math.nan, math.nan, math.nan
    chi2, p = stats.friedmanchisquare(*blocks.T)
    return float(chi2), float(p), float(chi2 / (blocks.shape[0] * (len(s.lrs) - 1)))


def summary_table(df: pd.DataFrame, s: Any) -> pd.DataFrame:
    """One row per optimizer: failures, train loss, accuracy over the grid, learning-rate
    sensitivity and curvature medians."""
    rows = []
    for o in [o for o in s.optimizers if o in set(df.optimizer)]:
        sub = df[df.optimizer == o]
        loss = seed_matrix(df, o, "train_loss", s)
        acc = seed_matrix(df, o, "test_accuracy", s, fill=CHANCE)
        i, j = best_cell(df, o, s)
        spread = lr_spread(df, o, s)
        chi2, p, w = friedman(df, o, s)
        n_div = int((sub.status != "ok").sum())
        rows.append({
            "optimizer": o, "runs": len(sub), "diverged": n_div,
            "did_not_train": int(np.sum(~(loss <= s.failed_loss))),
            "train_loss_median": float(np.nanmedian(loss)),
            "test_acc_mean": float(acc.mean()),
            "best_cell": f"lr={s.lrs[j]:g}, wd={s.wds[i]:g}",
            "best_cell_acc": float(acc[:, i, j].mean()),
            "worst_cell_acc": float(acc.mean(axis=0).min()),
            "lr_spread_mean": float(spread.mean()), "lr_spread_std": float(spread.std(ddof=1))
            if spread.size > 1 else math.nan,
            "friedman_chi2": chi2, "friedman_p": p, "kendall_w": w,
            "lambda_max_test_median": float(np.nanmedian(seed_matrix(df, o, "lambda_max_test", s))),
            "trace_test_median": float(np.nanmedian(seed_matrix(df, o, "trace_test", s))),
        })
    return pd.DataFrame(rows)


def _others(df: pd.DataFrame, s: Any, who: str = "SA-SAM") -> list[str]:
    return [o for o in s.optimizers if o != who and o in set(df.optimizer)]


def per_cell_tests(df: pd.DataFrame, s: Any) -> pd.DataFrame:
    """Every cell, SA-SAM against each other optimizer, paired over seeds: lambda_max
    (log ratio) and Tr(H_test) (difference); Benjamini-Hochberg over all these tests."""
    rows = []
    if "SA-SAM" not in set(df.optimizer):
        return pd.DataFrame()
    for metric, log in (("lambda_max_test", True), ("trace_test", False)):
        a = seed_matrix(df, "SA-SAM", metric, s)
        for o in _others(df, s):
            b = seed_matrix(df, o, metric, s)
            for i, wd in enumerate(s.wds):
                for j, lr in enumerate(s.lrs):
                    x, y = a[:, i, j], b[:, i, j]
                    row = {"comparison": f"SA-SAM vs {o}", "metric": metric, "lr": lr,
                           "weight_decay": wd, "n": int(np.sum(np.isfinite(x) & np.isfinite(y)))}
                    try:
                        r = paired_comparison(x, y, log=log)
                    except ValueError:
                        rows.append({**row, "effect": math.nan, "p": math.nan, "_r": None})
                        continue
                    rows.append({**row, "effect": r.effect, "ci_low": r.ci_low,
                                 "ci_high": r.ci_high, "p": r.p_ttest, "_r": r})
    t = pd.DataFrame(rows)
    t["p_bh"] = benjamini_hochberg(t.p.to_numpy(dtype=float))
    t["verdict"] = [paired_verdict(r, expected="less", p_value=q) if r is not None
                    else "n/a" for r, q in zip(t._r, t.p_bh)]
    t["ratio"] = np.where(t.metric == "lambda_max_test", np.exp(t.effect), np.nan)
    return t.drop(columns="_r")


def _grid_geomean(df: pd.DataFrame, a: str, b: str, s: Any, trained_only: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per seed: geometric means of lambda_max_test of ``a`` and ``b`` over the cells where
    both are finite in that seed (and, with ``trained_only``, both reached a train loss
    <= ``s.failed_loss``)."""
    x, y = (seed_matrix(df, o, "lambda_max_test", s).reshape(s.seeds, -1) for o in (a, b))
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if trained_only:
        la, lb = (seed_matrix(df, o, "train_loss", s).reshape(s.seeds, -1) for o in (a, b))
        ok &= (la <= s.failed_loss) & (lb <= s.failed_loss)
    ga = np.array([np.exp(np.log(x[k, ok[k]]).mean()) if ok[k].any() else np.nan
                   for k in range(s.seeds)])
    gb = np.array([np.exp(np.log(y[k, ok[k]]).mean()) if ok[k].any() else np.nan
                   for k in range(s.seeds)])
    return ga, gb


def _grid_mean(df: pd.DataFrame, a: str, b: str, col: str, s: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = (seed_matrix(df, o, col, s).reshape(s.seeds, -1) for o in (a, b))
    ok = np.isfinite(x) & np.isfinite(y)
    return (np.array([x[k, ok[k]].mean() if ok[k].any() else np.nan for k in range(s.seeds)]),
            np.array([y[k, ok[k]].mean() if ok[k].any() else np.nan for k in range(s.seeds)]))


def _safe(a: np.ndarray, b: np.ndarray, log: bool):
    try:
        return paired_comparison(a, b, log=log)
    except ValueError:
        return None


def claims_table(df: pd.DataFrame, s: Any) -> pd.DataFrame:
    """The report's claim rows (see :mod:`analysis.claim_rows`), BH within the report."""
    rows: list[dict[str, Any]] = []
    wl = s.workload
    if "SA-SAM" not in set(df.optimizer):
        return finish_rows(rows)
    for o in _others(df, s):
        ia, ja = best_cell(df, "SA-SAM", s)
        ib, jb = best_cell(df, o, s)
        lam_a = seed_matrix(df, "SA-SAM", "lambda_max_test", s)[:, ia, ja]
        lam_b = seed_matrix(df, o, "lambda_max_test", s)[:, ib, jb]
        rows.append(claim_row(
            "SA-SAM converges to flatter minima", SEED_FILE, wl,
            "log lambda_max(H_test), each optimizer at its best cell", f"SA-SAM vs {o}",
            _safe(lam_a, lam_b, True), "less",
            note=f"best cells: SA-SAM lr={s.lrs[ja]:g} wd={s.wds[ia]:g}; "
                 f"{o} lr={s.lrs[jb]:g} wd={s.wds[ib]:g}"))
    for o in _others(df, s):
        ga, gb = _grid_geomean(df, "SA-SAM", o, s)
        rows.append(claim_row(
            "SA-SAM achieves lower curvature regardless of the hyperparameters", SEED_FILE, wl,
            "log lambda_max(H_test), geometric mean over the LR x WD grid", f"SA-SAM vs {o}",
            _safe(ga, gb, True), "less"))
    for o in _others(df, s):
        ga, gb = _grid_geomean(df, "SA-SAM", o, s, trained_only=True)
        rows.append(claim_row(
            "SA-SAM achieves lower curvature regardless of the hyperparameters", SEED_FILE, wl,
            f"log lambda_max(H_test), geometric mean over the cells where both trained "
            f"(train loss <= {s.failed_loss:g})", f"SA-SAM vs {o}", _safe(ga, gb, True), "less"))
    for o in _others(df, s):
        ta, tb = _grid_mean(df, "SA-SAM", o, "trace_test", s)
        rows.append(claim_row(
            "SA-SAM achieves lower curvature regardless of the hyperparameters", SEED_FILE, wl,
            "Tr(H_test) mean over the LR x WD grid (difference, not log: traces can be < 0)",
            f"SA-SAM vs {o}", _safe(ta, tb, False), "less"))
    for who in ("SA-SAM", "SA-SGD"):
        if who not in set(df.optimizer):
            continue
        for o in [o for o in ("SGD", "MSGD", "Adam", "SAM") if o in set(df.optimizer)]:
            rows.append(claim_row(
                f"{who}'s test accuracy varies less with the learning rate", SEED_FILE, wl,
                "log std of test accuracy over learning rates (mean over weight decays)",
                f"{who} vs {o}", _safe(lr_spread(df, who, s), lr_spread(df, o, s), True),
                "less"))
    for o in _others(df, s):
        ia, ja = best_cell(df, "SA-SAM", s)
        ib, jb = best_cell(df, o, s)
        acc_a = seed_matrix(df, "SA-SAM", "test_accuracy", s, fill=CHANCE)[:, ia, ja]
        acc_b = seed_matrix(df, o, "test_accuracy", s, fill=CHANCE)[:, ib, jb]
        rows.append(claim_row(
            "SA-SAM achieves the best test accuracy", SEED_FILE, wl,
            "test accuracy (difference), each optimizer at its best cell", f"SA-SAM vs {o}",
            _safe(acc_a, acc_b, False), "greater"))
    return finish_rows(rows)
