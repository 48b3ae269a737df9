"""Driver: ``python -m analysis.benchmark [--quick] [--render-only] ...`` (see the package
docstring for what is measured and how)."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shlex
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis.benchmark import __doc__ as _package_doc
from analysis.benchmark.config import GROUPS, QUICK, Config, parse_rows, rows, workloads
from analysis.benchmark.merge import merge_previous
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
    parser.add_argument("--rows", default="all",
                        help="comma-separated row groups to time: " + ", ".join(GROUPS)
                        + " (default all); rows of other groups already in --out are kept, "
                        "so the expensive groups can be run separately")
    parser.add_argument("--correctness-only", action="store_true",
                        help="check only the HVPs against finite differences, re-render")
    parser.add_argument("--matmat-only", action="store_true",
                        help="measure only the k-column product scaling (matmat.csv), re-render")
    parser.add_argument("--render-only", "--report-only", action="store_true",
                        help="rebuild figures and report.md from the files already in --out")
    args = parser.parse_args(argv)
    try:
        groups = parse_rows(args.rows)
    except ValueError as err:
        parser.error(str(err))
    if args.no_sweep:
        groups = tuple(g for g in groups if g != "sweep")
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    warnings.filterwarnings("ignore", category=UserWarning)
    t_start = time.perf_counter()
    load_start = _loadavg()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    results: list[dict] = []
    extras: dict[str, Any] = {}
    truths: dict[str, Truth] = {}
    wls: list[Workload] = []
    profs: list[pd.DataFrame] = []
    mats: list[pd.DataFrame] = []
    partial = set(groups) != set(GROUPS) and not args.quick
    cmd = "python -m analysis.benchmark" + (" --quick" if args.quick else "")
    if args.rows != "all" or args.no_sweep:
        cmd += " --rows " + ",".join(groups)
    if args.out != parser.get_default("out"):
        cmd += f" --out {shlex.quote(args.out)}"

    def save() -> None:
        """Write (merge) everything measured so far: a run stopped later keeps it."""
        with _locked(out):
            df = pd.DataFrame(results)
            prof = pd.concat(profs, ignore_index=True) if profs else pd.DataFrame()
            mat = pd.concat(mats, ignore_index=True) if mats else pd.DataFrame()
            if partial:  # keep the other groups' rows of an earlier run in --out
                df, prof, mat = merge_previous(out, df, prof, mat, [w.name for w in wls])
            df.to_csv(out / "results.csv", index=False)
            if not prof.empty:
                prof.to_csv(out / "profile.csv", index=False)
            if not mat.empty:
                mat.to_csv(out / "matmat.csv", index=False)
            save_artifacts(out, extras, truths, wls, merge=partial)
            _write_meta(out, cmd, time.perf_counter() - t_start, partial, args.quick,
                        load_start, args.long)

    for build, (cfg_tensor, cfg_loader) in rows(groups, args.quick):
        truth = None
        for w in build():
            cfg = cfg_tensor if w.feed == "tensor" else cfg_loader
            if args.long is not None:
                cfg = replace(cfg, long_s=args.long)
            r, ex = bench_workload(w, cfg, log, truth=truth)
            truth = ex["truth"]  # the DataLoader twins share the tensor-fed row's truth
            results.extend(r)
            wls.append(w)
            extras[w.name] = ex
            truths[w.name] = truth
            if cfg.profile:
                profs.append(profile_hvp(w, log))
            if cfg.matmat:
                mats.append(matmat_scaling(w))
        save()
    if "small" in groups or args.quick:
        hvp_correctness().to_csv(out / "correctness.csv", index=False)
    save()
    render(out)
    log(f"wrote {out}/report.md")
    return 0


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """An exclusive lock on ``out`` while a run merges its rows in (runs of different
    groups may share the folder)."""
    key = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"curvature-benchmark-{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_meta(out: Path, cmd: str, runtime: float, partial: bool, quick: bool,
                load_start: str, long_s: float | None) -> None:
    """``meta.json``: this run's command, machine and load; group runs add up (one part
    per command, its runtime replaced when the same command runs again)."""
    peers = []
    for dist in ("PyHessian", "curvlinops-for-pytorch"):
        try:
            from importlib.metadata import version

            peers.append(f"{dist} {version(dist)}")
        except Exception:
            peers.append(f"{dist} not installed")
    parts = [[cmd, runtime]]
    if partial and (out / "meta.json").exists():
        old = json.loads((out / "meta.json").read_text())
        parts = [p for p in old.get("parts", [[old["command"], old["runtime"]]])
                 if p[0] != cmd] + parts
    meta = {"command": " && ".join(p[0] for p in parts),
            "runtime": sum(p[1] for p in parts), "parts": parts, "quick": quick,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
            "peers": ", ".join(peers), "load_start": load_start, "load_end": _loadavg(),
            "long_s": long_s or (QUICK if quick else Config()).long_s,
            "threads": torch.get_num_threads(),
            "omp": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} "
                   f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
            "torch": torch.__version__}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
