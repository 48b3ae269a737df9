"""Learning rate x weight decay heatmaps for SGD, MSGD, Adam, SAM, SA-SGD and SA-SAM
(SA-SAM poster, small scale), with paired statistics over seeds.

The SA-SAM poster (``sa-sam-poster.md``) shows heatmaps over learning rate and weight
decay for six optimizers and claims that SA-SAM converges to flatter minima, that
"the performance of MSGD, SAM and Adam varies significantly with LR, in contrast to
SA-SAM and SA-SGD", and that "SA-SAM consistently achieves lower curvature ...
regardless of the hyperparameters". This driver trains every (optimizer, lr, wd) cell
for every seed on the digits MLP -- seed ``s`` fixes the initial weights and the batch
order, so runs of different optimizers are paired by seed -- and measures the final
weights on the test set (Lanczos lambda_max, Hutch++ trace). Statistics:
:mod:`analysis.lr_wd_stats`; figures: :mod:`analysis.lr_wd_figures`. Writes
``reports/lr-wd-heatmap/``.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python -m analysis.lr_wd_heatmap
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import curvature as cv
from analysis.claim_rows import write_rows
from analysis.harness.cli import base_parser, settings_and_out
from analysis.harness.measures import curvature_metrics
from analysis.harness.report import finish_report, png_sizes, read_run_meta, write_run_meta
from analysis.harness.timing import Timer
from analysis.lr_wd_figures import fig_cell_ratios, fig_heatmaps, fig_lr_curves
from analysis.lr_wd_stats import claims_table, per_cell_tests, summary_table
from analysis.lr_wd_text import write_report
from curvature.train import train

# display name -> (curvature.train optimizer name, fixed keyword arguments)
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "SGD": ("sgd", {}),
    "MSGD": ("momentum", {}),  # heavy ball, momentum 0.9
    "Adam": ("adam", {}),
    "SAM": ("sam", {"rho": 0.05}),  # base SGD without momentum
    "SA-SGD": ("sa-sgd", {}),
    "SA-SAM": ("sa-sam", {}),
}


@dataclass
class Settings:
    data: str = "digits"
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {
        "in_features": 64, "hidden": [32], "num_classes": 10, "activation": "tanh"})
    lrs: list[float] = field(default_factory=lambda: [1e-3, 0.01, 0.03, 0.1, 0.3, 1.0])
    wds: list[float] = field(default_factory=lambda: [0.0, 1e-3, 1e-2])
    epochs: float = 20
    batch_size: int = 64
    seeds: int = 5
    hessian_examples: int = 450  # the whole digits test split
    tol: float = 1e-3
    trace_matvecs: int = 40
    optimizers: list[str] = field(default_factory=lambda: list(OPTIMIZERS))
    failed_loss: float = 0.5  # final train loss above this: "did not train"

    @property
    def workload(self) -> str:
        h = "-".join(str(x) for x in self.model_kwargs["hidden"])
        return f"{self.data} MLP 64-{h}-10 tanh, {self.epochs:g} epochs"


QUICK = Settings(lrs=[0.03, 0.3], wds=[0.0, 1e-3], epochs=0.5, seeds=2, hessian_examples=100,
                 tol=1e-2, trace_matvecs=8)


def run_cell(opt: str, lr: float, wd: float, seed: int, ds: cv.Dataset, s: Settings) -> dict:
    """Train one cell for one seed; its final losses, accuracies and test curvature."""
    name, kw = OPTIMIZERS[opt]
    torch.manual_seed(seed)
    model = cv.build_model("mlp", **s.model_kwargs)
    row: dict[str, Any] = {"optimizer": opt, "lr": lr, "weight_decay": wd, "seed": seed}
    timer = Timer()
    try:
        res = train(model, ds, optimizer=name, lr=lr, weight_decay=wd, epochs=s.epochs,
                    batch_size=s.batch_size, seed=seed, progress=False, **kw)
    except (FloatingPointError, ArithmeticError, RuntimeError) as e:
        row.update(status="diverged", train_time_s=timer.elapsed, error=str(e)[:80])
        return row
    row["train_time_s"] = timer.elapsed
    for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        row[k] = float(res.metadata[k])
    if not math.isfinite(row["train_loss"]) or row["train_loss"] > 1e3:
        row["status"] = "diverged"
        return row
    m = curvature_metrics(model, ds.loss_fn(), ds.x_test, ds.y_test,
                          max_examples=s.hessian_examples, tol=s.tol,
                          trace_matvecs=s.trace_matvecs, seed=seed)
    row.update(lambda_max_test=m["lambda_max"], lambda_residual_test=m["lambda_max_residual"],
               lambda_converged=m["lambda_converged"], trace_test=m["trace"],
               trace_stderr_test=m["trace_stderr"], status="ok")
    return row


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0], "reports/lr-wd-heatmap",
                    report_only="rebuild tables, figures and report.md from runs.csv in --out")
    args = p.parse_args(argv)
    s, out = settings_and_out(args, QUICK, Settings())
    if args.report_only:
        return rebuild(out, s, args.quick)
    timer = Timer()
    ds = cv.load_dataset(s.data)
    rows = []
    for seed in range(s.seeds):
        for opt in s.optimizers:
            for lr in s.lrs:
                for wd in s.wds:
                    row = run_cell(opt, lr, wd, seed, ds, s)
                    rows.append(row)
                    print(f"[{timer.elapsed:6.0f} s] {opt} lr={lr:g} wd={wd:g} seed {seed}: "
                          f"{row['status']} loss={row.get('train_loss', math.nan):.3g} "
                          f"acc={row.get('test_accuracy', math.nan):.4g} "
                          f"tr={row.get('trace_test', math.nan):.4g} "
                          f"lam={row.get('lambda_max_test', math.nan):.4g}", flush=True)
        pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    write_run_meta(out, timer)
    return rebuild(out, s, args.quick)


def rebuild(out: Path, s: Settings, quick: bool) -> int:
    """Statistics, figures, claims_rows.csv and report.md from ``out/runs.csv``."""
    timer = Timer()
    df = pd.read_csv(out / "runs.csv")
    for col in ("train_loss", "test_accuracy", "trace_test", "lambda_max_test"):
        if col not in df:
            df[col] = math.nan
    s.seeds = int(df.seed.nunique())
    summary = summary_table(df, s)
    summary.to_csv(out / "summary.csv", index=False)
    cells = per_cell_tests(df, s)
    cells.to_csv(out / "cellwise.csv", index=False)
    claims = claims_table(df, s)
    claims.to_csv(out / "claims_detail.csv", index=False)
    write_rows(out, claims)
    figs = [fig_heatmaps(df, s, out), fig_lr_curves(df, s, out), fig_cell_ratios(cells, s, out)]
    meta = read_run_meta(out)
    body = write_report(s, df, summary, cells, claims, figs, quick)
    finish_report(out, body, timer, quick, runtime_s=meta.get("runtime_s"),
                  command=meta.get("command"), note=meta.get("note", ""))
    print(f"wrote {out / 'report.md'} in {timer.elapsed:.0f} s; PNG sizes {png_sizes(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
