"""Writing an analysis folder: ``summary.json``, CSV tables, PNG figures and ``report.md``.

:func:`write_analysis` writes everything into a temporary folder that replaces the
target at the end (:func:`curvature.atomic.atomic_directory`), so an error never leaves
a half-written report. The tables (one row per number, tidy form) are

* ``eigenvalues.csv``: split, which end, rank, eigenvalue, residual, converged;
* ``slq_nodes.csv``: the Gauss quadrature (node, weight) of every SLQ probe;
* ``density.csv``: the broadened density on the grid the figure uses;
* ``landscape_1d.csv`` / ``landscape_2d.csv``: loss (and accuracy) along lines / planes.

The figures are drawn by :func:`curvature.plots.analysis_figures`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from curvature.atomic import atomic_directory
from curvature.memory import memory_lines
from curvature.pipeline.summary import Analysis

__all__ = ["format_value", "write_analysis"]


def write_analysis(
    analysis: Analysis,
    out: str | os.PathLike,
    *,
    title: str = "Curvature analysis",
    figures: bool = True,
) -> Path:
    """Write ``summary.json``, CSV tables, PNG figures and ``report.md`` into ``out``
    (atomically: a temporary folder renamed over ``out`` at the end). Returns ``out``."""
    summary = analysis.summary()
    tables = _tables(analysis)
    out = Path(out)
    with atomic_directory(out) as tmp:
        _write_into(tmp, analysis, summary, tables, title, figures)
    return out


def _write_into(folder: Path, analysis: Analysis, summary, tables, title, figures=True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, df in tables.items():
        df.to_csv(folder / name, index=False)
    made = []
    if figures:
        from curvature.plots import analysis_figures

        made = analysis_figures(analysis, folder)
    if analysis.per_layer is not None:
        analysis.per_layer.to_dataframe().to_csv(folder / "per_layer.csv", index=False)
        if figures:
            from curvature.plots import per_block_figure

            per_block_figure(analysis.per_layer, folder / "per_layer.png")
            grouping = (analysis.info.get("memory_plan") or {}).get("per_layer_blocks") or "module"
            made.append(("per_layer.png", f"Per-{grouping} blocks of the Hessian (training split) "
                         "in model order: the largest (filled) and smallest (open) eigenvalue "
                         "of each diagonal block and its trace with a +-2 standard-error bar; "
                         "table in per_layer.csv."))
            if any(b.density is not None for b in analysis.per_layer):
                from curvature.plots import per_block_density_figure

                per_block_density_figure(analysis.per_layer, folder / "per_layer_density.png")
                made.append(("per_layer_density.png", "Spectral density (SLQ, log scale) of "
                             f"each per-{grouping} diagonal block of the Hessian, side by side in "
                             "model order."))
    (folder / "report.md").write_text(_report(analysis, summary, made, tables, title))


def _tables(analysis: Analysis) -> dict[str, pd.DataFrame]:
    from curvature.plots import density_grid

    eig, nodes, dens, lines, planes = [], [], [], [], []
    densities = {s: a.density for s, a in analysis.splits.items() if a.density is not None}
    grid, sigma = density_grid(list(densities.values())) if densities else (None, None)
    for split, a in analysis.splits.items():
        for which, r in (("largest", a.top), ("smallest", a.bottom)):
            if r is None:
                continue
            for i, (v, res, ok) in enumerate(zip(r.values.tolist(), r.residuals.tolist(),
                                                 r.converged_mask.tolist())):
                eig.append({"split": split, "which": which, "rank": i + 1, "eigenvalue": v,
                            "residual": res, "converged": bool(ok)})
        if a.density is not None:
            for p in range(a.density.nodes.shape[0]):
                for node, weight in zip(a.density.nodes[p].tolist(),
                                        a.density.weights[p].tolist()):
                    nodes.append({"split": split, "probe": p, "node": node, "weight": weight})
            values = a.density.evaluate(grid, sigma).tolist()
            dens += [{"split": split, "eigenvalue": t, "density": d, "sigma": sigma}
                     for t, d in zip(grid.tolist(), values)]
        for name, land in a.lines.items():
            acc = land.accuracy.tolist() if land.accuracy is not None else [None] * len(land.loss)
            for alpha, loss, ac in zip(land.coords[0].tolist(), land.loss.tolist(), acc):
                lines.append({"split": split, "direction": name, "alpha": alpha, "loss": loss,
                              "accuracy": ac})
        for name, land in a.planes.items():
            A, B = land.coords
            acc = land.accuracy
            for i, alpha in enumerate(A.tolist()):
                for j, beta in enumerate(B.tolist()):
                    planes.append({"split": split, "plane": name, "alpha": alpha, "beta": beta,
                                   "loss": float(land.loss[i, j]),
                                   "accuracy": None if acc is None else float(acc[i, j])})
    out = {}
    for name, rows in (("eigenvalues.csv", eig), ("slq_nodes.csv", nodes), ("density.csv", dens),
                       ("landscape_1d.csv", lines), ("landscape_2d.csv", planes)):
        if rows:
            out[name] = pd.DataFrame(rows)
    return out


def format_value(v: Any, digits: int = 4) -> str:
    """``v`` as report text: ``digits`` significant digits for floats, "yes"/"no" for
    booleans, "–" for ``None``."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def _converged_count(analysis: Analysis, split: str, which: str) -> str:
    r = getattr(analysis.splits[split], "top" if which == "largest" else "bottom")
    return f"{int(r.converged_mask.sum())} of {r.converged_mask.numel()} converged"


_METRIC_OF = {"lambda_max": "eigenvalues_largest", "lambda_min": "eigenvalues_smallest",
              "trace": "trace", "sharpness_worst": "sharpness",
              "sharpness_average": "sharpness"}


def _skipped(plan: Any, split: str, metric: str | None) -> bool:
    name = f"{split}/{metric}"
    return plan is not None and metric is not None and name in plan and (
        plan[name].status == "skipped: budget")


def _used_settings(analysis: Analysis, metric: str) -> str:
    """``metric``'s settings as run, per split (``train: 120; test: 90``)."""
    plan = analysis.plan
    if plan is None:
        return ""
    parts = []
    for it in plan.items:
        if it.metric == metric and it.status == "ran" and it.settings:
            parts.append(f"{it.split} " + ", ".join(f"{k} {v}" for k, v in it.settings.items()))
    return "; ".join(parts)


def _settings_text(analysis: Analysis, summary: dict[str, Any]) -> str:
    """How each metric that ran was computed (metrics that did not run are not named)."""
    cfg, splits = analysis.config, analysis.splits.values()
    out = []
    if any(a.top is not None or a.bottom is not None for a in splits):
        limits = "; ".join(
            f"{which} end: {text}" for which in ("largest", "smallest")
            if (text := _used_settings(analysis, f"eigenvalues_{which}")))
        out.append(f"Lanczos: k = {cfg.top_k} at each end, relative residual tolerance "
                   f"{cfg.tol:g}" + (f", products allowed ({limits})" if limits else "")
                   + "; the largest end starts from the loss gradient plus a random vector.")
    if any(a.trace is not None for a in splits):
        n = ", ".join(f"{s} {a.trace.num_matvecs}" for s, a in analysis.splits.items()
                      if a.trace is not None)
        out.append(f"Hutch++: {n} products, error bar ± one standard error.")
    if any(a.density is not None for a in splits):
        d = "; ".join(f"{s} {a.density.nodes.shape[0]} Rademacher probes × "
                      f"{a.density.nodes.shape[1]} Lanczos steps"
                      for s, a in analysis.splits.items() if a.density is not None)
        out.append(f"SLQ: {d}.")
    if any(a.lines or a.planes for a in splits):
        out.append(f"Landscapes: {_used_settings(analysis, 'landscape') or 'as configured'} "
                   f"(points per line, points per side of a plane).")
    sharp = [(s, a.sharpness) for s, a in analysis.splits.items()
             if a.sharpness is not None and "error" not in a.sharpness]
    for s, r in sharp:
        w, m = r["worst"], r["average"]
        out.append(
            f"Adaptive sharpness (Kwon et al. 2021; Andriushchenko et al. 2023) on the {s} "
            f"split: the loss increase above L(w) = {w.base_loss:.4g} when the weights move by "
            f"(|w| + η) ⊙ u, ρ = {w.rho:g}, η = {w.eta:g}; worst case over ‖u‖₂ ≤ ρ from "
            f"{w.steps} steps of projected normalised gradient ascent, a lower bound of the "
            f"maximum (never above it); average case over u ~ N(0, ρ² I) from {m.steps} "
            "Gaussian draws, ± one standard error.")
    out.append(f"Seed {cfg.seed}. Products per quantity: "
               f"`{json.dumps(summary.get('num_matvecs', {}))}`.")
    return " ".join(out)


def _budget_section(analysis: Analysis) -> list[str]:
    """The plan: budget, measured costs, planned vs used work per metric."""
    plan = analysis.plan
    if plan is None:
        return []
    c = plan.costs
    rule = ("the default rule: the time of every setting, at most 10 minutes (15 with "
            "per-layer spectra)" if plan.budget_rule == "default" else "given")
    text = (f"Budget {plan.budget_s:.0f} s ({rule}); measured on the training split: a "
            f"Hessian product takes {c.product_s['train']:.3g} s "
            f"(= {c.gradients_per_product():.2g} gradients)")
    if c.evaluation_s:
        text += f", a landscape point {c.evaluation_s['train']:.3g} s"
    text += f"; planned work about {plan.seconds:.3g} s."
    metrics = {it.metric.split("_")[0] for it in plan.items}
    shows = [why for metric, why in (("eigenvalues", "as not converged (Lanczos)"),
                                     ("trace", "as a larger standard error (Hutch++)"),
                                     ("density", "as fewer steps (SLQ)"),
                                     ("landscape", "as fewer points (landscapes)"),
                                     ("sharpness", "as fewer ascent steps and draws "
                                                   "(sharpness)"),
                                     ("per", "as blocks not converged (per-layer)"))
             if metric in metrics]
    text += (" A cut by the budget shows " + ", ".join(shows) + "; a metric too short to "
             "run is marked skipped: budget.")
    lines = ["## Budget", "", text, "",
             "| metric | split | status | planned | used | unit | settings |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for it in plan.items:
        settings = ", ".join(f"{k} {v}" for k, v in (it.settings or {}).items()) or "–"
        lines.append(f"| {it.metric.replace('_', ' ')} | {it.split} | {it.status} | "
                     f"{it.planned} | {format_value(it.used)} | {it.unit} | {settings} |")
    return lines + [""]


def _report(analysis: Analysis, summary: dict[str, Any], figures, tables, title: str) -> str:
    lines = [f"# {title}", ""]
    info = analysis.info
    src = []
    for key, label in (("checkpoint", "checkpoint"), ("factory", "model"),
                       ("factory_kwargs", "model arguments"), ("data_spec", "data"),
                       ("loss_name", "loss")):
        if info.get(key) not in (None, {}, ""):
            value = info[key]
            text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            src.append(f"- {label}: `{text}`")
    meta = info.get("metadata") or {}
    if meta:
        keys = [k for k in ("optimizer", "step", "seed", "train_accuracy", "test_accuracy")
                if k in meta]
        hp = meta.get("hyperparameters")
        src.append("- training: " + ", ".join(f"{k} {format_value(meta[k])}" for k in keys)
                   + (f"; hyperparameters `{json.dumps(hp)}`" if hp else ""))
    src.append(f"- {analysis.num_params} parameters, computed in {info.get('dtype')} on "
               f"{info.get('device')} in {analysis.timings.get('total', 0):.1f} s")
    src += memory_lines(info)
    lines += src + ["", "## Curvature", ""]
    names = list(analysis.splits)
    rows = [
        ("examples", "num_examples", ""),
        ("loss", "loss", ""),
        ("accuracy", "accuracy", ""),
        ("gradient norm", "grad_norm", ""),
        ("λ_max (Lanczos)", "lambda_max", "lambda_max_converged"),
        ("λ_min (Lanczos)", "lambda_min", "lambda_min_converged"),
        ("\\|λ_min\\| / λ_max", "negative_ratio", ""),
        ("trace (Hutch++)", "trace", ""),
        ("adaptive sharpness, worst case (lower bound)", "sharpness_worst", ""),
        ("adaptive sharpness, average case", "sharpness_average", ""),
    ]
    per = {s: {**summary["splits"][s], **{f"sharpness_{k}": v for k, v in
                                          (summary["splits"][s].get("sharpness") or {}).items()}}
           for s in names}
    plan = analysis.plan
    lines.append("| quantity | " + " | ".join(names) + " |")
    lines.append("| --- |" + " --- |" * len(names))
    for label, key, conv in rows:
        metric = _METRIC_OF.get(key)
        skipped = {s for s in names if key not in per[s] and _skipped(plan, s, metric)}
        if not skipped and not any(key in per[s] or (key.startswith("sharpness_") and
                                                     "sharpness_error" in per[s])
                                   for s in names):
            continue
        cells = []
        for s in names:
            v = per[s].get(key)
            cell = "skipped: budget" if s in skipped else format_value(v)
            if key == "trace" and v is not None:
                cell = f"{v:.4g} ± {per[s]['trace_stderr']:.2g}"
            if key == "sharpness_average" and v is not None:
                cell = f"{v:.4g} ± {per[s]['sharpness_average_stderr']:.2g}"
            if key.startswith("sharpness_") and "sharpness_error" in per[s]:
                cell = "failed (below)"
            if conv and per[s].get(conv) is False:
                cell += " (not converged)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for s in names:
        sc = per[s]
        ends = [f"{which} eigenvalues " + ", ".join(format_value(v) for v in sc[f"eigenvalues_{which}"])
                + ("" if sc[f"converged_{which}"] else f" ({_converged_count(analysis, s, which)})")
                for which in ("largest", "smallest") if f"eigenvalues_{which}" in sc]
        if ends:
            res = [r for w in ("largest", "smallest") for r in sc.get(f"residuals_{w}", [])]
            lines.append(f"- {s}: " + "; ".join(ends) + f" (max residual {max(res):.2g})")
        if "sharpness_error" in sc:
            lines.append(f"- {s}: adaptive sharpness failed: {sc['sharpness_error']}")
        if sc.get("warnings"):
            lines.append(f"- {s}: warnings: " + "; ".join(sc["warnings"]))
    lines += ["", _settings_text(analysis, summary), ""]
    lines += _budget_section(analysis)
    if figures:
        lines += ["## Figures", ""]
        for name, caption in figures:
            lines += [f"![{name}]({name})", "", f"*{caption}*", ""]
    lines += ["## Files", "", "- `summary.json` — every number above, per split"]
    lines += [f"- `{t}`" for t in tables]
    lines.append("")
    return "\n".join(lines)
