"""``report.md`` of a benchmark run, and the artefacts it is rebuilt from.

:func:`save_artifacts` writes the ground truths and densities a run measured;
:func:`render` reads everything a run left in its folder (``results.csv``,
``meta.json``, ``truth.json``, ``densities.npz`` and the optional profile, k-column and
correctness tables), recomputes the derived tables, draws the figures and writes the
report, so ``--render-only`` rebuilds it without timing anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.benchmark import text
from analysis.benchmark.discussion import discussion
from analysis.benchmark.figures import figures
from analysis.benchmark.merge import merge_arrays, merge_truth
from analysis.benchmark.tables import (
    density_edge_errors,
    ratio_table,
    row_summary,
    summary_table,
    targets,
)
from analysis.benchmark.truth import Truth
from analysis.harness.report import markdown_table, write_atomic
from analysis.harness.workloads import Workload


def markdown(df: pd.DataFrame, cols: list[str], fmts: dict[str, str] | None = None) -> str:
    """The benchmark's table style: ``cols`` of ``df``, floats as ``format(x, fmts[col])``
    (default ``.3g``), NaN as ``-``."""
    formats = {c: "{:" + f + "}" for c, f in (fmts or {}).items()}
    return markdown_table(df, "{:.3g}", columns=cols, formats=formats, nan="-", inf="inf")


def write_report(df: pd.DataFrame, ratios: pd.DataFrame, tg: list[dict], prof: pd.DataFrame,
                 made: list[str], out: Path, meta: dict[str, Any], info: dict[str, dict],
                 mat: pd.DataFrame | None = None, corr: pd.DataFrame | None = None) -> None:
    """Assemble ``out/report.md`` from the tables, figures and :mod:`.text`."""
    mode = text.QUICK_MODE if meta["quick"] else text.FULL_MODE
    lines = [*text.HEADER.format(mode=mode, **meta).split("\n"), "", "## Workloads", ""]
    for name, t in info.items():
        lines.append(f"* `{name}`: {t['label']}; n = {t['n_params']} parameters, N = "
                     f"{t['n_data']} examples in {t['n_batches']} batches; ground truth: "
                     f"{t['kind']} in {t['seconds']:.0f} s (lambda_max = {t['top'][0]:.5g}, "
                     f"trace = {t['trace']:.5g}"
                     + (f" +- {t['trace_stderr']:.2g}" if t["trace_stderr"] else "") + ")"
                     + (" [scaling sweep]" if t["sweep"] else "") + ".")
    lines += [
        "",
        text.SETUP,
        "",
        "## Summary: speedup of curvature over each peer (peer time / curvature time)",
        "",
        summary_table(ratios),
        "",
        text.SUMMARY_NOTE,
        "",
        "## Ratios (peer time / curvature time; > 1 means curvature is faster)",
        "",
        markdown(ratios, ["workload", "task", "peer", "curvature_s", "peer_s", "speedup_str",
                          "curvature_hvps", "peer_hvps", "curvature_err", "peer_err",
                          "curvature_mem_mib", "peer_mem_mib"],
                 {"speedup": ".2f", "curvature_s": ".3g", "peer_s": ".3g",
                  "curvature_err": ".1e", "peer_err": ".1e", "curvature_mem_mib": ".0f",
                  "peer_mem_mib": ".0f", "curvature_hvps": ".0f", "peer_hvps": ".0f"}),
        "",
        text.ERROR_NOTE,
        "",
        "## Rows at scale: one line per workload",
        "",
        text.SCALE_NOTE,
        "",
        markdown(row_summary(df, ratios),
                 ["workload", "feed", "n_params", "n_data", "gradient_s", "hvp_fresh_grads",
                  "hvp_warm_grads", "pyhessian_hvp_grads", "lambda_max_vs_pyhessian",
                  "lambda_max_err", "pyhessian_lambda_max_err", "density_vs_pyhessian",
                  "trace_vs_curvlinops", "blocks_s", "blocks_grads", "curvature_peak_mib"],
                 {"gradient_s": ".3g", "hvp_fresh_grads": ".2f", "hvp_warm_grads": ".2f",
                  "pyhessian_hvp_grads": ".2f", "lambda_max_err": ".1e",
                  "pyhessian_lambda_max_err": ".1e",
                  "curvature_peak_mib": ".0f", "n_params": "d", "n_data": "d"}),
        "",
    ]
    if "scale.png" in made:
        lines += ["![scale](scale.png)", "", text.SCALE_FIGURE_NOTE, ""]
    lines += [
        "## Targets",
        "",
        markdown(pd.DataFrame(tg), ["workload", "target", "measured", "met"]),
        "",
        "## All rows",
        "",
        markdown(df[df.sweep == ""], ["workload", "task", "tool", "status", "repeats", "time_s",
                                      "time_in_gradients", "hvps", "rel_error",
                                      "density_lmax_rel_error", "peak_mem_mib",
                                      "extrapolated", "note"],
                 {"time_s": ".3g", "time_in_gradients": ".2f", "rel_error": ".1e",
                  "density_lmax_rel_error": ".1e", "peak_mem_mib": ".0f", "hvps": ".0f"}),
        "",
        text.DENSITY_EDGE_NOTE,
        "",
    ]
    if "scaling.png" in made:
        sw = df[(df.sweep != "") | (df.workload.str.startswith("mlp") & (df.sweep == ""))]
        sw = sw[sw.task.isin(["gradient", "hvp_warm", "lambda_max", "trace", "density"])]
        lines += [
            "## Scaling with dataset size and parameter count (MLP on digits)",
            "",
            "![scaling](scaling.png)",
            "",
            markdown(sw.sort_values(["task", "tool", "n_params", "n_data"]),
                     ["task", "tool", "n_params", "n_data", "time_s", "hvps", "rel_error"],
                     {"time_s": ".3g", "rel_error": ".1e", "hvps": ".0f"}),
            "",
        ]
    lines += ["## Figures", "", text.FIGURES_NOTE, ""]
    lines += [f"![{m}]({m})" for m in made if m not in ("scaling.png", "scale.png")]
    if not prof.empty:
        lines += [
            "",
            "## Where the time goes (torch.profiler, one call each, top self-CPU operators)",
            "",
            markdown(prof, ["workload", "run", "op", "calls", "self_ms", "share"],
                     {"self_ms": ".1f", "share": ".0%"}),
        ]
    if mat is not None and not mat.empty:
        piv = mat.pivot_table(index=["workload", "k"], columns="tool",
                              values="gradients_per_column").reset_index()
        cols = ["workload", "k"] + [t for t in ("curvature", "curvlinops") if t in piv.columns]
        lines += [
            "",
            "## Cost per column of a k-column product (gradients per column, warm operators)",
            "",
            text.MATMAT_NOTE,
            "",
            markdown(piv, cols, {"curvature": ".2f", "curvlinops": ".2f"}),
        ]
    if corr is not None and not corr.empty:
        lines += [
            "",
            "## Are the products right? (float64, small ViT, against central differences)",
            "",
            text.CORRECTNESS_NOTE,
            "",
            markdown(corr, ["tool", "rel_error", "worst_block_rel_error", "worst_block"],
                     {"rel_error": ".1e", "worst_block_rel_error": ".1e"}),
        ]
        for _, r in corr[corr.rel_error > 1e-4].iterrows():
            lines += [
                "",
                text.WRONG_HVP.format(tool=r.tool, rel_error=r.rel_error,
                                      worst=r.worst_block_rel_error, block=r.worst_block),
            ]
    lines += ["", "## What missed, and why", ""] + discussion(df, ratios, tg, prof, mat)
    if (out / "notes.md").exists():  # hand-written notes on this run, kept across renders
        lines += ["", (out / "notes.md").read_text().strip()]
    lines += [
        "",
        "## Method notes",
        "",
        *text.METHOD_NOTES,
        "",
        "Files: `results.csv` (every row), `ratios.csv`, `targets.csv`"
        + (", `profile.csv`" if not prof.empty else "") + ", " + ", ".join(f"`{m}`" for m in made) + ".",
        "",
    ]
    write_atomic(out / "report.md", "\n".join(lines))


def save_artifacts(out: Path, extras: dict[str, Any], truths: dict[str, Truth],
                   wls: list[Workload], merge: bool = False) -> None:
    """Ground truths (``truth.json``) and density estimates (``densities.npz``) for
    :func:`render`; ``merge``: keep an earlier run's entries of other workloads."""
    info = {}
    for w in wls:
        t = truths[w.name]
        info[w.name] = {"label": w.label, "n_params": w.n_params, "n_data": w.n_data,
                        "n_batches": len(w.batches), "sweep": w.sweep, "kind": t.kind,
                        "feed": w.feed, "group": w.group,
                        "seconds": t.seconds, "top": [float(x) for x in t.top],
                        "trace": t.trace, "trace_stderr": t.trace_stderr,
                        "hutchinson_var": t.hutchinson_var}
    if merge:
        info = merge_truth(out / "truth.json", info)
    (out / "truth.json").write_text(json.dumps(info, indent=1))
    arrays = {}
    for wl, ex in extras.items():
        if ex["truth"].spectrum is not None:
            arrays[f"{wl}/spectrum"] = ex["truth"].spectrum
        for tool, (nodes, weights) in ex.get("density", {}).items():
            arrays[f"{wl}/{tool}/nodes"] = nodes
            arrays[f"{wl}/{tool}/weights"] = weights
    if merge:
        arrays = merge_arrays(out / "densities.npz", arrays, [w.name for w in wls])
    np.savez_compressed(out / "densities.npz", **arrays)


def render(out: Path) -> None:
    """Ratios, targets, figures and ``report.md`` from the files a run wrote into ``out``."""
    text = {"sweep": str, "note": str, "error_metric": str}
    df = pd.read_csv(out / "results.csv", dtype=text)
    for col in text:
        df[col] = df[col].fillna("")
    prof = pd.read_csv(out / "profile.csv") if (out / "profile.csv").exists() else pd.DataFrame()
    meta = json.loads((out / "meta.json").read_text())
    info = json.loads((out / "truth.json").read_text())
    extras: dict[str, Any] = {}
    with np.load(out / "densities.npz") as z:
        for key in z.files:
            parts = key.split("/")
            ex = extras.setdefault(parts[0], {"density": {}})
            if parts[1] == "spectrum":
                ex["spectrum"] = z[key]
            else:
                ex["density"].setdefault(parts[1], [None, None])
                ex["density"][parts[1]][0 if parts[2] == "nodes" else 1] = z[key]
    df = density_edge_errors(df, extras, info)
    df.loc[df.status == "timeout", "hvps"] = math.nan  # not counted when a run is stopped
    df.to_csv(out / "results.csv", index=False)
    ratios = ratio_table(df)
    tg = targets(df, ratios)
    ratios.to_csv(out / "ratios.csv", index=False)
    pd.DataFrame(tg).to_csv(out / "targets.csv", index=False)
    made = figures(df, ratios, extras, out)
    mat = pd.read_csv(out / "matmat.csv") if (out / "matmat.csv").exists() else pd.DataFrame()
    corr = (pd.read_csv(out / "correctness.csv") if (out / "correctness.csv").exists()
            else pd.DataFrame())
    write_report(df, ratios, tg, prof, made, out, meta, info, mat, corr)

