"""Engine speed, side by side: curvature against PyHessian, curvlinops and a plain gradient.

Run: ``python -m analysis.bench_speed [--workloads mlp resnet vit] [--tasks hvp lmax trace]``

One process, tools interleaved repeat by repeat (the machine is shared, so only ratios
taken in one run mean anything), medians over repeats. Per workload (those of the
benchmark, :mod:`analysis.benchmark.config`):

* ``hvp``: a fresh product (operator built inside the timed region, as in the
  benchmark) and a warm one (second product on one operator), in gradients;
* ``lmax``: ``lambda_max`` at tolerance 1e-3 (curvature's Lanczos, PyHessian's power
  iteration), products and relative error against a converged reference (ARPACK
  ``eigsh`` at tol 1e-8 on curvature's float32 operator);
* ``trace``: Hutch++ at the benchmark's budget, curvature against curvlinops;
* ``density``: one SLQ probe of 80 steps against one PyHessian probe (time per probe).

Prints the tables; nothing is written (a measuring tool for engine changes, not a report).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.sparse.linalg import eigsh

import curvature as cv
from analysis.harness.peers import CurvatureTool, CurvlinopsTool, PyHessianTool
from analysis.harness.timing import interleaved
from analysis.harness.workloads import (
    Workload,
    mlp_digits,
    resnet20_cifar,
    seeded_vector,
    vit_cifar,
)

WORKLOADS: dict[str, Callable[[], Workload]] = {
    "mlp": lambda: mlp_digits(32, None, 200),
    "resnet": lambda: resnet20_cifar(4, 32, 10, 16),
    "vit": lambda: vit_cifar(32, 64, 20, 32),
}
TRACE_BUDGET = {"mlp": 120, "resnet": 120, "vit": 240}  # the benchmark's 1% budgets


class Sizes:
    """What the peer adapters read (:class:`analysis.harness.peers.Sizes`)."""

    tol = 1e-3
    top_k = 10
    probes = 1
    steps = 80
    power_max_iter = 100


def _gradient(w: Workload) -> Callable[[], tuple[None, int]]:
    def run() -> tuple[None, int]:
        w.model.zero_grad(set_to_none=True)
        for x, y in w.batches:
            (w.loss(w.model(x), y) * (len(y) / w.n_data)).backward()
        w.model.zero_grad(set_to_none=True)
        return None, 0

    return run


def _table(title: str, rows: list[tuple[str, ...]]) -> None:
    print(f"\n{title}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.rjust(wd) if i else c.ljust(wd) for i, (c, wd)
                               in enumerate(zip(r, widths))))


def bench(key: str, tasks: list[str], repeats: int) -> None:
    """Print the ratios of one workload."""
    w = WORKLOADS[key]()
    print(f"\n== {w.label}: n = {w.n_params}, N = {w.n_data} in {len(w.batches)} batches")
    cur, pyh, cl = CurvatureTool(w), PyHessianTool(w), CurvlinopsTool(w)
    v = seeded_vector(w.n_params, 1)
    grad = _gradient(w)
    grad()
    cur.hvp(v)
    pyh.hvp(v)
    warm = cur.operator()
    cur.hvp(v, warm)
    jobs: dict[str, Callable[[], Any]] = {"gradient": grad}
    if "hvp" in tasks:
        jobs |= {
            "curvature fresh": lambda: cur.hvp(v),
            "curvature warm": lambda: cur.hvp(v, warm),
            "pyhessian": lambda: pyh.hvp(v),
        }
    runs = interleaved(jobs, repeats, long_s=60, timeout_s=600, log=print)
    g = statistics.median(runs["gradient"].seconds)
    if "hvp" not in tasks:
        runs = {}
    rows = [("task", "median ms", "gradients", "pyhessian / this")]
    for name, run in runs.items():
        t = statistics.median(run.seconds)
        ratio = (statistics.median(runs["pyhessian"].seconds) / t) if "pyhessian" in runs else np.nan
        rows.append((name, f"{1e3 * t:.1f}", f"{t / g:.2f}", f"{ratio:.2f}"))
    if runs:
        _table(f"[{key}] one product ({repeats} repeats)", rows)

    if "lmax" in tasks:
        ref = float(eigsh(warm.to_scipy(), k=1, which="LA", tol=1e-8,
                          v0=seeded_vector(w.n_params, 2).double().numpy())[0][0])
        lam = {"curvature": lambda: cur.lambda_max(Sizes, 0),
               "pyhessian": lambda: pyh.lambda_max(Sizes, 0)}
        runs = interleaved(lam | {"gradient": grad}, repeats, long_s=60, timeout_s=600, log=print)
        t_ph = statistics.median(runs["pyhessian"].seconds)
        rows = [("tool", "median s", "gradients", "products", "rel error", "speedup vs pyhessian")]
        for name in lam:
            t = statistics.median(runs[name].seconds)
            err = abs(float(np.max(runs[name].value)) - ref) / abs(ref)
            rows.append((name, f"{t:.3f}", f"{t / g:.1f}", f"{runs[name].hvps}", f"{err:.1e}",
                         f"{t_ph / t:.2f}"))
        _table(f"[{key}] lambda_max, tol 1e-3 (reference {ref:.6g})", rows)

    if "trace" in tasks:
        m = TRACE_BUDGET[key]
        tr = {"curvature": lambda: ((r := cur.trace(m, 0))[0], r[2]),
              "curvlinops": lambda: ((r := cl.trace(m, 0))[0], r[2])}
        runs = interleaved(tr, repeats, long_s=60, timeout_s=600, log=print)
        t_cl = statistics.median(runs["curvlinops"].seconds)
        rows = [("tool", "median s", "gradients", "products", "estimate", "speedup vs curvlinops")]
        for name in tr:
            t = statistics.median(runs[name].seconds)
            rows.append((name, f"{t:.3f}", f"{t / g:.1f}", f"{runs[name].hvps}",
                         f"{runs[name].value:.5g}", f"{t_cl / t:.2f}"))
        _table(f"[{key}] Hutch++ trace, {m} products", rows)

    if "density" in tasks:
        dens = {"curvature": lambda: cur.density(Sizes, 0, 1),
                "pyhessian": lambda: pyh.density(Sizes, 0, 1)}
        runs = interleaved(dens, max(1, repeats // 2), long_s=60, timeout_s=600, log=print)
        t_ph = statistics.median(runs["pyhessian"].seconds)
        rows = [("tool", "median s / probe", "gradients", "speedup vs pyhessian")]
        for name in dens:
            t = statistics.median(runs[name].seconds)
            rows.append((name, f"{t:.3f}", f"{t / g:.1f}", f"{t_ph / t:.2f}"))
        _table(f"[{key}] density, one probe of {Sizes.steps} steps", rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--tasks", nargs="+", default=["hvp", "lmax", "trace"],
                   choices=["hvp", "lmax", "trace", "density"])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    print(f"curvature {cv.__version__ if hasattr(cv, '__version__') else ''}; "
          f"tasks {args.tasks}; medians of {args.repeats} interleaved repeats")
    for key in args.workloads:
        bench(key, args.tasks, args.repeats)


if __name__ == "__main__":
    main()
