"""``python -m analysis.scale``: issue 13's done-when measurements at ResNet-18 scale.

Runs, each in a child process (:mod:`analysis.scale.runs`): one training step per width
(the memory reference), ``curvature analyze --budget 5m --per-layer`` (when the CLI has
``--budget``), the default ``curvature analyze --per-layer``, and a fixed reduced analysis
at ResNet-18 widths 1/16 .. 1 (44.6k to 11.2M parameters); writes ``runs.csv``,
``report.md`` and ``cost_vs_params.png`` under ``--out`` (default ``reports/scale``).
``--quick``: a width-1/16 model and 16 examples (seconds). ``--report-only``: rebuild the
report and figure from ``runs.csv``. ``--parts`` runs a subset; rows of other parts
already in ``runs.csv`` are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd

from analysis.scale.report import write_report
from analysis.scale.runs import QUICK, Setup, run_all

PARTS = ("train", "budget", "per_layer", "sweep")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="reports/scale", help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny model and data (seconds)")
    p.add_argument("--report-only", action="store_true", help="rebuild report.md and the "
                   "figure from runs.csv")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--threads", type=int, default=None, help="threads per child (default 2, "
                   "quick 1)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per ResNet-18 analysis before it is killed (default 1800)")
    p.add_argument("--widths", default=None,
                   help="comma-separated ResNet-18 width multipliers of the train/sweep parts "
                        "(default 1/16,1/8,1/4,1/2,1)")
    p.add_argument("--notes", default=None, help="markdown file appended to the report")
    a = p.parse_args(argv)
    out = Path(a.out)
    parts = tuple(x for x in a.parts.split(",") if x)
    bad = [x for x in parts if x not in PARTS]
    if bad:
        p.error(f"unknown parts {bad}; choose from {','.join(PARTS)}")
    setup = QUICK if a.quick else Setup()
    if a.threads is not None:
        setup = dataclasses.replace(setup, threads=a.threads)
    if a.timeout is not None:
        setup = dataclasses.replace(setup, timeout_s=a.timeout)
    if a.widths:
        setup = dataclasses.replace(setup, widths=tuple(float(w) for w in a.widths.split(",")))
    csv = out / "runs.csv"
    if a.report_only:
        if not csv.exists():
            p.error(f"{csv} does not exist: run the measurements first")
        df = pd.read_csv(csv)
    else:
        df = run_all(setup, out, parts)
    command = "python -m analysis.scale" + (" --quick" if a.quick else "") + (
        f" --out {a.out}" if a.out != "reports/scale" else "")
    notes = Path(a.notes).read_text() if a.notes else ""
    if not notes and (out / "notes.md").exists():
        notes = (out / "notes.md").read_text()
    path = write_report(df, out, command, notes)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
