"""Tables, figures, ``claims_rows.csv`` and ``report.md`` of the minima study, rebuilt
from the CSVs of a run folder (``runs_*.csv``, ``lr_selection_*.csv``, ``meta_*.json``)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.harness.report import finish_report, markdown_table, png_sizes
from analysis.harness.stats import paired_comparison
from analysis.harness.timing import Timer
from analysis.minima.compare import claims_rows, comparison_table, correlation_table
from analysis.minima.config import (
    EQUIVALENCE_RATIO,
    METRIC_LABELS,
    OPTIMIZERS,
    PRIMARY,
    SECONDARY,
    WORKLOADS,
    Settings,
)
from analysis.minima.figures import fig_forest, fig_scatter, fig_seeds

NOT_TESTABLE = [{
    "claim": "sgdhess-noise-aligns-with-ggn", "seed_file": "sam-hessian-sgdhess.md",
    "workload": "-", "metric": "alignment of the SGD noise covariance with the GGN",
    "comparison": "not run: needs per-example gradient covariances against the GGN at "
    "matched points; not built in this round", "effect": math.nan, "ci_low": math.nan,
    "ci_high": math.nan, "p_value": math.nan, "p_adjusted": math.nan, "n_seeds": 0,
    "verdict": "not testable at this scale"}]


def noise_rows(noise: pd.DataFrame | None) -> list[dict]:
    """The ledger row of the SGD-noise / GGN alignment claim (``not testable`` without
    ``noise_alignment.csv``): paired difference ``cos(Sigma, G) - cos(Sigma, Q G Q^T)``."""
    if noise is None or len(noise.dropna(subset=["cos_sigma_ggn"])) < 2:
        return NOT_TESTABLE
    n = noise.dropna(subset=["cos_sigma_ggn", "cos_sigma_rotated"])
    r = paired_comparison(n.cos_sigma_ggn.to_numpy(), n.cos_sigma_rotated.to_numpy(), log=False)
    return [{"claim": "sgdhess-noise-aligns-with-ggn", "seed_file": "sam-hessian-sgdhess.md",
             "workload": "digits-mlp", "metric": "cos(Sigma, G), Frobenius, at SGD solutions",
             "comparison": "cos(Sigma, G) vs cos(Sigma, Q G Q^T) (G with Haar-random "
             "eigenvectors), difference, paired by seed (expect greater)",
             "effect": r.effect, "ci_low": r.ci_low, "ci_high": r.ci_high,
             "p_value": r.p_ttest, "p_adjusted": math.nan, "n_seeds": r.n, "verdict": ""}]


def load(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    runs = [pd.read_csv(f) for f in sorted(out.glob("runs_*.csv"))]
    lrs = [pd.read_csv(f) for f in sorted(out.glob("lr_selection_*.csv"))]
    metas = {f.stem[5:]: json.loads(f.read_text()) for f in sorted(out.glob("meta_*.json"))}
    if not runs:
        raise FileNotFoundError(f"no runs_*.csv in {out}")
    df = pd.concat(runs, ignore_index=True)
    # a workload split over processes may repeat a run at the split: keep the first
    df = df.drop_duplicates(["workload", "optimizer", "seed", "point"], keep="first")
    return df.reset_index(drop=True), pd.concat(lrs, ignore_index=True), metas


def geomean_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per workload, point and optimizer: runs reaching the point, mean test accuracy,
    and geometric means of the curvature metrics."""
    rows = []
    for (wl, point, opt), g in df.groupby(["workload", "point", "optimizer"], sort=False):
        ok = g[g.status == "ok"]
        row = {"workload": wl, "point": point, "optimizer": opt, "lr": g.lr.iloc[0],
               "runs": f"{len(ok)}/{len(g)}", "steps": ok.steps.mean() if len(ok) else math.nan,
               "train_loss": ok.train_loss.mean() if len(ok) else math.nan,
               "test_accuracy": ok.test_accuracy.mean() if len(ok) else math.nan}
        for m in PRIMARY + SECONDARY:
            v = ok[m].to_numpy(float) if m in ok else np.array([])
            v = v[np.isfinite(v) & (v > 0)]
            row[m] = float(np.exp(np.log(v).mean())) if v.size else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def rebuild(out: Path, quick: bool) -> int:
    timer = Timer()
    df, lrs, metas = load(out)
    wls = [w for w in WORKLOADS if w in set(df.workload)]
    order = [o for o in OPTIMIZERS if o in set(df.optimizer)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        comp = comparison_table(df)
        corr = correlation_table(df)
    comp.to_csv(out / "comparisons.csv", index=False)
    corr.to_csv(out / "correlations.csv", index=False)
    noise = (pd.read_csv(out / "noise_alignment.csv")
             if (out / "noise_alignment.csv").exists() else None)
    rows = claims_rows(comp, corr, noise_rows(noise))
    rows.to_csv(out / "claims_rows.csv", index=False)
    summary = geomean_table(df)
    summary.to_csv(out / "summary.csv", index=False)
    figs = {wl: fig_seeds(df, wl, out, order, PRIMARY + ["trace_train", "asharp_avg"])
            for wl in wls}
    forest = fig_forest(comp, out, PRIMARY)
    scatter = fig_scatter(df, out, order, {w: WORKLOADS[w].target_loss for w in wls})
    body = _body(df, lrs, comp, corr, rows, summary, figs, forest, scatter, wls, quick)
    if noise is not None:
        body += _noise_md(noise)
    runtime = sum(m.get("runtime_s", 0.0) for m in metas.values()) or None
    cmds = sorted({m["command"] for m in metas.values()})
    canonical = ("OMP_NUM_THREADS=1 python -m analysis.minima" + (" --quick" if quick else "")
                 + "\npython -m analysis.minima --noise-alignment   # the Sigma-vs-GGN check"
                 + "\npython -m analysis.minima --report-only       # rebuild from the CSVs")
    note = ("Runtime is the sum over the processes that wrote the CSVs ("
            + "; ".join(f"`{c}`" for c in cmds) + "), on a machine shared with other jobs."
            if cmds else "")
    finish_report(out, body, timer, quick, runtime_s=runtime, command=canonical, note=note)
    print(f"wrote {out / 'report.md'}; PNG sizes {png_sizes(out)}")
    return 0


def _noise_md(noise: pd.DataFrame) -> str:
    from analysis.minima import noise_alignment

    doc = noise_alignment.__doc__.split("\n\n", 1)[1].strip()
    cols = ["seed", "lr", "train_loss_here", "cos_sigma_ggn", "cos_sigma_rotated",
            "cos_sigma_identity", "examples", "params"]
    return "\n".join(["", "## Does SGD's noise covariance align with the Gauss-Newton matrix?",
                       "", doc, "", markdown_table(noise, "{:.4g}", columns=cols), ""])


def _glance(comp: pd.DataFrame) -> pd.DataFrame:
    mark = {"holds": "H", "does not hold": "X", "inconclusive": "?"}
    t = _fmt_cmp(comp[comp.primary])
    t["cell"] = [f"{r.split(' [')[0]} {mark[v]}" for r, v in zip(t["ratio (95% CI)"], t.verdict)]
    t["column"] = [f"{w} ({'equal loss' if p == 'equal_loss' else 'budget'})"
                   for w, p in zip(t.workload, t.point)]
    t["claim / metric"] = [f"{c}: {m}" for c, m in zip(t.comparison, t.metric)]
    out = t.pivot_table(index="claim / metric", columns="column", values="cell",
                        aggfunc="first", sort=False)
    return out.reset_index()


def _fmt_cmp(c: pd.DataFrame) -> pd.DataFrame:
    t = c.copy()
    t["comparison"] = [f"{r.a} / {r.b}" for r in t.itertuples()]
    is_acc = (t.metric == "test_accuracy").to_numpy()
    t["metric"] = [METRIC_LABELS.get(m, m) for m in t.metric]
    t["ratio (95% CI)"] = [
        (f"{r.effect * 100:+.2f} pts [{r.ci_low * 100:+.2f}, {r.ci_high * 100:+.2f}]"
         if acc else f"{math.exp(r.effect):.3g} [{math.exp(r.ci_low):.3g}, "
         f"{math.exp(r.ci_high):.3g}]") if math.isfinite(r.effect) else "n/a"
        for r, acc in zip(t.itertuples(), is_acc)]
    return t


def _body(df, lrs, comp, corr, rows, summary, figs, forest, scatter, wls, quick) -> str:
    cfg = Settings()
    md = ["# Which optimizers reach flat minima, and do flat minima generalise better?", ""]
    if quick:
        md += ["**Quick mode: a smoke run; the numbers below mean nothing.**", ""]
    md += [
        "## Setup", "",
        "Workloads (cross-entropy, mini-batches of 64, no weight decay):", ""]
    md += [f"- **{w}**: {WORKLOADS[w].description}; {WORKLOADS[w].epochs} epochs; equal-loss "
           f"target: training loss <= {WORKLOADS[w].target_loss} (checked every "
           f"{WORKLOADS[w].check_every} epoch)." for w in wls]
    md += [
        "", "Optimizers (fixed hyperparameters besides the learning rate): "
        + "; ".join(f"{k}: `{v[0]}` {v[1] or ''}" for k, v in OPTIMIZERS.items()
                    if k in set(df.optimizer)) + ".",
        "",
        "**Pairing.** Seed `i` fixes the initial weights and the order of the mini-batches, "
        "so run `i` of every optimizer starts from the same point and sees the same batches; "
        f"{int(df.seed.nunique())} seeds per configuration. SGD is the single baseline "
        "(momentum SGD, near-identical to it in the previous round, is dropped).",
        "",
        "**Fair learning rates.** Each optimizer's learning rate is chosen per workload "
        "from a grid of three values (SGD-based methods: the workload's grid, "
        f"digits {WORKLOADS['digits-mlp'].sgd_grid}, MNIST-1D "
        f"{WORKLOADS['mnist1d-mlp'].sgd_grid}; AdaHessian (0.015, 0.05, 0.15)) by the "
        f"validation accuracy of one run (seed 1000) trained for the full budget on the "
        f"first {1 - cfg.val_fraction:.0%} of a fixed permutation of the training set and "
        f"evaluated on the remaining {cfg.val_fraction:.0%}. The seeded runs then train on "
        "the whole training set at the chosen rate.",
        "",
        "**Two measurement points.** Each run is measured (i) at the end of the fixed "
        "budget and (ii) the first time its whole-training-set loss is at or below the "
        "workload's target (equal training loss), where the comparison of curvature is "
        "not confounded by how far training went. Runs that never reach the target have "
        "no equal-loss row.",
        "",
        "**Metrics** (on the first 1000 training examples, or test examples for "
        "lambda_max (test)): lambda_max of the loss Hessian (Lanczos, tol 1e-3), Tr(H) "
        f"(Hutch++, {cfg.trace_matvecs} products), and the scale-invariant adaptive "
        "sharpness of Kwon et al. (2021) / Andriushchenko et al. (2023) from "
        "`curvature.sharpness.adaptive_sharpness`, in the ball `||u||_2 <= rho` with "
        "`delta = |w| * u`: worst case (rho = "
        f"{cfg.sharp_rho_worst}, {cfg.sharp_steps} steps of projected normalised gradient "
        f"ascent, a lower bound of the maximum) and average case (rho = {cfg.sharp_rho_avg}, "
        f"{cfg.sharp_samples} Gaussian draws), both as a loss increase.",
        "",
        "**Statistics** (`analysis/harness/stats.py`). Effects are geometric-mean ratios "
        "a / b over seeds (mean paired log ratio) with a Student-t 95% interval; the test "
        "is the paired t-test on log ratios. The Wilcoxon signed-rank p-value is in "
        "`comparisons.csv` but does not decide: with 5 pairs it cannot go below 0.0625. "
        "Benjamini-Hochberg runs over every test in this report (`p_bh`). Verdict: "
        "holds / does not hold when p_bh <= 0.05 and the interval lies on the expected / "
        "other side of 1; otherwise inconclusive. The claim 'negative rho with alpha = -1 "
        f"is approximately SAM' is an equivalence: it holds when the ratio's interval lies "
        f"inside [1/{EQUIVALENCE_RATIO}, {EQUIVALENCE_RATIO}]. Primary metrics (those sent "
        "to the claims ledger, `claims_rows.csv`): lambda_max (train) and adaptive "
        "worst-case sharpness, at both points, plus SAM vs SGD test accuracy; the "
        "secondary metrics stay here.",
        "",
        "**Caveats.** DiagHessianSGD runs at rho = 1 (its step is `g * (1 + rho * d)` with "
        "`d` a Hutchinson estimate of diag(H)); where diag(H) is small, as on the digits MLP, "
        "it stays close to SGD, so 'flatter than AdaHessian' there is mostly 'SGD vs "
        "AdaHessian'. AdaHessian reaches the equal-loss target in fewer steps than the "
        "SGD-based methods (see `steps`), so at equal loss it has also trained for less. "
        "The adaptive worst-case sharpness is a lower bound from a few ascent steps. "
        "This report calls `curvature.adaptive_sharpness` on each run's training batch; "
        "`curvature analyze` computes the same quantity as its `sharpness` metric. "
        "The previous round's spectral densities and 1-D/2-D landscapes are not "
        "rerun.",
        "",
        "## Learning-rate selection", "",
    ]
    chosen = df.groupby(["workload", "optimizer"], sort=False).lr.first().reset_index()
    lt = lrs.pivot_table(index=["workload", "optimizer"], columns="lr", values="val_accuracy",
                         aggfunc="mean").reset_index()
    lt.columns = [str(c) if isinstance(c, str) else f"val acc @ {c:g}" for c in lt.columns]
    lt = lt.merge(chosen.rename(columns={"lr": "chosen lr"}), on=["workload", "optimizer"])
    md += [markdown_table(lt, "{:.3f}", formats={"chosen lr": "{:g}"}), "",
           "## Results per optimizer", "",
           "Geometric means over the runs that reached the point (`runs`: reached / "
           "started); test accuracy an arithmetic mean.", ""]
    st = summary.copy()
    md += [markdown_table(st, "{:.3g}", formats={"test_accuracy": "{:.3f}", "steps": "{:.0f}",
                                                 "train_loss": "{:.3f}", "lr": "{:g}"}), ""]
    for wl in wls:
        md += [f"![{wl} per seed]({figs[wl]})", ""]
    md += ["## Verdicts at a glance", "",
           "Primary metrics: geometric-mean ratio a / b over the paired seeds (SAM vs SGD "
           "accuracy: difference in points) and the verdict after Benjamini-Hochberg over "
           "every test in this report (H holds, X does not hold, ? inconclusive).", "",
           markdown_table(_glance(comp), "{:.3g}"), "",
           "## Paired comparisons", "",
           f"![paired ratios]({forest})", "",
           "Primary metrics (filled markers in the figure: BH p <= 0.05):", ""]
    cols = ["workload", "point", "comparison", "metric", "n", "ratio (95% CI)", "p_t",
            "p_wilcoxon", "p_bh", "verdict"]
    t = _fmt_cmp(comp)
    md += [markdown_table(t[t.primary], "{:.3g}", columns=cols), "",
           "Secondary metrics:", "",
           markdown_table(t[~t.primary], "{:.3g}", columns=cols), ""]
    md += ["## Do flatter minima generalise better?", "",
           "Spearman rank correlation between each sharpness metric and test accuracy over "
           "the runs of a workload at the fixed budget, **minima only**: runs whose final "
           "training loss is above the workload's target are left out (`n_left_out`), since "
           "the sharpness of a point still descending says nothing about the minimum. "
           "Runs of different optimizers are pooled; the interval is Fisher-z with the "
           "Fieller-Hartley-Pearson standard error. Expected: negative.", "",
           markdown_table(corr.assign(metric=[METRIC_LABELS[m] for m in corr.metric]),
                          "{:.3g}", columns=["workload", "metric", "n_runs", "n_left_out",
                                             "spearman", "ci_low", "ci_high", "p", "p_bh",
                                             "verdict"]), "",
           f"![accuracy vs sharpness]({scatter})", "",
           "## Rows sent to the claims ledger", "",
           "BH here is within these rows; `reports/claims/` recomputes it over every "
           "report's rows.", "",
           markdown_table(rows, "{:.3g}", columns=["claim", "workload", "metric", "comparison",
                                                   "effect", "p_value", "p_adjusted",
                                                   "n_seeds", "verdict"]), ""]
    return "\n".join(md)


__all__ = ["rebuild"]
