"""Driver: ``python -m analysis.minima [--quick] [--report-only] [--workloads ...]``.

Per workload: learning-rate selection on a validation split (``lr_selection_<wl>.csv``),
then ``--seeds`` paired runs per optimizer at the chosen rate (``runs_<wl>.csv``, two rows
per run: fixed budget and equal training loss). Separate processes may run separate
workloads into the same ``--out``; the report is rebuilt from every ``runs_*.csv`` there.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd

import curvature as cv
from analysis.harness.cli import base_parser, command_line
from analysis.harness.report import write_atomic
from analysis.harness.timing import Timer
from analysis.minima import __doc__ as _package_doc
from analysis.minima.config import QUICK, WORKLOADS, Settings
from analysis.minima.report import rebuild
from analysis.minima.runs import chosen_lr, final_runs, select_lr


def main(argv: list[str] | None = None) -> int:
    p = base_parser(_package_doc.split("\n")[0], "reports/minima",
                    report_only="rebuild tables, figures, claims_rows.csv and report.md "
                                "from the CSVs in --out (no training)")
    p.add_argument("--workloads", nargs="*", default=None, help=f"subset of {list(WORKLOADS)}")
    p.add_argument("--optimizers", nargs="*", default=None, help="subset of the labels")
    p.add_argument("--seed-list", nargs="*", type=int, default=None,
                   help="run only these seeds (to split a workload over processes; use "
                        "with --lr-from and --tag)")
    p.add_argument("--lr-from", default=None,
                   help="take the chosen learning rates from this lr_selection CSV "
                        "instead of selecting them again")
    p.add_argument("--tag", default="", help="suffix of this process's runs/meta files")
    p.add_argument("--noise-alignment", action="store_true",
                   help="only run the SGD noise / Gauss-Newton alignment check on digits-mlp "
                        "(noise_alignment.csv), then rebuild")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else Settings()
    if args.seeds:
        cfg.seeds = args.seeds
    if args.workloads:
        cfg.workloads = args.workloads
    if args.optimizers:
        cfg.optimizers = args.optimizers
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.noise_alignment:
        from analysis.minima.noise_alignment import run

        sel = pd.read_csv(out / "lr_selection_digits-mlp.csv")
        lr = chosen_lr(sel[sel.optimizer == "SGD"].to_dict("records"))
        nrows = run(cfg.seeds, lr, 1000 if not args.quick else 100, cfg.epochs_scale)
        pd.DataFrame(nrows).to_csv(out / "noise_alignment.csv", index=False)
    elif not args.report_only:
        warnings.filterwarnings("ignore", message=".*create_graph=True.*")
        for wl_name in cfg.workloads:
            run_workload(wl_name, cfg, out, args.seed_list, args.lr_from, args.tag)
    return rebuild(out, args.quick)


def run_workload(wl_name: str, cfg: Settings, out: Path, seeds: list[int] | None = None,
                 lr_from: str | None = None, tag: str = "") -> None:
    """LR selection (or the choice read from ``lr_from``), then the paired seeded runs of
    one workload; CSVs written as they grow, ``meta_<wl><tag>.json`` (command, runtime,
    settings) at the end."""
    timer = Timer()
    wl = WORKLOADS[wl_name]
    ds = cv.load_dataset(wl.data)
    lr_rows, chosen = [], {}
    if lr_from is not None:
        sel = pd.read_csv(lr_from)
        sel = sel[sel.workload == wl_name]
        chosen = {o: chosen_lr(sel[sel.optimizer == o].to_dict("records"))
                  for o in cfg.optimizers}
    for opt in ([] if lr_from is not None else cfg.optimizers):
        rows = select_lr(wl_name, wl, ds, opt, cfg)
        lr_rows += rows
        chosen[opt] = chosen_lr(rows)
        print(f"[{timer.elapsed:6.0f} s] {wl_name} {opt}: lr {chosen[opt]} (val acc "
              + ", ".join(f"{r['lr']}: {r['val_accuracy']:.3f}" for r in rows) + ")",
              flush=True)
        pd.DataFrame(lr_rows).to_csv(out / f"lr_selection_{wl_name}.csv", index=False)
    runs = []
    for seed in (range(cfg.seeds) if seeds is None else seeds):
        for opt in cfg.optimizers:
            rows = final_runs(wl_name, wl, ds, opt, chosen[opt], seed, cfg)
            runs += rows
            b, e = rows
            print(f"[{timer.elapsed:6.0f} s] {wl_name} {opt} seed {seed}: {b['status']}, "
                  f"test acc {b.get('test_accuracy', float('nan')):.3f}, lambda_max "
                  f"{b.get('lambda_max_train', float('nan')):.4g} (budget), "
                  f"{e.get('lambda_max_train', float('nan')):.4g} (equal loss, step "
                  f"{e['steps_to_target']})", flush=True)
            pd.DataFrame(runs).to_csv(out / f"runs_{wl_name}{tag}.csv", index=False)
    meta = {"command": command_line(), "runtime_s": timer.elapsed,
            "settings": {k: v for k, v in vars(cfg).items() if k != "workloads"}}
    write_atomic(out / f"meta_{wl_name}{tag}.json", json.dumps(meta, indent=1, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
