"""Statistics of the estimates against their truths: the summary table, the noise of the
corrected estimator and the lambda_max gap table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.estimates_vs_truth.config import SGDHESS_BETA2


def _iqr(v: np.ndarray) -> float:
    return float(np.subtract(*np.nanpercentile(v, [75, 25]))) if np.isfinite(v).any() else math.nan


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return math.nan
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def summary_table(hist: pd.DataFrame) -> pd.DataFrame:
    """One row per (workload, optimizer, estimate, truth): median relative error, IQR,
    median ratio estimate/truth (bias), Pearson correlation over probes / median cosine."""
    rows = []
    for (wl, opt), h in hist.groupby(["workload", "optimizer"], sort=False):
        for key in ("lambda_max", "smoothness"):
            if key not in h or h[key].isna().all():
                continue
            est = h[key].to_numpy(float)
            truths = [(f"{key}_truth_batch", "exact, batch"), (f"{key}_truth_full", "exact, probe set")]
            if key == "smoothness":
                truths += [("lambda_max_batch", "lambda_max, batch"),
                           ("lambda_max_full", "lambda_max, probe set")]
            for col, what in truths:
                if col not in h:
                    continue
                t = h[col].to_numpy(float)
                rel = np.abs(est - t) / np.abs(t)
                rows.append({"workload": wl, "optimizer": opt, "estimate": key, "truth": what,
                             "median_rel_error": float(np.nanmedian(rel)), "iqr_rel_error": _iqr(rel),
                             "median_ratio": float(np.nanmedian(est / t)),
                             "correlation": _corr(est, t), "median_cosine": math.nan,
                             "probes": int(np.isfinite(rel).sum())})
        for key in ("hvp", "hessian_diag", "noise_variance"):
            for suffix, what in (("", "exact, batch" if key != "noise_variance" else "GGN diag / B"),
                                 ("_exact", "per-example variance / B")):
                col = f"{key}_rel_error{suffix}"
                if col not in h or h[col].isna().all():
                    continue
                rel = h[col].to_numpy(float)
                rows.append({"workload": wl, "optimizer": opt, "estimate": key, "truth": what,
                             "median_rel_error": float(np.nanmedian(rel)), "iqr_rel_error": _iqr(rel),
                             "median_ratio": float(np.nanmedian(h[f"{key}_norm_ratio{suffix}"])),
                             "correlation": math.nan,
                             "median_cosine": float(np.nanmedian(h[f"{key}_cosine{suffix}"])),
                             "probes": int(np.isfinite(rel).sum())})
    return pd.DataFrame(rows)


def corrected_noise(hist: pd.DataFrame) -> pd.DataFrame:
    """ExtendedSGDHess's ``v_t`` divided by ``1 - beta_2^t`` (Adam-style bias correction).

    The cosine is scale-free; norm ratio ``r`` scales by the correction; the relative
    error follows from ``||r e_hat - t_hat||^2 = r^2 - 2 r cos + 1`` (unit vectors)."""
    h = hist[hist["optimizer"] == "ExtendedSGDHess"].copy()
    corr = 1.0 - SGDHESS_BETA2 ** h["step"].to_numpy(float)
    for suffix in ("", "_exact"):
        r = h[f"noise_variance_norm_ratio{suffix}"] / corr
        c = h[f"noise_variance_cosine{suffix}"]
        h[f"noise_variance_corrected_norm_ratio{suffix}"] = r
        h[f"noise_variance_corrected_rel_error{suffix}"] = np.sqrt(np.maximum(r**2 - 2 * r * c + 1, 0))
    return h


def table_value(table: pd.DataFrame, wl: str, opt: str, est: str, truth: str, col: str) -> float:
    r = table[(table.workload == wl) & (table.optimizer == opt) & (table.estimate == est)
              & (table.truth == truth)]
    return float(r[col].iloc[0]) if len(r) else math.nan


def gap_table(hist: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """How far OnlineEigenSAM closes SAM's lambda_max gap (median |1 - est/truth|)."""
    rows = []
    for wl in hist.workload.unique():
        h = hist[hist.workload == wl]
        sam, eig = h[h.optimizer == "SAM"], h[h.optimizer == "OnlineEigenSAM"]
        for truth, col, cos in (("exact, batch", "lambda_max_truth_batch", "hvp_direction_top_cosine"),
                                ("exact, probe set", "lambda_max_truth_full",
                                 "hvp_direction_top_cosine_full")):
            gs = float(np.nanmedian(np.abs(1 - sam.lambda_max / sam[col])))
            ge = float(np.nanmedian(np.abs(1 - eig.lambda_max / eig[col])))
            late = eig.step >= eig.step.max() / 2
            gl = float(np.nanmedian(np.abs(1 - eig.lambda_max[late] / eig[col][late])))
            rows.append({"workload": wl, "truth": truth,
                         "SAM median ratio": float(np.nanmedian(sam.lambda_max / sam[col])),
                         "OnlineEigenSAM median ratio": float(np.nanmedian(eig.lambda_max / eig[col])),
                         "SAM gap": gs, "OnlineEigenSAM gap": ge,
                         "OnlineEigenSAM gap, 2nd half": gl,
                         "gap closed": 1 - ge / gs if gs > 0 else math.nan,
                         "|cos(g, v1)| SAM": float(np.nanmedian(sam[cos])),
                         "|cos(v, v1)| OnlineEigenSAM": float(np.nanmedian(eig[cos])),
                         "|cos(v, v1)| OnlineEigenSAM, 2nd half": float(np.nanmedian(eig[cos][late])),
                         "max |w_SAM - w_Eig| lambda_full diff": float(np.nanmax(np.abs(
                             sam.lambda_max_full.to_numpy() - eig.lambda_max_full.to_numpy()))
                             / np.nanmax(sam.lambda_max_full))})
    return pd.DataFrame(rows)



def calibration_rows(cal: pd.DataFrame) -> pd.DataFrame:
    """Summary rows of calibrate_learning_rate: final ``||v||`` against Lanczos (one per
    workload; ``probes`` = power-iteration updates taken)."""
    rows = []
    for wl, c in cal.groupby("workload", sort=False):
        last = c.iloc[-1]
        late = c.tail(max(1, len(c) // 4))  # spread over the last quarter of the updates
        rows.append({"workload": wl, "optimizer": "calibrate_learning_rate",
                     "estimate": "lambda_max", "truth": "exact, probe set (initial weights)",
                     "median_rel_error": abs(last.lambda_max / last.truth - 1),
                     "iqr_rel_error": _iqr((late.norm_v / late.truth - 1).abs().to_numpy()),
                     "median_ratio": last.lambda_max / last.truth, "correlation": math.nan,
                     "median_cosine": math.nan, "probes": int(len(c))})
    return pd.DataFrame(rows)
