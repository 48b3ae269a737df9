"""``curvature compare``: several analysis folders side by side.

:func:`compare` reads the ``summary.json``, ``slq_nodes.csv`` and ``landscape_1d.csv``
that :func:`curvature.pipeline.write_analysis` wrote, tabulates the headline metrics
(``metrics.csv``), overlays the spectra, eigenvalues and landscapes
(:func:`curvature.plots.comparison_figures`) and writes ``report.md``, all into one
folder written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from curvature.atomic import atomic_directory
from curvature.inputs import InputError
from curvature.pipeline.write import format_value

__all__ = ["compare"]


def _read_analysis(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    if not folder.is_dir():
        raise InputError(f"{str(folder)!r} is not a directory (expected an analysis folder)")
    if not path.is_file():
        raise InputError(f"{str(folder)!r} is not an analysis folder (no summary.json)")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(summary, dict) or "splits" not in summary:
        raise InputError(f"{path}: not a curvature analysis summary (no 'splits')")
    out: dict[str, Any] = {"summary": summary, "nodes": None}
    nodes = folder / "slq_nodes.csv"
    if nodes.is_file():
        out["nodes"] = pd.read_csv(nodes)
    lines = folder / "landscape_1d.csv"
    out["lines"] = pd.read_csv(lines) if lines.is_file() else None
    return out


def _label(folder: Path, summary: dict[str, Any]) -> str:
    opt = (summary.get("metadata") or {}).get("optimizer")
    return f"{folder.name}" if not opt or opt in folder.name else f"{folder.name} ({opt})"

def compare(
    folders: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    split: str = "train",
    title: str = "Curvature comparison",
) -> pd.DataFrame:
    """Overlay the spectra and tabulate the metrics of several analysis folders.

    Writes ``metrics.csv`` (one row per folder), ``spectra.png`` (SLQ densities on a
    common grid and Gaussian width, log density axis), ``eigenvalues.png`` and
    ``report.md`` into ``out`` (atomically). Returns the metrics table.

    Raises:
        InputError: a folder is not an analysis folder, or labels do not match.
    """
    from curvature.plots import comparison_figures
    from curvature.results import SpectralDensity

    folders = [Path(f) for f in folders]
    if len(folders) < 1:
        raise InputError("compare needs at least one analysis folder")
    runs = [_read_analysis(f) for f in folders]
    if labels is None:
        labels = [_label(f, r["summary"]) for f, r in zip(folders, runs)]
    if len(labels) != len(folders):
        raise InputError(f"{len(labels)} labels for {len(folders)} folders")
    if len(set(labels)) != len(labels):
        labels = [f"{lab} [{i + 1}]" for i, lab in enumerate(labels)]
    rows, densities, series = [], {}, {}
    for lab, folder, run in zip(labels, folders, runs):
        s = run["summary"]
        sp = s["splits"].get(split) or s["splits"]["train"]
        meta = s.get("metadata") or {}
        row = {"run": lab, "folder": str(folder), "optimizer": meta.get("optimizer"),
               "num_params": s.get("num_params")}
        for key in ("loss", "accuracy", "lambda_max", "lambda_min", "negative_ratio", "trace",
                    "trace_stderr", "grad_norm"):
            row[key] = sp.get(key)
        sharp = sp.get("sharpness") or {}
        for key in ("worst", "average", "average_stderr", "rho"):
            row[f"sharpness_{key}"] = sharp.get(key)
        test = s["splits"].get("test") or {}
        for key in ("loss", "accuracy", "lambda_max", "trace"):
            row[f"test_{key}"] = test.get(key)
        rows.append(row)
        nodes = run["nodes"]
        if nodes is not None and (nodes["split"] == split).any():
            nd = nodes[nodes["split"] == split]
            P = int(nd["probe"].max()) + 1
            N = nd["node"].to_numpy(dtype=np.float64, copy=True).reshape(P, -1)
            W = nd["weight"].to_numpy(dtype=np.float64, copy=True).reshape(P, -1)
            densities[lab] = SpectralDensity(nodes=torch.as_tensor(N), weights=torch.as_tensor(W),
                                             num_matvecs=N.size, dim=int(s.get("num_params") or 0))
        if "eigenvalues_largest" in sp:
            series[lab] = {"largest": sp["eigenvalues_largest"],
                           "smallest": sp.get("eigenvalues_smallest", [])}
    table = pd.DataFrame(rows)
    # folders relative to the report, so the links survive moving the whole tree
    table["folder"] = [os.path.relpath(Path(f).absolute(), Path(out).absolute())
                       for f in folders]
    with atomic_directory(out) as tmp:
        table.to_csv(tmp / "metrics.csv", index=False)
        figs = comparison_figures(tmp, labels=labels, split=split, densities=densities,
                                  series=series, lines=[r["lines"] for r in runs],
                                  table=table, fmt=format_value)
        (tmp / "report.md").write_text(_compare_report(table, figs, title, split))
    return table


def _compare_report(table: pd.DataFrame, figs, title: str, split: str) -> str:
    cols = [("run", "run"), ("optimizer", "optimizer"), ("lambda_max", "λ_max"),
            ("lambda_min", "λ_min"), ("trace", "trace"),
            ("sharpness_worst", "adaptive sharpness, worst (lower bound)"),
            ("sharpness_average", "adaptive sharpness, average"), ("loss", f"{split} loss"),
            ("accuracy", f"{split} accuracy"), ("test_loss", "test loss"),
            ("test_accuracy", "test accuracy")]
    cols = [(k, h) for k, h in cols if k in table and table[k].notna().any()]
    lines = [f"# {title}", "", "| " + " | ".join(h for _, h in cols) + " |",
             "|" + " --- |" * len(cols)]
    for _, r in table.iterrows():
        cells = []
        for k, _ in cols:
            v = r[k]
            if k == "trace" and pd.notna(r.get("trace_stderr")):
                cells.append(f"{v:.4g} ± {r['trace_stderr']:.2g}")
            elif k == "sharpness_average" and pd.notna(r.get("sharpness_average_stderr")):
                cells.append(f"{v:.4g} ± {r['sharpness_average_stderr']:.2g}")
            else:
                cells.append(format_value(v.item() if hasattr(v, "item") else v))
        lines.append("| " + " | ".join(cells) + " |")
    if "sharpness_rho" in table and table["sharpness_rho"].notna().any():
        rhos = sorted(set(table["sharpness_rho"].dropna().astype(float)))
        lines += ["", f"Adaptive sharpness at ρ = {rhos[0]:g} (training split)." if len(rhos) == 1
                  else "Adaptive sharpness at different ρ (" + ", ".join(f"{r:g}" for r in rhos)
                  + "): those columns are not comparable across runs."]
    if "lambda_max" in table and table["lambda_max"].notna().sum() >= 2:
        lm = table["lambda_max"].astype(float)
        lo, hi = int(lm.idxmin()), int(lm.idxmax())
        lines += ["", f"Flattest (smallest λ_max): **{table.loc[lo, 'run']}**, "
                  f"{lm[hi] / lm[lo]:.3g}× smaller λ_max than {table.loc[hi, 'run']}."]
    lines += [""]
    for name, caption in figs:
        lines += [f"![{name}]({name})", "", f"*{caption}*", ""]
    lines += ["Source folders (relative to this report):", ""]
    lines += [f"- [{f}]({f}/report.md)" for f in table["folder"]] + [""]
    lines += ["Files: `metrics.csv`" + "".join(f", `{n}`" for n, _ in figs), ""]
    return "\n".join(lines)
