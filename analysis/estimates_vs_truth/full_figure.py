"""The full-data curvature figure of the estimates-vs-truth report (``full_curvature.png``).

Small multiples: one column per optimizer family (:data:`FAMILIES`), one row per
(workload, quantity), SGD drawn in grey in every panel as the common reference, one y
scale per row (the panels of a row are compared). Curves within :data:`NEAR` of SGD at
every probe are named in the panel. A non-positive Hutch++ trace has no place on a log
axis: it is drawn as a downward triangle on the panel's bottom edge, the line broken
there, and counted in the panel. Legends sit under each column, never over data.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from analysis.estimates_vs_truth.config import DPI, Workload

FAMILIES: dict[str, list[str]] = {
    "SAM with a fixed radius": ["SAM", "AlphaSAM", "ASAM", "SAM-pinf", "ForwardSAM"],
    "Hessian-diagonal and\nHessian-vector methods": ["AdaHessian", "IRE", "SGDHess",
                                                    "ExtendedSGDHess", "DiagHessianSGD"],
    "Adam-based": ["Adam", "Saddam"],
    "step size from the\noptimizer's own curvature": ["AcceleratedSAM", "SASGD", "SASAM"],
}
"""Columns of the figure. OnlineEigenSAM takes SAM's steps (its own estimate is the only
difference), so its full-data curvature is SAM's and it is not drawn twice."""

SAME_AS = {"OnlineEigenSAM": "SAM"}

CHAOTIC = ("SASGD", "SASAM")
"""Trajectories the report's Caveats call chaotic (float32 roundoff grows between reruns)."""

QUANTITIES = (("lambda_max_full", r"$\lambda_{\max}$"), ("trace_full", "trace(H) (Hutch++)"))

NEAR = 0.05
"""Relative distance to SGD below which a curve is listed as on SGD's line."""

MARKERS = "os^Dv"


def near_sgd(h: pd.DataFrame, key: str, names: list[str], tol: float = NEAR) -> list[str]:
    """Optimizers in ``names`` whose ``key`` is within ``tol`` (relative) of SGD's at every
    probe step of ``h`` (one workload)."""
    sgd = h[h.optimizer == "SGD"].set_index("step")[key]
    out = []
    for o in names:
        g = h[h.optimizer == o].set_index("step")[key]
        rel = (g / sgd.reindex(g.index) - 1).abs()
        if len(g) and rel.notna().all() and float(rel.max()) <= tol:
            out.append(o)
    return out


def final_ratios(h: pd.DataFrame, key: str, names: list[str]) -> dict[str, float]:
    """``key`` at each optimizer's last probe divided by SGD's at the same step (one
    workload); ``nan`` where either is missing or SGD's is not positive."""
    sgd = h[h.optimizer == "SGD"].set_index("step")[key]
    out = {}
    for o in names:
        g = h[h.optimizer == o]
        if len(g):
            step = int(g.step.max())
            ref = float(sgd.get(step, np.nan))
            out[o] = float(g.loc[g.step == step, key].iloc[0]) / ref if ref > 0 else np.nan
    return out


NOTE_BAND = 0.3
"""Bottom fraction of each panel kept free of data for its notes."""


def _row_limits(h: pd.DataFrame, key: str) -> tuple[float, float]:
    """Log-axis limits of a row: every positive value with a margin, and below them a
    band of :data:`NOTE_BAND` of the height for the panel notes."""
    v = h[key].to_numpy(dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):  # nothing positive to show: any decade, the triangles say the rest
        v = np.array([0.1, 1.0])
    lo, hi = np.log10(float(v.min()) / 1.4), np.log10(float(v.max()) * 1.4)
    return 10 ** (lo - NOTE_BAND / (1 - NOTE_BAND) * (hi - lo)), 10**hi


def _draw(ax, g: pd.DataFrame, key: str, style: dict) -> int:
    """Plot ``g[key]`` against step on a log axis; non-positive values break the line and
    become a triangle on the bottom edge. Returns their number."""
    y = g[key].to_numpy(dtype=float)
    bad = ~(y > 0)
    ax.plot(g.step, np.where(bad, np.nan, y), **style)
    if bad.any():
        edge = blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(g.step[bad], np.full(int(bad.sum()), 0.0), ls="none", marker="v", ms=8,
                color=style["color"], mec="k", mew=0.6, transform=edge, clip_on=False,
                zorder=5)
    return int(bad.sum())


def fig_full(hist: pd.DataFrame, wls: list[Workload], out: Path) -> str:
    """``full_curvature.png``: full-data lambda_max and trace along each trajectory."""
    rows = [(wl, key, label) for wl in wls for key, label in QUANTITIES]
    cols = list(FAMILIES)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.7 * len(cols), 2.55 * len(rows)),
                             sharex=True, squeeze=False)
    for i, (wl, key, label) in enumerate(rows):
        h = hist[hist.workload == wl.name]
        lo, hi = _row_limits(h, key)
        sgd = h[h.optimizer == "SGD"]
        for j, family in enumerate(cols):
            ax = axes[i, j]
            ax.set_yscale("log")
            ax.set_ylim(lo, hi)  # fixed before plotting: an all-NaN line is not autoscaled
            ax.plot(sgd.step, sgd[key], color="0.55", lw=2.6, alpha=0.8, zorder=1)
            names = [o for o in FAMILIES[family] if (h.optimizer == o).any()]
            dropped = 0
            for k, o in enumerate(names):
                style = dict(color=f"C{k}", marker=MARKERS[k % len(MARKERS)], ms=3.2, lw=1.2,
                             label=o, zorder=3)
                dropped += _draw(ax, h[h.optimizer == o], key, style)
            ax.grid(alpha=0.3, which="major")
            notes = []
            near = near_sgd(h, key, names)
            if near:
                notes.append(f"within {NEAR:.0%} of SGD at every probe: " + ", ".join(near))
            ratios = {o: r for o, r in final_ratios(h, key, names).items() if o not in near}
            if ratios:
                notes.append(f"step {int(h.step.max())}, ÷ SGD: " + ", ".join(
                    f"{o}\u00a0{r:.2g}" for o, r in ratios.items()))  # kept on one line
            if dropped:
                notes.append(f"▼ (bottom edge) {dropped} probes: trace ≤ 0, no log value")
            if notes:
                text = "\n".join(textwrap.fill(n, 60, subsequent_indent="   ") for n in notes)
                ax.text(0.02, 0.06, text,
                        transform=ax.transAxes, fontsize=7, va="bottom", ha="left",
                        bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.8", alpha=0.9))
            if i == 0:
                ax.set_title(family, fontsize=9.5)
            if j == 0:
                ax.set_ylabel(f"{wl.name}\n{label}", fontsize=8.5)
            else:
                ax.tick_params(labelleft=False)
            if i == len(rows) - 1:
                ax.set_xlabel("training step")
    for j, family in enumerate(cols):
        handles, labels = axes[0, j].get_legend_handles_labels()
        handles.append(Line2D([], [], color="0.55", lw=2.6, alpha=0.8))
        labels.append("SGD (reference)")
        same = [f"{a} = {b}" for a, b in SAME_AS.items() if b in FAMILIES[family]]
        if same:
            handles.append(Line2D([], [], ls="none"))
            labels.append(", ".join(same) + " (same steps)")
        axes[-1, j].legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.32),
                           ncol=2, fontsize=7.5, frameon=False, handlelength=2.2)
    fig.suptitle("Full-data curvature along each trajectory (probe set, pre-step weights), by "
                 "optimizer family\ngrey: SGD, the same curve in every panel of a row; one "
                 "y scale per row", fontsize=10.5)
    fig.subplots_adjust(left=0.07, right=0.995, top=0.905, bottom=0.05, wspace=0.05,
                        hspace=0.1)
    name = "full_curvature.png"
    fig.savefig(out / name, dpi=DPI + 20, bbox_inches="tight")
    plt.close(fig)
    return name


def _largest_jump(runs: list[np.ndarray]) -> float:
    """Largest ``|log10|`` change between consecutive positive probes over ``runs``
    (``nan`` with fewer than two probes)."""
    steps = [np.abs(np.diff(np.log10(r[r > 0]))) for r in runs]
    steps = [d for d in steps if len(d)]
    return float(max(d.max() for d in steps)) if steps else float("nan")


def describe(hist: pd.DataFrame, wls: list[Workload]) -> str:
    """The report's paragraph under ``full_curvature.png``, computed from ``hist`` with
    the figure's own helpers (so text and figure cannot disagree)."""
    key = "lambda_max_full"
    drawn = [o for names in FAMILIES.values() for o in names if (hist.optimizer == o).any()]
    per = {wl.name: hist[hist.workload == wl.name] for wl in wls}
    near = {w: set(near_sgd(h, key, drawn)) for w, h in per.items()}
    both = [o for o in drawn if all(o in s for s in near.values())]
    ratios = {w: final_ratios(h, key, drawn) for w, h in per.items()}
    decade = [o for o in drawn if all(r.get(o, np.nan) < 0.1 for r in ratios.values())]
    last = int(hist.step.max())
    adaptive = [o for o in FAMILIES["step size from the\noptimizer's own curvature"]
                if o in drawn]
    listing = "; ".join(f"{o} " + ", ".join(f"{ratios[w].get(o, np.nan):.2g}" for w in per)
                        for o in adaptive)
    jumps = {o: _largest_jump([h[h.optimizer == o][key].to_numpy() for h in per.values()])
             for o in adaptive}
    parts = [
        f"The figure draws {len(drawn) + 1} trajectories (OnlineEigenSAM takes SAM's steps, "
        "so its curvature is SAM's and it is not drawn again) in optimizer families, "
        "with SGD as the same grey curve in every panel of a row and one y scale per row. "
        "Each panel names the curves that stay on SGD's line and gives the others' value at "
        f"step {last} divided by SGD's. Within {NEAR:.0%} of SGD's `{key}` at every probe on "
        f"both workloads: {', '.join(both) or 'none'}.",
        f"At step {last}, `{key}` / SGD's ({', '.join(per)}): {listing}. More than a decade "
        f"below SGD on both workloads: {', '.join(decade) or 'none'}. Between consecutive "
        "probes " + ", ".join(f"{o} jumps by up to {jumps[o]:.1f}" for o in CHAOTIC if o in jumps)
        + " decades, so their last probe is one draw of a chaotic trajectory (see Caveats), "
        "not a settled value; "
        + ", ".join(f"{o}'s largest jump is {jumps[o]:.1f}" for o in adaptive
                    if o not in CHAOTIC) + " decades."]
    bad = hist[~(hist.trace_full > 0)]
    for (wname, o), g in bad.groupby(["workload", "optimizer"], sort=False):
        run = hist[(hist.workload == wname) & (hist.optimizer == o)]
        lam = run[run.step.isin(g.step)][key]
        parts.append(
            f"{o}'s Hutch++ trace on {wname} is ≤ 0 at {len(g)} of {len(run)} probes (steps "
            f"{', '.join(str(int(s)) for s in g.step)}; down to {g.trace_full.min():.3g}); a "
            "log axis has no place for these, so they are triangles on the bottom edge of "
            f"its panel and the line breaks there. At those weights `{key}` is positive "
            f"({lam.min():.2g}-{lam.max():.2g}), so either negative eigenvalues outweigh the "
            "positive ones or the estimate's error exceeds the trace.")
    return " ".join(parts)
