"""Driver: ``python -m analysis.estimates_vs_truth [--quick] [--report-only] ...``."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis.estimates_vs_truth import __doc__ as _package_doc
from analysis.estimates_vs_truth.config import OPTIMIZERS, workloads
from analysis.estimates_vs_truth.figures import (
    fig_bias,
    fig_calibrate,
    fig_corrected,
    fig_scalars,
    fig_vectors,
)
from analysis.estimates_vs_truth.full_figure import fig_full
from analysis.estimates_vs_truth.report import write_report
from analysis.estimates_vs_truth.runs import run_calibration, run_one
from analysis.estimates_vs_truth.tables import (
    calibration_rows,
    corrected_noise,
    gap_table,
    summary_table,
)
from analysis.harness.cli import base_parser, command_line
from analysis.harness.report import markdown_table
from analysis.harness.timing import Timer


def main(argv: list[str] | None = None) -> int:
    p = base_parser(_package_doc.splitlines()[0], "reports/estimates-vs-truth")
    p.add_argument("--optimizers", nargs="*", default=None,
                   help="subset of optimizers (writes history.csv and summary.csv only)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild tables, figures and report.md from the saved history.csv")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: these models are too small to gain from more, "
                        "and on shared cores extra threads mostly wait)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    timer = Timer()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wls = workloads(args.quick)
    names = args.optimizers or list(OPTIMIZERS)
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad:
        p.error(f"unknown optimizers {bad}; choose from {list(OPTIMIZERS)}")
    if args.report_only:
        hist = pd.read_csv(out / "history.csv")
        cal = pd.read_csv(out / "calibrate.csv")
        meta = json.loads((out / "run.json").read_text())
        run_times = meta["run_times"]
    else:
        hists, run_times = [], {}
        bar = tqdm(total=len(wls) * len(names), desc="runs")
        for wl in wls:
            for name in names:
                t = Timer()
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
                    hists.append(run_one(wl, name, seed=0, quick=args.quick, progress=args.progress))
                run_times[f"{wl.name}/{name}"] = t.elapsed
                bar.update()
        bar.close()
        hist = pd.concat(hists, ignore_index=True)
        hist.to_csv(out / "history.csv", index=False)
        cals = []
        if not args.optimizers:
            for wl in wls:
                t = Timer()
                cals.append(run_calibration(wl, seed=0, quick=args.quick))
                run_times[f"{wl.name}/calibrate_learning_rate"] = t.elapsed
        cal = pd.concat(cals, ignore_index=True) if cals else pd.DataFrame()
        if cals:
            cal.to_csv(out / "calibrate.csv", index=False)
        meta = {"run_times": run_times, "runtime_s": timer.elapsed, "command": command_line()}
        (out / "run.json").write_text(json.dumps(meta, indent=1))
    table = summary_table(hist)
    if len(cal):
        table = pd.concat([table, calibration_rows(cal)], ignore_index=True)
    table.to_csv(out / "summary.csv", index=False)
    if args.optimizers:  # exploration run: tables only, the report needs every optimizer
        print(markdown_table(table, floatfmt="{:.3g}"))
        return 0
    noise = corrected_noise(hist)
    gaps = gap_table(hist, table)
    gaps.to_csv(out / "corrected_lambda_max.csv", index=False)
    figs = {"bias": fig_bias(hist, wls, out), "corrected": fig_corrected(hist, wls, out),
            "full": fig_full(hist, wls, out), "calibrate": fig_calibrate(cal, wls, out)}
    for wl in wls:
        figs[wl.name + "_scalar"] = fig_scalars(hist, wl, out)
        figs[wl.name + "_vector"] = fig_vectors(hist, noise, wl, out)
    write_report(out, hist, table, gaps, noise, cal, figs, wls, timer, args.quick, run_times,
                 runtime_s=meta["runtime_s"], command=meta["command"])
    print(f"wrote {out / 'report.md'} in {timer.elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
