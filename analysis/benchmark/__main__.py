"""Driver: ``python -m analysis.benchmark [--quick] [--render-only] ...`` (see the package
docstring for what is measured and how)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis.benchmark import __doc__ as _package_doc
from analysis.benchmark.config import QUICK, Config, sweep_workloads, workloads
from analysis.benchmark.probes import hvp_correctness, matmat_scaling, profile_hvp
from analysis.benchmark.report import render, save_artifacts
from analysis.benchmark.tasks import bench_workload
from analysis.benchmark.truth import Truth
from analysis.harness.cli import REPO
from analysis.harness.workloads import Workload


def _loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=_package_doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke variant (seconds)")
    parser.add_argument("--out", default=str(REPO / "reports" / "benchmark"),
                        help="output folder (default: reports/benchmark)")
    parser.add_argument("--long", type=float, default=None,
                        help="seconds above which a task is run once (default 20; quick 5)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the MLP scaling sweeps")
    parser.add_argument("--correctness-only", action="store_true",
                        help="check only the HVPs against finite differences, re-render")
    parser.add_argument("--matmat-only", action="store_true",
                        help="measure only the k-column product scaling (matmat.csv), re-render")
    parser.add_argument("--render-only", action="store_true",
                        help="rebuild figures and report.md from the files already in --out")
    args = parser.parse_args(argv)
    if args.render_only:
        render(Path(args.out))
        return 0
    if args.correctness_only:
        hvp_correctness().to_csv(Path(args.out) / "correctness.csv", index=False)
        render(Path(args.out))
        return 0
    if args.matmat_only:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        mats = [matmat_scaling(w) for w in workloads(args.quick)]
        pd.concat(mats, ignore_index=True).to_csv(Path(args.out) / "matmat.csv", index=False)
        render(Path(args.out))
        return 0
    cfg = QUICK if args.quick else Config()
    if args.long is not None:
        cfg = Config(**{**cfg.__dict__, "long_s": args.long})
    if args.no_sweep:
        cfg = Config(**{**cfg.__dict__, "sweep": False})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    warnings.filterwarnings("ignore", category=UserWarning)
    t_start = time.perf_counter()
    load_start = _loadavg()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    rows: list[dict] = []
    extras: dict[str, Any] = {}
    truths: dict[str, Truth] = {}
    wls = workloads(args.quick)
    profs: list[pd.DataFrame] = []
    mats: list[pd.DataFrame] = []
    for w in wls:
        r, ex = bench_workload(w, cfg, log)
        rows += r
        extras[w.name] = ex
        truths[w.name] = ex["truth"]
        if cfg.profile:
            profs.append(profile_hvp(w, log))
            mats.append(matmat_scaling(w))
    sweep_wls: list[Workload] = []
    if cfg.sweep:
        # Scaling: one repeat per point, densities scaled from what fits in 10 s.
        sweep_cfg = Config(**{**cfg.__dict__, "repeats": 1, "hvp_repeats": 3, "budget_s": 10.0})
        for w in sweep_workloads():
            r, ex = bench_workload(w, sweep_cfg, log, tasks=("gradient", "hvp", "hvp_warm",
                                                             "lambda_max", "density"))
            rows += r
            sweep_wls.append(w)
            truths[w.name] = ex["truth"]
    df = pd.DataFrame(rows)
    prof = pd.concat(profs, ignore_index=True) if profs else pd.DataFrame()
    df.to_csv(out / "results.csv", index=False)
    if not prof.empty:
        prof.to_csv(out / "profile.csv", index=False)
    if mats:
        pd.concat(mats, ignore_index=True).to_csv(out / "matmat.csv", index=False)
    hvp_correctness().to_csv(out / "correctness.csv", index=False)
    save_artifacts(out, extras, truths, wls + sweep_wls)
    peers = []
    for dist in ("PyHessian", "curvlinops-for-pytorch"):
        try:
            from importlib.metadata import version

            peers.append(f"{dist} {version(dist)}")
        except Exception:
            peers.append(f"{dist} not installed")
    cmd = "python -m analysis.benchmark" + (" --quick" if args.quick else "")
    if args.out != parser.get_default("out"):
        cmd += f" --out {shlex.quote(args.out)}"
    meta = {"command": cmd, "runtime": time.perf_counter() - t_start, "quick": args.quick,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
            "peers": ", ".join(peers), "load_start": load_start, "load_end": _loadavg(),
            "long_s": cfg.long_s, "threads": torch.get_num_threads(),
            "omp": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} "
                   f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
            "torch": torch.__version__}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    render(out)
    log(f"wrote {out}/report.md ({meta['runtime']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
