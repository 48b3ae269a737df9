"""``report.md`` of the estimates-vs-truth study."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.estimates_vs_truth.config import Workload
from analysis.estimates_vs_truth.full_figure import describe as describe_full
from analysis.estimates_vs_truth.tables import table_value
from analysis.harness.report import finish_report, markdown_table
from analysis.harness.timing import Timer


def _fmt(x: float, spec: str = ".2f") -> str:
    return "n/a" if not np.isfinite(x) else format(x, spec)


def _new_method_lines(v: Any, cal: pd.DataFrame) -> list[str]:
    """Bullets for the estimates of issue 14's fixed and new methods (one workload)."""
    lines = []
    for opt, what in (("ASAM", "ASAM (`T_w = |w| + eta`, eta 0.01, biases `T = 1`; rho 0.5)"),
                      ("SAM-pinf", "SAM with the sign ascent (`p = inf`, rho 0.001)"),
                      ("Saddam", "Saddam (ForwardSAM's secant fed to Adam, rho 0.05)")):
        lines.append(
            f"- **{what}**: `hvp` median relative error "
            f"{_fmt(v(opt, 'hvp', 'exact, batch', 'median_rel_error'), '.3g')} (cosine "
            f"{_fmt(v(opt, 'hvp', 'exact, batch', 'median_cosine'))}); `lambda_max = ||H u||` "
            f"{_fmt(v(opt, 'lambda_max', 'exact, batch', 'median_ratio'))}x the batch and "
            f"{_fmt(v(opt, 'lambda_max', 'exact, probe set', 'median_ratio'))}x the probe-set "
            f"truth." + (" Its secant mixes two batches, like ForwardSAM's: it is gradient "
                         "noise more than curvature." if opt == "Saddam" else ""))
    lines.append(
        f"- **SGDHess** (Tran & Cutkosky) computes `H u` along its last step by autograd on its "
        f"batch: median relative error "
        f"{_fmt(v('SGDHess', 'hvp', 'exact, batch', 'median_rel_error'), '.1e')} against the "
        f"monitor's product (both exact; the difference is float32 roundoff), cosine "
        f"{_fmt(v('SGDHess', 'hvp', 'exact, batch', 'median_cosine'), '.4f')}: a check of the "
        f"plumbing, not an estimator.")
    lines.append(
        f"- **DiagHessianSGD**'s `hessian_diag` (bias-corrected EMA, beta 0.99, of one-probe "
        f"Hutchinson diagonals over past weights and batches): median cosine "
        f"{_fmt(v('DiagHessianSGD', 'hessian_diag', 'exact, batch', 'median_cosine'))} with the "
        f"exact batch diagonal, relative error "
        f"{_fmt(v('DiagHessianSGD', 'hessian_diag', 'exact, batch', 'median_rel_error'))}, norm "
        f"ratio {_fmt(v('DiagHessianSGD', 'hessian_diag', 'exact, batch', 'median_ratio'))} "
        f"(AdaHessian's single probe: cosine "
        f"{_fmt(v('AdaHessian', 'hessian_diag', 'exact, batch', 'median_cosine'))}).")
    if len(cal):
        last = cal.iloc[-1]
        lines.append(
            f"- **calibrate_learning_rate** (LeCun's calibrate-then-fix at the initial weights, "
            f"batches of 64 from the probe set, rho 1e-3, beta 0.05, stop rule tol 0.03 over "
            f"windows of 20 updates): `||v||` = "
            f"{last.lambda_max:.4g} after {int(last.iteration)} updates "
            f"({int(last.gradients)} gradients, converged={bool(last.converged)}) against "
            f"Lanczos {last.truth:.4g} on the same examples (ratio "
            f"{last.lambda_max / last.truth:.3f}); the fixed rate `1/||v||` = {last.lr:.3g}.")
    return lines


def write_report(out: Path, hist: pd.DataFrame, table: pd.DataFrame, gaps: pd.DataFrame,
                 noise: pd.DataFrame, cal: pd.DataFrame, figs: dict[str, Any],
                 wls: list[Workload], timer: Timer,
                 quick: bool, run_times: dict[str, float], *, runtime_s: float,
                 command: str) -> None:
    W = [w.name for w in wls]
    lines = ["# Optimizer curvature estimates vs ground truth", ""]
    lines += [
        "Each optimizer of `curvature.optim` reports curvature estimates (`opt.estimates`). "
        "A `CurvatureMonitor` recomputed the exact quantity every few steps with the HVP engine "
        "**at the weights where the estimate was made** (the pre-step weights `w_t`, read from "
        "`opt.estimate_params`), on the optimizer's own mini-batch (`batch`) and on a fixed "
        "probe set of training examples (`probe set`). Truths: `lambda_max` by Lanczos "
        "(tol 1e-4); `smoothness` against the exact secant `||H dw||/||dw||` and `lambda_max`; "
        "`hvp` against the exact `H u`; `hessian_diag` against the exact diagonal (digits MLP: "
        "`n` unit-vector products) or a 256-probe Hutchinson diagonal (wide MLP, above the "
        "4,096-parameter exact limit); `noise_variance` against the probe-set GGN diagonal "
        "divided by the batch size and against the exact per-example gradient variance divided "
        "by the batch size.",
        "",
        "Workloads (seed 0, batch 64, no momentum, no weight decay; hyperparameters in "
        "`OPTIMIZERS` of `analysis/estimates_vs_truth/config.py`):",
        "",
    ]
    for w in wls:
        lines.append(f"- **{w.name}**: {w.label}; {w.steps} steps, probed every {w.every} steps "
                     f"({w.steps // w.every} probes), probe set = first {w.probe_examples} "
                     "training examples.")
    lines += ["", "Files: `history.csv` (every probe of every run), `summary.csv` / the tables "
              "below, `corrected_lambda_max.csv`, PNG figures. `--report-only` rebuilds tables, "
              "figures and this page from `history.csv` in seconds.", ""]

    # --- headline numbers
    lines += ["## What the numbers say", ""]
    for wl in W:
        h = hist[hist.workload == wl]
        g = gaps[gaps.workload == wl]
        gb = g[g.truth == "exact, batch"].iloc[0]
        gf = g[g.truth == "exact, probe set"].iloc[0]

        def v(opt, est, truth, col, wl=wl):
            return table_value(table, wl, opt, est, truth, col)

        inflation = float(np.nanmedian(h.lambda_max_batch / h.lambda_max_full))
        fam = h[h.optimizer.isin(["SAM", "AlphaSAM"])]  # lambda_max = ||H u|| of this step's u
        rr = fam.lambda_max / fam.lambda_max_truth_batch
        ok = rr.notna() & fam.hvp_direction_top_cosine.notna()
        within = float(((rr[ok] >= fam.hvp_direction_top_cosine[ok] * 0.97) & (rr[ok] <= 1.03)).mean())
        fin = h[(h.optimizer == "SAM")].iloc[-1]
        sasam = h[h.optimizer == "SASAM"]
        rho_sasam = float(np.nanmedian(np.sqrt(sasam.step_size))) if "step_size" in h else math.nan
        nz = noise[noise.workload == wl]
        nrc = float(np.nanmedian(nz["noise_variance_corrected_norm_ratio_exact"])) if len(nz) else math.nan
        nec = float(np.nanmedian(nz["noise_variance_corrected_rel_error_exact"])) if len(nz) else math.nan
        lines += [
            f"### {wl}",
            "",
            f"- **Batch vs probe set.** The top eigenvalue of the 64-example batch Hessian is a "
            f"median {inflation:.2f}x that of the {wls[W.index(wl)].probe_examples}-example probe "
            f"set (sampling noise spreads the spectrum of a small-sample Hessian), so every "
            f"`lambda_max` estimate has two different targets; the batch one moves from batch "
            f"to batch.",
            f"- **SAM-type `lambda_max = ||H u||`, `u = g/||g||`, is biased low.** SAM: median "
            f"{v('SAM', 'lambda_max', 'exact, batch', 'median_ratio'):.2f}x the batch truth "
            f"(correlation over probes {v('SAM', 'lambda_max', 'exact, batch', 'correlation'):.2f}), "
            f"{v('SAM', 'lambda_max', 'exact, probe set', 'median_ratio'):.2f}x the probe-set "
            f"truth (correlation {v('SAM', 'lambda_max', 'exact, probe set', 'correlation'):.2f}; "
            f"median |1 - ratio| {gf['SAM gap']:.2f}: two errors that partly cancel, the "
            f"misalignment below and the batch inflation above). The finite-difference product itself is accurate (median relative error of "
            f"`H u` {v('SAM', 'hvp', 'exact, batch', 'median_rel_error'):.3f}, cosine "
            f"{v('SAM', 'hvp', 'exact, batch', 'median_cosine'):.3f}); the bias is the direction: "
            f"the gradient's median |cosine| with the top eigenvector is "
            f"{gb['|cos(g, v1)| SAM']:.2f} (batch Hessian) and {gf['|cos(g, v1)| SAM']:.2f} "
            f"(probe set), and `||H u||^2 = sum_i lambda_i^2 c_i^2` reaches `lambda_max^2` only "
            f"at `|c_1| = 1`; {100 * within:.0f}% of the SAM and AlphaSAM probes lie between the "
            f"bound `|c_1|` and 1, within 3% (`{figs['bias']}`). AlphaSAM (alpha 0.5, same ascent) gives the same numbers "
            f"({v('AlphaSAM', 'lambda_max', 'exact, batch', 'median_ratio'):.2f}x batch).",
            f"- **AcceleratedSAM** averages the hvp *vectors* (EMA, beta 0.9) before taking the "
            f"norm; their directions change from step to step, so the norm shrinks further: "
            f"{v('AcceleratedSAM', 'lambda_max', 'exact, batch', 'median_ratio'):.2f}x batch, "
            f"{v('AcceleratedSAM', 'lambda_max', 'exact, probe set', 'median_ratio'):.2f}x probe "
            f"set. Its step `lr/||h||` is therefore "
            f"{1 / v('AcceleratedSAM', 'lambda_max', 'exact, probe set', 'median_ratio'):.1f}x "
            f"(probe set) to {1 / v('AcceleratedSAM', 'lambda_max', 'exact, batch', 'median_ratio'):.1f}x "
            f"(batch) longer than the intended `lr/lambda_max`.",
            f"- **SA-SAM**'s ascent radius is `rho_t = sqrt(eta_t)` (median {rho_sasam:.2f} here, "
            f"vs 0.05 for SAM): far outside the quadratic regime, its `hvp` has median relative "
            f"error {v('SASAM', 'hvp', 'exact, batch', 'median_rel_error'):.2f} (cosine "
            f"{v('SASAM', 'hvp', 'exact, batch', 'median_cosine'):.2f}) and its `lambda_max` is "
            f"{v('SASAM', 'lambda_max', 'exact, batch', 'median_ratio'):.2f}x the batch truth.",
            f"- **Smoothness (SA-SGD).** `||dg||/||dw||` on the same batch matches the exact secant "
            f"`||H dw||/||dw||` (median ratio {v('SASGD', 'smoothness', 'exact, batch', 'median_ratio'):.2f}, "
            f"relative error {v('SASGD', 'smoothness', 'exact, batch', 'median_rel_error'):.2f}, "
            f"correlation {v('SASGD', 'smoothness', 'exact, batch', 'correlation'):.2f}); the "
            f"residual is the change of the Hessian along the step. As a `lambda_max` proxy it is "
            f"{v('SASGD', 'smoothness', 'lambda_max, batch', 'median_ratio'):.2f}x the batch and "
            f"{v('SASGD', 'smoothness', 'lambda_max, probe set', 'median_ratio'):.2f}x the probe-set "
            f"`lambda_max`: `dw` is a gradient step and inherits the gradient's misalignment, so "
            f"the step `1/(2 L_t)` is far above `1/(2 lambda_max)`.",
            f"- **ForwardSAM** (default `same_batch_pairs=False`) reads `H u` off the gradients of "
            f"two *different* batches: median relative error "
            f"{v('ForwardSAM', 'hvp', 'exact, batch', 'median_rel_error'):.1f}, cosine "
            f"{v('ForwardSAM', 'hvp', 'exact, batch', 'median_cosine'):.2f}, `lambda_max` "
            f"{v('ForwardSAM', 'lambda_max', 'exact, batch', 'median_ratio'):.1f}x the truth: the "
            f"gradient-noise difference divided by a step of length `lr ||g||` swamps the "
            f"curvature. It is not a curvature estimate in mini-batch training.",
            f"- **Hessian diagonal.** AdaHessian's one-probe Hutchinson diagonal `z * (H z)` is "
            f"unbiased but dominated by the off-diagonal terms `sum_(j != i) H_ij z_i z_j`: median "
            f"cosine {v('AdaHessian', 'hessian_diag', 'exact, batch', 'median_cosine'):.2f} with "
            f"the exact batch diagonal, relative error "
            f"{v('AdaHessian', 'hessian_diag', 'exact, batch', 'median_rel_error'):.1f}. IRE's "
            f"EMA (beta 0.9, about 10 samples) gets cosine "
            f"{v('IRE', 'hessian_diag', 'exact, batch', 'median_cosine'):.2f} and relative error "
            f"{v('IRE', 'hessian_diag', 'exact, batch', 'median_rel_error'):.2f} although it mixes "
            f"past weights and batches. (AdaHessian's update uses the square of `D` in an EMA "
            f"with beta_2 0.999, which averages far more.)",
            f"- **Noise variance (ExtendedSGDHess, the seed's noise-extraction variant).** `v_t` has the right shape (median cosine "
            f"{v('ExtendedSGDHess', 'noise_variance', 'per-example variance / B', 'median_cosine'):.2f} "
            f"with the exact per-example gradient variance / B, "
            f"{v('ExtendedSGDHess', 'noise_variance', 'GGN diag / B', 'median_cosine'):.2f} with "
            f"diag(GGN) / B) but {v('ExtendedSGDHess', 'noise_variance', 'per-example variance / B', 'median_ratio'):.3f}x "
            f"its size: `v_0 = 0` and beta_2 = 0.999 fill the average only after ~1000 steps. "
            f"The Adam-style correction `v_t / (1 - beta_2^t)` moves the median norm ratio to "
            f"{nrc:.2f} and the median relative error from "
            f"{v('ExtendedSGDHess', 'noise_variance', 'per-example variance / B', 'median_rel_error'):.2f} "
            f"to {nec:.2f}; what remains is the estimator's own scale (the extracted noise "
            f"`eps_t - eps_hat_t` is a filtered difference of gradients, not the gradient noise "
            f"itself) and the lag of a 1000-step average. In norm diag(GGN) / B is "
            f"{v('ExtendedSGDHess', 'noise_variance', 'per-example variance / B', 'median_ratio') / v('ExtendedSGDHess', 'noise_variance', 'GGN diag / B', 'median_ratio'):.1f}x "
            f"the per-example variance / B: the GGN is the Fisher under the model's own "
            f"predictive distribution, not the true-label gradient covariance, so it is a "
            f"proxy for the direction of the noise (cosine above), not for its size.",
            f"- **Corrected `lambda_max` (OnlineEigenSAM).** Perturbing along a running "
            f"top-eigenvector estimate (one extra gradient per step, same trajectory as SAM) "
            f"tracks the *mean* Hessian: against the probe-set truth its median ratio is "
            f"{gf['OnlineEigenSAM median ratio']:.2f} (SAM {gf['SAM median ratio']:.2f}), the "
            f"median gap `|1 - ratio|` shrinks from {gf['SAM gap']:.2f} to "
            f"{gf['OnlineEigenSAM gap']:.2f} ({100 * gf['gap closed']:.0f}% closed; "
            f"{gf['OnlineEigenSAM gap, 2nd half']:.2f} in the second half of training), and its "
            f"direction's |cosine| with the probe-set top eigenvector is "
            f"{gf['|cos(v, v1)| OnlineEigenSAM']:.2f} ({gf['|cos(v, v1)| OnlineEigenSAM, 2nd half']:.2f} "
            f"in the second half) against {gf['|cos(g, v1)| SAM']:.2f} for the gradient. Against "
            f"the batch truth the gap goes from {gb['SAM gap']:.2f} to {gb['OnlineEigenSAM gap']:.2f}: "
            f"no running average can follow a top eigenvector that changes with every batch, "
            f"and the mean-Hessian eigenvalue it converges to is about half the batch one. The "
            f"probe-set spectrum at the end of SAM training starts "
            f"{fin.final_lambda_1_full:.3f}, {fin.final_lambda_2_full:.3f}, "
            f"{fin.final_lambda_3_full:.3f} (lambda_2/lambda_1 = "
            f"{fin.final_lambda_2_full / fin.final_lambda_1_full:.2f}): the smaller the gap, "
            f"the slower a power iteration separates `v_1`; the remaining shortfall goes with "
            f"the direction that is not fully converged (|cosine| above) while the weights, "
            f"and with them `v_1`, keep moving. Its correlation with the probe-set truth over "
            f"probes is {v('OnlineEigenSAM', 'lambda_max', 'exact, probe set', 'correlation'):.2f} "
            f"(SAM {v('SAM', 'lambda_max', 'exact, probe set', 'correlation'):.2f}).",
            *_new_method_lines(v, cal[cal.workload == wl] if len(cal) else cal),
            "",
        ]

    lines += ["## Corrected lambda_max estimator", "",
              markdown_table(gaps.drop(columns=["max |w_SAM - w_Eig| lambda_full diff"]),
                             floatfmt="{:.3g}"), "",
              "`gap` = median over probes of `|1 - estimate/truth|`; `gap closed` = "
              "1 - gap(OnlineEigenSAM) / gap(SAM). SAM and OnlineEigenSAM share the trajectory: "
              "the largest relative difference of their probe-set `lambda_max` over the run is "
              + ", ".join(f"{r['max |w_SAM - w_Eig| lambda_full diff']:.1e} ({r['workload']})"
                          for _, r in gaps.drop_duplicates("workload").iterrows()) + ".",
              "", f"![corrected]({figs['corrected']})", "",
              f"![bias]({figs['bias']})", ""]

    if len(cal):
        lines += ["## Calibrate-then-fix learning rate", "",
                  "`cv.optim.calibrate_learning_rate` (accelerated-sam-adaptive-lr.md, steps 1-8) "
                  "before training, against the engine's Lanczos `lambda_max` of the same "
                  "examples; `calibrate.csv` holds every update.", "",
                  f"![calibrate]({figs['calibrate']})", ""]
    lines += ["## Estimates over training", ""]
    for wl in W:
        lines += [f"### {wl}", "", f"![scalars]({figs[wl + '_scalar']})", "",
                  f"![vectors]({figs[wl + '_vector']})", ""]
    lines += [f"![full]({figs['full']})", "",
              "SGD and Adam have no internal estimate; their rows in `history.csv` carry the "
              "full-data `lambda_max_full` and `trace_full` only (taken at the pre-step weights "
              "too: the monitor snapshots them with an optimizer step pre-hook on probe steps "
              "only). " + describe_full(hist, wls), ""]

    lines += ["## Tables", "",
              "Per optimizer and estimate: median and interquartile range (IQR) of the relative "
              "error over probes, median ratio estimate / truth (norm ratio for vectors; < 1 = "
              "biased low), Pearson correlation of scalar estimate and truth over probes, median "
              "cosine for vectors.", ""]
    show = table.copy()
    lines += [markdown_table(show, floatfmt="{:.3g}"), ""]
    lines += ["## Cost", "", "Wall-clock seconds per run (training + probes; the machine is shared):",
              "", ", ".join(f"{k} {v:.0f}" for k, v in run_times.items()), ""]
    lines += ["## Caveats", "",
              "- One seed per workload; correlations over the 15 probes of a run are noisy.",
              "- The wide-MLP Hessian diagonal truth is itself a 256-probe Hutchinson estimate "
              "(relative standard error about 1/16 of the one-probe estimate's).",
              "- IRE's, ExtendedSGDHess's and DiagHessianSGD's estimates are running averages over "
              "past weights; the truth "
              "is taken at the current `w_t`, so part of their error is lag, by design of the "
              "methods.",
              "- The secant truth of `smoothness` uses the Hessian at `w_t`; the optimizer's "
              "`||dg||/||dw||` integrates the Hessian along the segment from `w_{t-1}`.",
              "- SA-SGD and SA-SAM are chaotic here (steps up to hundreds): float32 roundoff "
              "differences of 1e-7 between two runs of the same code (seen in the other "
              "optimizers' rows between report versions) grow into visibly different "
              "trajectories, so their numbers move between reruns more than the others'.",
              "- calibrate_learning_rate's `converged` means that `||v||` stopped moving "
              "(spread and drift below the tolerance), not that it reached `lambda_max`: a "
              "power iteration with `lambda_2/lambda_1` near 0.8 creeps up slowly.", ""]
    body = "\n".join(lines)
    finish_report(out, body, timer, quick, runtime_s=runtime_s, command=command)

