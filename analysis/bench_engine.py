"""Cost of one full-dataset HVP, in units of one full-dataset gradient, measured side by side.

Run: ``OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python -m analysis.bench_engine``

Prints medians over repeats and ratios taken in this one process: the gradient,
one HVP for each method of :class:`curvature.HessianOperator` (and the GGN), the
per-vector cost of exact ``matmat`` with k = 1, 4, 16, and the same single HVP
through curvlinops and PyHessian (their adapters in :mod:`analysis.harness.peers`) when
they are installed. Prints the tables and writes them to ``reports/bench-engine/report.md`` (``--out``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import curvature as cv
from analysis.harness.cli import REPO
from analysis.harness.peers import CurvlinopsTool, PyHessianTool
from analysis.harness.report import printed_report
from analysis.harness.timing import median_time as _median_and_value
from analysis.harness.workloads import Workload, digits_batches


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    return _median_and_value(fn, repeats, warmup=True)[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "reports" / "bench-engine"),
                        help="report folder (default: reports/bench-engine)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    with printed_report(Path(args.out), "Cost of one full-dataset HVP, in gradients"):
        run(args)


def run(args: argparse.Namespace) -> None:
    """Print the gradient, HVP and matmat timings of the MLP ``args`` describe."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, args.hidden), nn.Tanh(), nn.Linear(args.hidden, args.hidden), nn.Tanh(),
        nn.Linear(args.hidden, 10),
    )
    data = digits_batches(args.batch_size)
    n = sum(p.numel() for p in model.parameters())
    N = sum(len(b[1]) for b in data)
    print(f"MLP 64-{args.hidden}-{args.hidden}-10 on digits: n = {n} parameters, "
          f"N = {N} examples in {len(data)} batches; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians of {args.repeats}")

    def gradient() -> None:
        model.zero_grad()
        for x, y in data:
            (F.cross_entropy(model(x), y) * (len(y) / N)).backward()

    t_grad = median_time(gradient, args.repeats)
    rows: list[tuple[str, float]] = []
    v = torch.randn(n)
    ops = {
        "exact": cv.HessianOperator(model, F.cross_entropy, data),
        "exact, cached graphs": cv.HessianOperator(model, F.cross_entropy, data, cache_graphs=True),
        "fd": cv.HessianOperator(model, F.cross_entropy, data, method="fd"),
        "fd-central": cv.HessianOperator(model, F.cross_entropy, data, method="fd-central"),
        "ggn": cv.GGNOperator(model, F.cross_entropy, data),
    }
    ops["fd"].gradient()  # g(w) is cached once per operator, as in any FD solver
    for name, op in ops.items():
        rows.append((f"curvature {name} HVP", median_time(lambda op=op: op @ v, args.repeats)))

    # The peers through their adapters, each on an operator built once (as above).
    w = Workload("mlp-digits", "MLP on digits", model, data)
    for label, cls in (("curvlinops HVP", CurvlinopsTool), ("PyHessian HVP", PyHessianTool)):
        try:
            tool = cls(w)
            op = tool.operator()
            rows.append((label, median_time(lambda tool=tool, op=op: tool.hvp(v, op),
                                            args.repeats)))
        except Exception as err:  # baseline unavailable: say so, never fake a number
            print(f"{cls.name} skipped: {err}")

    print(f"\n{'task':34s} {'median ms':>10s} {'/ gradient':>11s}")
    print(f"{'full-dataset gradient':34s} {1e3 * t_grad:10.2f} {1.0:11.2f}")
    for name, t in rows:
        print(f"{name:34s} {1e3 * t:10.2f} {t / t_grad:11.2f}")

    print("\nexact matmat, per-vector cost relative to one matvec")
    single = None
    for cached in (False, True):
        op = cv.HessianOperator(model, F.cross_entropy, data, cache_graphs=cached)
        for k in (1, 4, 16):
            V = torch.randn(n, k)
            t = median_time(lambda op=op, V=V: op @ V, max(5, args.repeats // 2)) / k
            if k == 1:
                single = t
            print(f"  cache_graphs={cached!s:5s} k={k:2d}: {1e3 * t:8.2f} ms/vector = "
                  f"{t / single:.2f} x matvec = {t / t_grad:.2f} x gradient")
    np.random.seed(0)


if __name__ == "__main__":
    main()
