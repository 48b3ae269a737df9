"""Cost against parameter count across the benchmark's workloads (``scale.png``): seconds
and gradients per product, and the seconds of lambda_max and the density, per tool, on
log-log axes. Extrapolated or time-limited points are drawn hollow."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.benchmark.config import TOOLS

__all__ = ["scale_points", "loglog_slope", "scale_figure", "PANELS"]

PANELS = (
    ("hvp_warm", "time_s", "seconds per product (warm operator)"),
    ("hvp", "time_in_gradients", "gradients per product (fresh: solid, warm: dashed)"),
    ("lambda_max", "time_s", "lambda_max seconds (tol 1e-3)"),
    ("density", "s_per_product", "density: seconds per product (SLQ sizes differ by row)"),
)


def scale_points(df: pd.DataFrame, feed: str = "tensor") -> pd.DataFrame:
    """One point per (task, tool, workload) of the main rows fed as ``feed``: columns
    ``task, tool, workload, n_params, time_s, time_in_gradients, s_per_product, hollow``
    (``hollow``: the time is extrapolated or a lower bound; ``s_per_product`` NaN where
    no products were counted), sorted by ``n_params``; failed runs dropped."""
    d = df[(df.sweep.fillna("") == "") & df.status.isin(["ok", "timeout"])]
    if "feed" in d.columns:
        d = d[d.feed.fillna("tensor") == feed]
    elif feed != "tensor":
        return pd.DataFrame(columns=["task", "tool", "workload", "n_params", "time_s",
                                     "time_in_gradients", "s_per_product", "hollow"])
    d = d[np.isfinite(d.time_s.astype(float)) & (d.time_s.astype(float) > 0)]
    hollow = d.extrapolated.astype(str).str.lower().eq("true") | d.status.eq("timeout")
    hvps = d.hvps.astype(float).where(d.hvps.astype(float) > 0)
    out = d.assign(hollow=hollow, s_per_product=d.time_s.astype(float) / hvps)[
        ["task", "tool", "workload", "n_params", "time_s", "time_in_gradients",
         "s_per_product", "hollow"]]
    return out.sort_values(["task", "tool", "n_params"]).reset_index(drop=True)


def loglog_slope(n: np.ndarray, t: np.ndarray) -> float:
    """Least-squares slope of ``log t`` against ``log n`` (the empirical exponent ``a`` in
    ``t ~ n^a``); NaN with fewer than two distinct ``n``."""
    n, t = np.asarray(n, dtype=float), np.asarray(t, dtype=float)
    ok = (n > 0) & (t > 0) & np.isfinite(n) & np.isfinite(t)
    if len(np.unique(n[ok])) < 2:
        return float("nan")
    return float(np.polyfit(np.log(n[ok]), np.log(t[ok]), 1)[0])


def scale_figure(df: pd.DataFrame, out: Path, name: str = "scale.png") -> str | None:
    """Write the 2 x 2 log-log figure of :data:`PANELS`; None when fewer than two
    parameter counts were measured."""
    pts = scale_points(df)
    if pts.empty or pts.n_params.nunique() < 2:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for ax, (task, col, title) in zip(axes.flat, PANELS):
        tasks = ("hvp", "hvp_warm") if task == "hvp" else (task,)
        for k, tool in enumerate(TOOLS):
            for t in tasks:
                s = pts[(pts.task == t) & (pts.tool == tool)]
                if s.empty:
                    continue
                ls = "--" if (task == "hvp" and t == "hvp_warm") else "-"
                label = tool if t == tasks[0] else None
                slope = loglog_slope(s.n_params, s[col])
                if label and col != "time_in_gradients" and slope == slope:
                    label += f" (slope {slope:.2f})"
                ax.plot(s.n_params, s[col], ls, color=f"C{k}", lw=1.2, label=label)
                solid, hol = s[~s.hollow], s[s.hollow]
                ax.plot(solid.n_params, solid[col], "o", color=f"C{k}", ms=5)
                ax.plot(hol.n_params, hol[col], "o", mfc="none", color=f"C{k}", ms=7)
        if task == "hvp_warm":  # which workload each parameter count is
            cur = pts[(pts.task == task) & (pts.tool == "curvature")]
            for _, r in cur.iterrows():
                ax.annotate(r.workload, (r.n_params, r[col]), fontsize=6, rotation=60,
                            xytext=(2, 4), textcoords="offset points")
        if task == "hvp":
            ax.axhline(2.5, color="k", lw=0.8, ls=":", label="2.5-gradient target")
            ax.set_ylim(0.5, None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(which="both", alpha=0.3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("parameters n")
        ax.legend(frameon=False, fontsize=8)
    fig.suptitle("Cost against parameter count, tensor-fed rows (hollow: extrapolated or "
                 "stopped at the time limit; lines join different architectures and N)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / name, dpi=130)
    plt.close(fig)
    return name
