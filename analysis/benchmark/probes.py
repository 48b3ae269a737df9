"""Side measurements of a benchmark run: where the time of one product goes
(torch.profiler), the per-column cost of k-column products, and each tool's HVP against
central finite differences in float64."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import pandas as pd
import torch

import curvature as cv
from analysis.benchmark.tasks import gradient_job
from analysis.benchmark.truth import rel_err_vec
from analysis.harness.peers import CurvatureTool, CurvlinopsTool, PyHessianTool
from analysis.harness.timing import times
from analysis.harness.workloads import Workload, seeded_vector
from curvature import models


def profile_hvp(w: Workload, log: Callable[[str], None]) -> pd.DataFrame:
    """torch.profiler of one fresh curvature HVP, one PyHessian HVP and one gradient."""
    from torch.profiler import ProfilerActivity, profile

    v = seeded_vector(w.n_params, 1)
    out = []
    jobs = {"gradient": gradient_job(w), "curvature hvp (fresh)": lambda: CurvatureTool(w).hvp(v)}
    try:
        ph = PyHessianTool(w)
        jobs["pyhessian hvp"] = lambda: ph.hvp(v)
    except Exception:
        pass
    for name, job in jobs.items():
        job()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            job()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        for e in events[:6]:
            out.append({"workload": w.name, "run": name, "op": e.key, "calls": e.count,
                        "self_ms": e.self_cpu_time_total / 1e3,
                        "share": e.self_cpu_time_total / total})
    return pd.DataFrame(out)


def matmat_scaling(w: Workload, ks: tuple[int, ...] = (1, 8, 32), repeats: int = 3) -> pd.DataFrame:
    """Per-column cost of a k-column product on a warm operator, curvature vs curvlinops.

    curvature: cached per-batch gradient graphs, one batched second backward
    (``is_grads_batched``) per batch; curvlinops: ``vmap`` over forward-over-reverse
    (``jvp`` of ``jacrev``) per batch. In units of one full-dataset gradient.
    """
    grad = gradient_job(w)
    grad()
    t_grad = statistics.median(times(grad, 5))
    ops = {"curvature": cv.HessianOperator(w.model, w.loss, w.data)}
    try:
        ops["curvlinops"] = CurvlinopsTool(w).operator()[0]
    except Exception:
        pass
    rows = []
    for k in ks:
        V = torch.randn(w.n_params, k, generator=torch.Generator().manual_seed(k))
        for name, op in ops.items():
            op @ V  # warm: builds the graph cache / the vmapped function
            t = statistics.median(times(lambda op=op, V=V: op @ V, repeats))
            rows.append({"workload": w.name, "tool": name, "k": k, "s_per_column": t / k,
                         "gradients_per_column": t / k / t_grad})
    return pd.DataFrame(rows)


def hvp_correctness() -> pd.DataFrame:
    """Each tool's HVP against central finite differences of gradients, float64, small ViT.

    A check independent of autograd's second derivatives: ``(g(w + e v) - g(w - e v)) / 2e``
    (``curvature``'s ``method="fd-central"``, first derivatives only). Per parameter tensor,
    so that an error confined to a few blocks (e.g. LayerNorm weights) is visible.
    """
    torch.manual_seed(0)
    model = models.vit(image_size=8, patch_size=4, dim=8, depth=1, heads=2).double().eval()
    ds = cv.load_dataset({"name": "synthetic-image", "n_train": 8, "n_test": 1, "size": 8})
    batches = ds.to(dtype=torch.float64).train_batches(8)
    w = Workload("vit8-check", "ViT dim 8 (float64)", model, batches)
    fd = cv.HessianOperator(model, w.loss, batches, method="fd-central")
    v = torch.randn(w.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref = fd @ v
    products = {"curvature": CurvatureTool(w).hvp(v)[0]}
    for cls in (PyHessianTool, CurvlinopsTool):
        try:
            products[cls.name] = cls(w).hvp(v)[0].double()
        except Exception:
            pass
    rows = []
    for tool, hv in products.items():
        worst, where, off = 0.0, "", 0
        for name, p in model.named_parameters():
            seg = slice(off, off + p.numel())
            off += p.numel()
            if ref[seg].norm() > 0:
                e = float((hv[seg] - ref[seg]).norm() / ref[seg].norm())
                if e > worst:
                    worst, where = e, name
        rows.append({"tool": tool, "rel_error": rel_err_vec(hv, ref),
                     "worst_block_rel_error": worst, "worst_block": where})
    return pd.DataFrame(rows)

