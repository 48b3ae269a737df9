"""DataLoader data against a list of batches: spectral density and lambda_max times.

A 64-960-10 tanh MLP (72k parameters) on the digits training split, batches of 512.
Every run builds a fresh operator (so a kept loader pays its streamed first pass and its
check) and the tools are alternated repeat by repeat. Rows: the list of batches (moved
once, graphs cached), a DataLoader streamed on every pass (``cache_data=False``, the
behaviour before :mod:`curvature.kept_data`), and DataLoaders with the default
``cache_data=None`` without and with ``shuffle=True``; and PyHessian 0.1's density
with the same (unshuffled) DataLoader, its full-dataset mode.

    python -m analysis.bench_loader [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import curvature as cv
from analysis.harness.peers import torch_eig_shim
from analysis.harness.workloads import mlp_digits


def pyhessian_density(w, loader) -> None:
    """PyHessian 0.1's density (60 steps, 2 probes) on ``loader``."""
    from pyhessian import hessian

    ph = hessian(w.model, w.loss, dataloader=loader, cuda=False)
    torch.manual_seed(0)
    with torch_eig_shim():
        ph.density(iter=60, n_v=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    w = mlp_digits(960, None, 30, batch=512)
    X = torch.cat([x for x, _ in w.batches])
    y = torch.cat([t for _, t in w.batches])
    data = {
        "list of batches": lambda: w.batches,
        "DataLoader, streamed (cache_data=False)": lambda: DataLoader(
            TensorDataset(X, y), batch_size=512),
        "DataLoader, kept (default)": lambda: DataLoader(TensorDataset(X, y), batch_size=512),
        "DataLoader shuffle=True, kept (default)": lambda: DataLoader(
            TensorDataset(X, y), batch_size=512, shuffle=True),
    }
    tasks = {
        "density (60 steps, 2 probes)": lambda op: cv.spectral_density(
            op, num_steps=60, num_probes=2, seed=0),
        "lambda_max (tol 1e-4)": lambda op: cv.eigenvalues(op, 1, seed=0),
    }
    print(f"{w.label}, {w.n_params} parameters, {len(w.batches)} batches of <= 512, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for task_name, task in tasks.items():
        times: dict[str, list[float]] = {k: [] for k in data}
        modes: dict[str, str] = {}
        for _ in range(args.repeats):
            for name, make in data.items():
                kwargs = {"cache_data": False} if "cache_data=False" in name else {}
                t0 = time.perf_counter()
                op = cv.HessianOperator(w.model, F.cross_entropy, make(), **kwargs)
                task(op)
                times[name].append(time.perf_counter() - t0)
                modes[name] = op.data_mode
        if task_name.startswith("density"):
            times["PyHessian, DataLoader"] = []
            modes["PyHessian, DataLoader"] = "its own loop"
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                pyhessian_density(w, DataLoader(TensorDataset(X, y), batch_size=512))
                times["PyHessian, DataLoader"].append(time.perf_counter() - t0)
        ref = statistics.median(times["list of batches"])
        print(f"\n{task_name}")
        for name, ts in times.items():
            t = statistics.median(ts)
            print(f"  {name:42s} {t:7.3f} s   list/this {ref / t:5.2f}x   mode: {modes[name]}")
        before = statistics.median(times["DataLoader, streamed (cache_data=False)"])
        after = statistics.median(times["DataLoader, kept (default)"])
        print(f"  DataLoader speed-up from keeping its first pass: {before / after:.2f}x")
        if "PyHessian, DataLoader" in times:
            ph = statistics.median(times["PyHessian, DataLoader"])
            print(f"  against PyHessian (DataLoader): before {ph / before:.2f}x, "
                  f"after {ph / after:.2f}x")


if __name__ == "__main__":
    main()
