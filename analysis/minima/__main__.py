"""Driver: ``python -m analysis.minima [--quick] [--report-only] [--diagnostic-only] ...``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import curvature as cv
from analysis.harness.cli import base_parser
from analysis.harness.report import markdown_table, png_sizes, read_run_meta, write_run_meta
from analysis.harness.timing import Timer
from analysis.minima import __doc__ as _package_doc
from analysis.minima.claims import basin_table, claims, sa_summary, summarise
from analysis.minima.config import QUICK, WORKLOADS, Settings
from analysis.minima.figures import (
    SavedLine,
    fig_density,
    fig_landscape,
    fig_metrics,
    fig_planes,
    fig_sa,
    fig_scatter,
)
from analysis.minima.report import write_report
from analysis.minima.runs import landscapes, run_one, sa_diagnostic


def main(argv: list[str] | None = None) -> int:
    p = base_parser(_package_doc.split("\n")[0], "reports/minima")
    p.add_argument("--workloads", nargs="*", default=None, help=f"subset of {list(WORKLOADS)}")
    p.add_argument("--optimizers", nargs="*", default=None, help="subset of the labels")
    p.add_argument("--diagnostic-only", action="store_true",
                   help="run only the SA-SGD/SA-SAM step-size diagnostic, then rebuild")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild tables, figures and report.md from the CSVs in --out "
                        "(no training); the 2-D landscape PNG is kept as it is")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else Settings()
    if args.seeds:
        cfg.seeds = args.seeds
    if args.workloads:
        cfg.workloads = args.workloads
    if args.optimizers:
        cfg.optimizers = args.optimizers
    cfg.progress = args.progress
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.diagnostic_only:
        sa_diagnostic(out, cfg)
    if args.report_only or args.diagnostic_only:
        return rebuild(out, cfg, args.quick)
    timer = Timer()

    rows: list[dict[str, Any]] = []
    land_frames, plane_frames, density_rows = [], [], []
    for wl_name in cfg.workloads:
        wl = WORKLOADS[wl_name]
        ds = cv.load_dataset(wl.data)
        extras: dict[str, dict[str, Any]] = {}
        opts = [o for o in cfg.optimizers if wl.optimizers is None or o in wl.optimizers]
        for seed in range(cfg.seeds):
            for opt in opts:
                row, extra = run_one(wl_name, wl, ds, opt, seed, cfg, extras=seed == 0)
                rows.append(row)
                if extra:
                    extras[opt] = extra
                print(f"[{timer.elapsed:6.0f} s] {wl_name} {opt} seed {seed}: "
                      + ", ".join(f"{k}={row[k]:.4g}" for k in
                                  ("test_accuracy", "lambda_max_test", "trace_test")
                                  if k in row), flush=True)
                pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
        for k, e in extras.items():
            d = e["density"]
            for i in range(d.nodes.shape[0]):
                for node, wgt in zip(d.nodes[i].tolist(), d.weights[i].tolist()):
                    density_rows.append({"workload": wl_name, "optimizer": k, "probe": i,
                                         "node": node, "weight": wgt, "dim": d.dim})
        if extras:
            ldf, _, planes, _ = landscapes(wl_name, extras, ds.loss_fn(), cfg)
            land_frames.append(ldf)
            if planes and wl_name == cfg.workloads[0]:
                fig_planes(planes, wl_name, out)
                for label, land in planes.items():
                    A, B = torch.meshgrid(land.coords[0], land.coords[1], indexing="ij")
                    plane_frames.append(pd.DataFrame({
                        "workload": wl_name, "optimizer": label, "a": A.reshape(-1).numpy(),
                        "b": B.reshape(-1).numpy(), "loss": land.loss.reshape(-1).numpy()}))
        print(f"[{timer.elapsed:6.0f} s] {wl_name} done", flush=True)

    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    if land_frames:
        pd.concat(land_frames).to_csv(out / "landscape_1d.csv", index=False)
    if plane_frames:
        pd.concat(plane_frames).to_csv(out / "landscape_2d.csv", index=False)
    if density_rows:
        pd.DataFrame(density_rows).to_csv(out / "density_slq.csv", index=False)
    if "digits-mlp" in cfg.workloads:
        sa_diagnostic(out, cfg)
    write_run_meta(out, timer)
    return rebuild(out, cfg, args.quick)


def rebuild(out: Path, cfg: Settings, quick: bool) -> int:
    """Tables, figures and report.md from the CSVs in ``out`` (the 2-D landscape PNG,
    written by the run itself, is kept)."""
    timer = Timer()
    df = pd.read_csv(out / "runs.csv")
    workloads = [w for w in cfg.workloads if w in set(df.workload)]
    dens = pd.read_csv(out / "density_slq.csv") if (out / "density_slq.csv").exists() else None
    land = pd.read_csv(out / "landscape_1d.csv") if (out / "landscape_1d.csv").exists() else None
    figures: dict[str, list[str]] = {}
    for wl_name in workloads:
        wdf = df[df.workload == wl_name]
        order = [o for o in cfg.optimizers if o in set(wdf.optimizer)]
        figs = [fig_metrics(wdf, wl_name, out, order), fig_scatter(wdf, wl_name, out, order)]
        if dens is not None and wl_name in set(dens.workload):
            densities = {}
            for opt in order:
                d = dens[(dens.workload == wl_name) & (dens.optimizer == opt)]
                if not len(d):
                    continue
                probes = int(d.probe.max()) + 1
                densities[opt] = cv.SpectralDensity(
                    nodes=torch.as_tensor(d.node.to_numpy()).reshape(probes, -1),
                    weights=torch.as_tensor(d.weight.to_numpy()).reshape(probes, -1),
                    num_matvecs=len(d), dim=int(d["dim"].iloc[0]) if "dim" in d else 0)
            figs.append(fig_density(densities, {}, wl_name, out))
        if land is not None and wl_name in set(land.workload):
            lines = {}
            for opt in order:
                ld = land[(land.workload == wl_name) & (land.optimizer == opt)]
                lam = wdf[(wdf.optimizer == opt) & (wdf.seed == wdf.seed.min())].lambda_max_train
                if len(ld) and len(lam):
                    lines[opt] = (SavedLine(ld.alpha.to_numpy(), ld.loss.to_numpy()), float(lam.iloc[0]))
            figs.append(fig_landscape(lines, wl_name, out, 0.0))
        plane = f"{wl_name}_landscape_2d.png"
        if (out / plane).exists():
            figs.append(plane)
        figures[wl_name] = figs
    if land is not None:
        basins = basin_table(land, df)
        basins.to_csv(out / "basins.csv", index=False)
        figures["basins_md"] = [markdown_table(basins, "{:.3g}")]
    if (out / "sa_step_size.csv").exists():
        sa = pd.read_csv(out / "sa_step_size.csv")
        figures["diagnostic"] = [fig_sa(sa, out)]
        figures["diagnostic_md"] = [sa_summary(sa)]
    summary = summarise(df)
    summary.to_csv(out / "summary.csv", index=False)
    with warnings.catch_warnings():  # identical seeds (SGDHess == SGD) warn in t-tests
        warnings.simplefilter("ignore", RuntimeWarning)
        claims_md, comp, corr, summary_md = claims(df, summary, workloads)
    comp.to_csv(out / "comparisons.csv", index=False)
    corr.to_csv(out / "correlations.csv", index=False)
    cfg.workloads = workloads
    meta = read_run_meta(out)
    write_report(out, cfg, df, summary, figures, claims_md, timer, quick, meta, summary_md)
    print(f"wrote {out / 'report.md'}; PNG sizes {png_sizes(out)}")
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
