"""Ground truth for a workload and each task's accuracy against it.

Dense float64 Hessian (``cv.dense_hessian`` + ``eigvalsh``) where ``n <= DENSE_LIMIT``,
otherwise ARPACK (``scipy.sparse.linalg.eigsh``, tolerance 1e-6, an algorithm
independent of ours) for eigenvalues and a long Hutch++ estimate (with its standard
error) for the trace.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from torch import Tensor

import curvature as cv
from analysis.benchmark.config import ARPACK_LIMIT, DENSE_LIMIT, Config
from analysis.harness.workloads import Workload


@dataclass
class Truth:
    """Ground truth for one workload."""

    top: np.ndarray  # the largest eigenvalues, descending
    trace: float
    trace_stderr: float  # 0 when exact
    hutchinson_var: float  # Var[z^T H z] for Rademacher z (exact or estimated)
    spectrum: np.ndarray | None  # every eigenvalue when dense
    kind: str
    seconds: float


def ground_truth(w: Workload, cfg: Config, k: int) -> Truth:
    t0 = time.perf_counter()
    if w.n_params <= DENSE_LIMIT and not w.sweep:  # sweeps: the cheaper references
        H = cv.dense_hessian(w.model, w.loss, w.batches).double()
        H = 0.5 * (H + H.T)
        evals = np.linalg.eigvalsh(H.numpy())
        diag = torch.diagonal(H)
        var = 2.0 * float(H.square().sum() - diag.square().sum())
        return Truth(evals[::-1][:k].copy(), float(diag.sum()), 0.0, var, evals,
                     "dense float64 Hessian, eigvalsh", time.perf_counter() - t0)
    op = cv.HessianOperator(w.model, w.loss, w.batches)
    if w.n_params <= ARPACK_LIMIT:
        rng = np.random.default_rng(12345)
        vals = eigsh(op.to_scipy(), k=k, which="LA", tol=1e-6,
                     v0=rng.standard_normal(w.n_params), return_eigenvectors=False)
        kind = "ARPACK eigsh tol 1e-6"
    else:  # ARPACK's float64 copies per product are too slow here: a tight Lanczos
        vals = cv.eigenvalues(op, k, tol=cfg.reference_tol, seed=12345,
                              max_matvecs=400).values.numpy()
        kind = (f"Lanczos (curvature) residual tol {cfg.reference_tol:g}, seed independent of "
                "the timed runs")
    if cfg.trace_reference_matvecs:
        tr = cv.trace(op, method="hutch++", num_matvecs=cfg.trace_reference_matvecs, seed=12345)
        trace, stderr = tr.estimate, tr.stderr
        kind += f"; Hutch++ {cfg.trace_reference_matvecs} products"
    else:
        trace, stderr = math.nan, math.nan
        kind += "; no trace reference (budget)"
    # Var[z^T H z] estimated from plain Hutchinson samples on fresh probes, a few at a time.
    gen = torch.Generator().manual_seed(7)
    q = [torch.full((2,), math.nan, dtype=torch.float64)] if cfg.var_samples < 2 else []
    for i in range(0, cfg.var_samples, 8):
        z = (2 * torch.randint(0, 2, (w.n_params, min(8, cfg.var_samples - i)), generator=gen)
             - 1).float()
        q.append((z * (op @ z)).sum(0).double())
    return Truth(np.sort(vals)[::-1].copy(), trace, stderr, float(torch.cat(q).var()), None,
                 kind, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- accuracy
def rel_err(est: float, ref: float) -> float:
    return abs(est - ref) / max(abs(ref), 1e-30)


def top_err(est: np.ndarray, ref: np.ndarray) -> float:
    est = np.sort(np.asarray(est, dtype=float))[::-1]
    if len(est) < len(ref):
        return math.inf
    return float(np.max(np.abs(est[: len(ref)] - ref) / np.maximum(np.abs(ref), 1e-30)))


def wasserstein1(nodes: np.ndarray, weights: np.ndarray, exact: np.ndarray) -> float:
    """W1 between a discrete measure (nodes, weights summing to 1) and the exact spectrum."""
    pts = np.concatenate([nodes, exact])
    mass = np.concatenate([weights / weights.sum(), -np.full(len(exact), 1.0 / len(exact))])
    order = np.argsort(pts)
    cdf = np.cumsum(mass[order])[:-1]
    return float(np.sum(np.abs(cdf) * np.diff(pts[order])))


def density_error(w: Workload, truth: Truth, nodes: np.ndarray, weights: np.ndarray) -> tuple[float, str]:
    """W1 / spectral width against the dense spectrum, else relative error of the implied trace."""
    weights = weights / weights.sum()
    if truth.spectrum is not None:
        width = truth.spectrum[-1] - truth.spectrum[0]
        return wasserstein1(nodes, weights, truth.spectrum) / width, "W1/width"
    return rel_err(w.n_params * float(nodes @ weights), truth.trace), "trace of density"


def rel_err_vec(x: Tensor, ref: Tensor) -> float:
    return float(torch.linalg.vector_norm(x.double() - ref.double())
                 / torch.linalg.vector_norm(ref.double()))

