"""Benchmark the estimators on an MLP on sklearn digits, against a dense ground truth and PyHessian.

Run (the thread settings matter on shared machines)::

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python -m analysis.bench_estimators

It prints, in one process:

1. HVPs and wall time Lanczos and power iteration need to bring lambda_max within
   1e-3 and 1e-6 relative error of the dense float64 ground truth (float64 and float32
   operators). The HVP count is read off the per-product trajectory (``callback``);
   the wall time is that of a fresh run stopped at that many products.
2. PyHessian 0.1 (top-1 and top-5 eigenvalues at its default tolerance, trace and
   density at their defaults) against our estimators on the same model and data, with
   errors against the ground truth, HVP counts, median wall times and ratios.

PyHessian 0.1's ``density`` calls ``torch.eig``, which PyTorch removed; it is shimmed
for those calls only (:func:`analysis.harness.peers.torch_eig_shim`). The printed tables
are also written to ``reports/bench-estimators/report.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance
from torch import nn

from analysis.harness.cli import REPO
from analysis.harness.peers import PyHessianHVPCounter, torch_eig_shim
from analysis.harness.report import printed_report
from analysis.harness.timing import median_time
from analysis.harness.workloads import digits_all
from curvature import (
    ConvergenceWarning,
    HessianOperator,
    dense_hessian,
    eigenvalues,
    spectral_density,
    trace,
)


def digits_mlp(train_steps: int = 300, hidden: int = 32) -> tuple[nn.Module, tuple]:
    """A 64-32-10 tanh MLP (2410 parameters) briefly trained on all 1797 digits."""
    x, t = digits_all()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(train_steps):
        opt.zero_grad()
        F.cross_entropy(model(x), t).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, (x, t)


def first_within(trajectory: list[tuple[int, float]], truth: float, rtol: float) -> int | None:
    """Matvecs after which the estimate stays within ``rtol`` of ``truth`` to the end."""
    hit = None
    for count, value in trajectory:
        if abs(value - truth) <= rtol * abs(truth):
            if hit is None:
                hit = count
        else:
            hit = None
    return hit


def section_convergence(model, data, lam_max: float, repeats: int, budget: int) -> None:
    print("\n== HVPs to reach lambda_max (relative error vs dense float64 eigh) ==")
    print(f"{'dtype':8} {'method':8} {'rtol':>6} {'HVPs':>6} {'time [s]':>9}")
    for dtype in (torch.float64, torch.float32):
        op = HessianOperator(model, F.cross_entropy, data, dtype=dtype)
        op.matvec(torch.zeros(op.shape[0], dtype=dtype))  # build/cache the gradient graph
        counts = {}
        for method in ("lanczos", "power"):
            traj: list[tuple[int, float]] = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                eigenvalues(
                    op, 1, method=method, tol=1e-13, max_matvecs=budget, seed=0,
                    callback=lambda c, v, traj=traj: traj.append((c, float(v[0]))),
                )
            for rtol in (1e-3, 1e-6):
                need = first_within(traj, lam_max, rtol)
                counts[method, rtol] = need
                if need is None:
                    print(f"{str(dtype)[6:]:8} {method:8} {rtol:6.0e} {'>' + str(budget):>6} {'-':>9}")
                    continue

                def run(need=need, method=method, op=op):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ConvergenceWarning)
                        return eigenvalues(op, 1, method=method, tol=1e-13, max_matvecs=need, seed=0)

                t, res = median_time(run, repeats)
                err = abs(res.values[0].item() - lam_max) / lam_max
                print(f"{str(dtype)[6:]:8} {method:8} {rtol:6.0e} {need:6d} {t:9.4f}"
                      f"   (rel. error of that run {err:.1e})")
        for rtol in (1e-3, 1e-6):
            lz, pw = counts["lanczos", rtol], counts["power", rtol]
            if lz and pw:
                print(f"{str(dtype)[6:]:8} power / lanczos HVPs at {rtol:.0e}: {pw / lz:.1f}x")


def section_pyhessian(model, data, eigs: np.ndarray, repeats: int) -> None:
    import pyhessian

    lam_max, top5, tr_true = eigs[-1], eigs[::-1][:5], eigs.sum()
    crit = nn.CrossEntropyLoss()
    rows = []

    def ph_run(call):
        def go():
            m = copy.deepcopy(model)
            with PyHessianHVPCounter() as counter:
                h = pyhessian.hessian(m, crit, data=data, cuda=False)
                out = call(h)
            return out, counter.count

        return go

    def ours(call):
        def go():
            op = HessianOperator(model, F.cross_entropy, data)
            out = call(op)
            return out, op.num_matvecs

        return go

    # Our float32 Lanczos trajectory: HVPs needed to match any given accuracy.
    traj: list[tuple[int, float]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        eigenvalues(
            HessianOperator(model, F.cross_entropy, data), 1, tol=1e-13, max_matvecs=200,
            seed=0, callback=lambda c, v: traj.append((c, float(v[0]))),
        )

    def ours_lanczos(count):
        def call(op):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                return eigenvalues(op, 1, tol=1e-13, max_matvecs=count, seed=0)

        return ours(call)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using backward")
        # --- lambda_max: PyHessian at its default tol (1e-3 relative change between
        # iterates) and tighter; ours stopped at the HVP count where its trajectory
        # matches the accuracy PyHessian achieved.
        for ph_tol in (1e-3, 1e-4, 1e-5, 1e-6):

            def ph_eig(h, ph_tol=ph_tol):
                torch.manual_seed(0)
                return h.eigenvalues(top_n=1, tol=ph_tol, maxIter=1000)

            t_ph, (out, n_ph) = median_time(ph_run(ph_eig), repeats)
            err_ph = abs(out[0][0] - lam_max) / lam_max
            need = first_within(traj, lam_max, err_ph)
            if need is None:
                rows.append((f"lambda_max tol {ph_tol:.0e}", t_ph, n_ph, f"{err_ph:.1e}",
                             float("nan"), 0, "not reached"))
                continue
            t_us, (res, n_us) = median_time(ours_lanczos(need), repeats)
            err_us = abs(res.values[0].item() - lam_max) / lam_max
            rows.append((f"lambda_max tol {ph_tol:.0e}", t_ph, n_ph, f"{err_ph:.1e}", t_us, n_us,
                         f"{err_us:.1e} (same accuracy)"))
        t_us, (res, n_us) = median_time(ours(lambda op: eigenvalues(op, 1, seed=0)), repeats)
        err_us = abs(res.values[0].item() - lam_max) / lam_max
        rows.append(("lambda_max ours tol 1e-4", float("nan"), 0, "-", t_us, n_us,
                     f"{err_us:.1e} (converged={res.converged})"))
        # --- top 5
        t_ph, (out, n_ph) = median_time(ph_run(lambda h: h.eigenvalues(top_n=5)), repeats)
        err_ph = np.max(np.abs(np.array(out[0]) - top5) / np.abs(top5))
        t_us, (res, n_us) = median_time(ours(lambda op: eigenvalues(op, 5, seed=0)), repeats)
        err_us = np.max(np.abs(res.values.numpy() - top5) / np.abs(top5))
        rows.append(("top-5", t_ph, n_ph, f"{err_ph:.1e}", t_us, n_us, f"{err_us:.1e}"))
        # --- trace (PyHessian: Hutchinson up to 100 probes, stops at 1e-3 relative change)
        t_ph, (out, n_ph) = median_time(ph_run(lambda h: h.trace()), repeats)
        err_ph = abs(np.mean(out) - tr_true) / abs(tr_true)
        t_us, (res, n_us) = median_time(
            ours(lambda op: trace(op, num_matvecs=max(n_ph, 4), seed=0)), repeats
        )
        err_us = abs(res.estimate - tr_true) / abs(tr_true)
        rows.append(("trace", t_ph, n_ph, f"{err_ph:.1e}", t_us, n_us,
                     f"{err_us:.1e} (se {res.stderr / abs(tr_true):.1e})"))
        # --- density (PyHessian default: 100 Lanczos steps, 1 probe)
        with torch_eig_shim():  # PyHessian 0.1 calls the removed torch.eig
            t_ph, (out, n_ph) = median_time(ph_run(lambda h: h.density()), repeats)
        nodes_ph, w_ph = np.asarray(out[0]), np.asarray(out[1])
        w1_ph = wasserstein_distance(nodes_ph.ravel(), eigs, w_ph.ravel())
        t_us, (sd, n_us) = median_time(
            ours(lambda op: spectral_density(op, num_steps=100, num_probes=1, seed=0)), repeats
        )
        w1_us = wasserstein_distance(sd.nodes.reshape(-1).numpy(), eigs, sd.weights.reshape(-1).numpy())
        ext_ph = max(abs(nodes_ph.max() - eigs[-1]) / abs(eigs[-1]), abs(nodes_ph.min() - eigs[0]) / abs(eigs[0]))
        ext_us = max(abs(sd.lambda_max - eigs[-1]) / abs(eigs[-1]), abs(sd.lambda_min - eigs[0]) / abs(eigs[0]))
        rows.append(("density 100x1", t_ph, n_ph, f"W1 {w1_ph:.2e} ext {ext_ph:.0e}",
                     t_us, n_us, f"W1 {w1_us:.2e} ext {ext_us:.0e}"))
        with torch_eig_shim():
            t_ph, (out, n_ph) = median_time(ph_run(lambda h: h.density(iter=80, n_v=10)), repeats)
        w1_ph = wasserstein_distance(np.ravel(out[0]), eigs, np.ravel(out[1]) / len(out[1]))
        t_d, (sd10, n_d) = median_time(
            ours(lambda op: spectral_density(op, num_steps=80, num_probes=10, seed=0)), repeats
        )
        w1_d = wasserstein_distance(sd10.nodes.reshape(-1).numpy(), eigs, sd10.weights.reshape(-1).numpy())
        rows.append(("density 80x10", t_ph, n_ph, f"W1 {w1_ph:.2e}", t_d, n_d, f"W1 {w1_d:.2e}"))

    # Cost of one product, which bounds every sequential method.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using backward")
        h = pyhessian.hessian(copy.deepcopy(model), crit, data=data, cuda=False)
        v = [torch.randn_like(p) for p in h.params]
        hvp = sys.modules["pyhessian.hessian"].hessian_vector_product
        t_ph1, _ = median_time(lambda: hvp(h.gradsH, h.params, v), 20)
    op = HessianOperator(model, F.cross_entropy, data)
    V = torch.randn(op.shape[0], 10)
    op.matmat(V)
    t_mv, _ = median_time(lambda: op.matvec(V[:, 0].contiguous()), 20)
    t_mm, _ = median_time(lambda: op.matmat(V), 20)
    rows.append(("one HVP [ms]", 1e3 * t_ph1, 1, "-", 1e3 * t_mv, 1,
                 f"matmat(10): {1e3 * t_mm / 10:.2f} ms/col"))

    print("\n== PyHessian 0.1 vs curvature (float32, full batch; wall time includes set-up) ==")
    print(f"{'task':22} {'PyH s':>8} {'PyH HVP':>8} {'PyH error':>22} | {'ours s':>8} "
          f"{'HVP':>5} {'our error':>28} | {'speed-up':>8}")
    for name, tp, np_, ep, tu, nu, eu in rows:
        ratio = tp / tu if np.isfinite(tp) else float("nan")
        print(f"{name:22} {tp:8.3f} {np_:8d} {ep:>22} | {tu:8.3f} {nu:5d} {eu:>28} | {ratio:7.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    parser.add_argument("--budget", type=int, default=4000, help="max HVPs per trajectory")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--out", default=str(REPO / "reports" / "bench-estimators"),
                        help="report folder (default: reports/bench-estimators)")
    args = parser.parse_args(argv)
    with printed_report(Path(args.out), "Estimators against dense ground truth and PyHessian"):
        run(args)


def run(args: argparse.Namespace) -> None:
    """Print both sections for the digits MLP ``args`` describe."""

    model, data = digits_mlp(args.train_steps)
    n = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"MLP 64-32-10 tanh, {n} parameters, {len(data[1])} digits in one batch")
    t0 = time.perf_counter()
    H = dense_hessian(model, F.cross_entropy, data)
    eigs = np.linalg.eigvalsh(H.numpy())
    print(f"dense float64 Hessian + eigh: {time.perf_counter() - t0:.1f} s; "
          f"lambda_max {eigs[-1]:.6g}, lambda_2 {eigs[-2]:.6g}, lambda_min {eigs[0]:.6g}, "
          f"trace {eigs.sum():.6g}")
    section_convergence(model, data, float(eigs[-1]), args.repeats, args.budget)
    section_pyhessian(model, data, eigs, args.repeats)


if __name__ == "__main__":
    main()
