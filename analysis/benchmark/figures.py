"""Figures of the benchmark report: speedups per task, scaling with N and n, and the
spectral densities against the exact spectrum."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.benchmark.config import TASKS, TOOLS
from analysis.benchmark.scaling import scale_figure


def figures(df: pd.DataFrame, ratios: pd.DataFrame, extras: dict[str, Any], out: Path) -> list[str]:
    """Write the PNGs into ``out``; returns their file names."""
    made = []
    # 1. speedups, one panel per workload (4 per row of panels)
    order = ratios.drop_duplicates("workload").sort_values(["n_params", "workload"], kind="stable")
    wls = list(order.workload)
    tasks = [t for t in TASKS[1:] if t in set(ratios.task)]
    ncol = min(4, len(wls))
    nrow = math.ceil(len(wls) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.8 * nrow), sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(wls):]:
        ax.set_visible(False)
    for ax, wl in zip(axes.flat, wls):
        for j, peer in enumerate(("pyhessian", "curvlinops")):
            s = ratios[(ratios.workload == wl) & (ratios.peer == peer)].set_index("task")
            x = np.arange(len(tasks)) + (j - 0.5) * 0.38
            for xi, t in zip(x, tasks):
                if t not in s.index:
                    continue
                r = s.loc[t]
                # hatched: extrapolated peer time; edged: peer stopped (a lower bound)
                ax.bar(xi, r.speedup, 0.38, color=f"C{j + 1}",
                       hatch="//" if bool(r.peer_extrapolated) else None,
                       edgecolor="k" if bool(r.peer_timed_out) else None,
                       label=peer if t == s.index[0] else None)
        ax.axhline(1, color="k", lw=0.8)
        ax.axhline(3, color="k", lw=0.8, ls=":", label="3x target")
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(tasks)), tasks, rotation=35, ha="right")
        ax.set_title(wl, fontsize=9)
        ax.grid(axis="y", which="both", alpha=0.3)
    for row in axes:
        row[0].set_ylabel("peer time / curvature time\n(> 1: curvature faster)")
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.suptitle("Speedup per task (hatched: peer time extrapolated; black edge: peer "
                 "stopped at the time limit, a lower bound)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "speedup.png", dpi=110)
    plt.close(fig)
    made.append("speedup.png")
    name = scale_figure(df, out)
    if name:
        made.append(name)

    # 2. scaling with N and n on the MLP (log-log)
    sw = df[(df.status == "ok") & df.workload.str.startswith("mlp")
            & (df.get("feed", pd.Series("tensor", index=df.index)).fillna("tensor") == "tensor")]
    center = df[(df.sweep == "") & df.workload.str.startswith("mlp")].workload.unique()
    if len(sw.sweep.unique()) > 1 and len(center):
        c = center[0]
        n_c = int(df[df.workload == c].n_params.iloc[0])
        d_c = int(df[df.workload == c].n_data.iloc[0])
        sweep_tasks = [t for t in ("hvp_warm", "lambda_max", "trace", "density")
                       if t in set(sw[sw.sweep != ""].task)]
        fig, axes = plt.subplots(len(sweep_tasks), 2, figsize=(9, 2.6 * len(sweep_tasks)),
                                 squeeze=False)
        for i, task in enumerate(sweep_tasks):
            for j, (axis, col, fixed_col, fixed) in enumerate(
                (("data", "n_data", "n_params", n_c), ("params", "n_params", "n_data", d_c))
            ):
                ax = axes[i][j]
                sel = sw[(sw.task == task) & ((sw.sweep == axis) | (sw.workload == c))
                         & (sw[fixed_col] == fixed)]
                for k, tool in enumerate(TOOLS):
                    s = sel[sel.tool == tool].sort_values(col)
                    if len(s):
                        ax.plot(s[col], s.time_s, "o-", color=f"C{k}", label=tool)
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.grid(which="both", alpha=0.3)
                ax.set_title(f"{task} vs {'N (examples)' if axis == 'data' else 'n (parameters)'}",
                             fontsize=10)
                ax.set_ylabel("seconds")
                if i == len(sweep_tasks) - 1:
                    ax.set_xlabel("N examples" if axis == "data" else "n parameters")
        axes[0][0].legend(frameon=False, fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "scaling.png", dpi=130)
        plt.close(fig)
        made.append("scaling.png")

    # 3. densities against the exact spectrum (MLP)
    for wl, ex in extras.items():
        spec = ex.get("spectrum")
        if spec is None or not ex.get("density"):
            continue
        lo, hi = spec[0], spec[-1]
        pad = 0.05 * (hi - lo)
        grid = np.linspace(lo - pad, hi + pad, 3000)
        sigma = 0.01 * (hi - lo)

        def broaden(nodes, weights, grid=grid, sigma=sigma):
            d = (grid[:, None] - nodes[None, :]) / sigma
            return np.exp(-0.5 * d**2) @ (weights / weights.sum()) / (sigma * math.sqrt(2 * math.pi))

        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        ax.plot(grid, broaden(spec, np.ones_like(spec)), color="k", lw=2.2, label="exact (eigvalsh)")
        styles = {"curvature": ("C0", "--", 1.8, 3), "pyhessian": ("C1", "-", 1.2, 2),
                  "curvlinops": ("C2", "-", 1.2, 2)}
        for tool in TOOLS:
            if tool in ex["density"]:
                nodes, weights = ex["density"][tool]
                color, ls, lw, z = styles[tool]
                ax.plot(grid, broaden(nodes, weights), color=color, ls=ls, lw=lw, zorder=z,
                        label=tool)
        ax.set_yscale("log")
        top = broaden(spec, np.ones_like(spec)).max()
        ax.set_ylim(top * 1e-6, top * 3)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (Gaussian width 1% of range)")
        same = _same_nodes(ex["density"].get("curvature"), ex["density"].get("pyhessian"))
        ax.set_title(f"Spectral density, {wl}" + ("\n(curvature and PyHessian coincide: "
                     "same Rademacher probes)" if same else ""), fontsize=9)
        ax.legend(frameon=False, fontsize=8)
        fig.tight_layout()
        name = f"density_{wl}.png"
        fig.savefig(out / name, dpi=130)
        plt.close(fig)
        made.append(name)
    return made



def _same_nodes(a: Any, b: Any) -> bool:
    """Whether two density estimates have the same nodes (to 1e-4 relative): the tools ran
    the same probes, so their curves coincide by construction."""
    if a is None or b is None or len(a[0]) != len(b[0]):
        return False
    x, y = np.sort(np.asarray(a[0])), np.sort(np.asarray(b[0]))
    return bool(np.allclose(x, y, rtol=1e-4, atol=1e-4 * np.abs(x).max()))
