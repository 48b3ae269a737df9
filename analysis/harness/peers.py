"""One adapter per tool, so a benchmark calls curvature, PyHessian and curvlinops alike.

Each adapter builds its tool's Hessian operator on a :class:`~analysis.harness.workloads.Workload`
and runs the same tasks (one product, ``lambda_max``, top-k, trace, density), returning
the value and the number of Hessian-vector products it took. Peer quirks are handled here
once: PyHessian 0.1 calls ``torch.eig`` (removed in torch 2.0; :func:`torch_eig_shim`),
and its trace stopping rule misfires at ``tol=0`` (:meth:`PyHessianTool.trace_samples`).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor

import curvature as cv
from analysis.harness.timing import Scaled
from analysis.harness.workloads import Workload

__all__ = ["Sizes", "Counter", "count_products", "CurvatureTool", "PyHessianTool", "CurvlinopsTool",
           "torch_eig_shim", "PyHessianHVPCounter"]


class Sizes(Protocol):
    """The task sizes an adapter reads (the benchmark's ``Config``)."""

    tol: float
    top_k: int
    probes: int
    steps: int
    power_max_iter: int


class Counter:
    """A mutable product count."""

    def __init__(self) -> None:
        self.n = 0


def count_products(obj: Any, method: str, width: Callable[[Any], int] = lambda arg: 1) -> Counter:
    """Wrap ``obj.method`` (an instance attribute) so each call adds ``width(argument)``
    products to the returned :class:`Counter`."""
    count = Counter()
    inner = getattr(obj, method)

    def counted(arg):
        count.n += width(arg)
        return inner(arg)

    setattr(obj, method, counted)
    return count


class CurvatureTool:
    """curvature itself: ``HessianOperator`` with its defaults, Lanczos, Hutch++ and SLQ."""

    name = "curvature"

    def __init__(self, w: Workload) -> None:
        self.w = w

    def operator(self) -> cv.HessianOperator:
        return cv.HessianOperator(self.w.model, self.w.loss, self.w.data)

    def hvp(self, v: Tensor, op: Any = None) -> tuple[Tensor, int]:
        op = self.operator() if op is None else op
        return op @ v, 1

    def lambda_max(self, cfg: Sizes, seed: int) -> tuple[np.ndarray, int]:
        """Lanczos started from the loss gradient (``v0``; one gradient pass, timed, not
        counted as a product), as :func:`curvature.pipeline.analyze` runs it."""
        op = self.operator()
        r = cv.eigenvalues(op, 1, tol=cfg.tol, seed=seed, v0=op.gradient())
        return r.values.numpy(), op.num_matvecs

    def top(self, cfg: Sizes, seed: int) -> tuple[np.ndarray, int]:
        op = self.operator()
        r = cv.eigenvalues(op, cfg.top_k, tol=cfg.tol, seed=seed)
        return r.values.numpy(), op.num_matvecs

    def trace(self, m: int, seed: int) -> tuple[float, float, int]:
        op = self.operator()
        r = cv.trace(op, method="hutch++", num_matvecs=m, seed=seed)
        return r.estimate, r.stderr, op.num_matvecs

    def density(self, cfg: Sizes, seed: int, probes: int, steps: int | None = None) -> Scaled:
        """``probes`` of the ``cfg.probes`` probes, advanced together; time and HVPs scaled
        to all of them (conservative: a bigger block would batch better). Always runs
        ``cfg.steps`` steps (``steps`` is for the peers' budget caps)."""
        op = self.operator()
        d = cv.spectral_density(op, num_steps=cfg.steps, num_probes=probes, seed=seed)
        weights = d.weights.reshape(-1).numpy() / probes
        return Scaled((d.nodes.reshape(-1).numpy(), weights), op.num_matvecs * cfg.probes / probes,
                      0.0, cfg.probes / probes)


@contextlib.contextmanager
def torch_eig_shim() -> Iterator[None]:
    """PyHessian 0.1's density calls ``torch.eig`` (removed in torch 2.0); provide it here only.

    ``torch.eig(T, eigenvectors=True)`` returned ``(e, V)`` with ``e[:, 0]`` the real parts;
    ``T`` is symmetric tridiagonal, so ``eigh`` gives the same pairs.
    """
    missing = object()
    old = getattr(torch, "eig", missing)  # torch 2.x keeps a stub that raises

    def eig(A: Tensor, eigenvectors: bool = False):
        vals, vecs = torch.linalg.eigh(A)
        return torch.stack([vals, torch.zeros_like(vals)], 1), vecs

    torch.eig = eig
    try:
        yield
    finally:
        if old is missing:
            del torch.eig
        else:
            torch.eig = old


class PyHessianHVPCounter:
    """Counts PyHessian's Hessian-vector products on both of its paths (single batch
    ``hessian_vector_product`` and ``hessian.dataloader_hv_product``) while entered."""

    def __init__(self) -> None:
        self.module = sys.modules["pyhessian.hessian"]
        self.count = 0

    def __enter__(self) -> PyHessianHVPCounter:
        self.orig = self.module.hessian_vector_product
        self.orig_loader = self.module.hessian.dataloader_hv_product

        def hvp(*args, **kwargs):
            self.count += 1
            return self.orig(*args, **kwargs)

        def loader(obj, v):
            self.count += 1
            return self.orig_loader(obj, v)

        self.module.hessian_vector_product = hvp
        self.module.hessian.dataloader_hv_product = loader
        return self

    def __exit__(self, *exc: object) -> None:
        self.module.hessian_vector_product = self.orig
        self.module.hessian.dataloader_hv_product = self.orig_loader


class PyHessianTool:
    """PyHessian 0.1 in its full-dataset mode (``dataloader=`` the list of batches)."""

    name = "pyhessian"

    def __init__(self, w: Workload) -> None:
        self.w = w
        from pyhessian import hessian

        self._cls = hessian

    def operator(self) -> tuple[Any, Counter]:
        ph = self._cls(self.w.model, self.w.loss, dataloader=self.w.data, cuda=False)
        return ph, count_products(ph, "dataloader_hv_product")

    def _split(self, v: Tensor) -> list[Tensor]:
        ps = self.w.params
        return [t.reshape(p.shape).clone() for t, p in zip(torch.split(v, [p.numel() for p in ps]), ps)]

    def hvp(self, v: Tensor, op: Any = None) -> tuple[Tensor, int]:
        ph, _ = self.operator() if op is None else op
        _, hv = ph.dataloader_hv_product(self._split(v))
        return torch.cat([h.reshape(-1) for h in hv]), 1

    def lambda_max(self, cfg: Sizes, seed: int) -> tuple[np.ndarray, int]:
        ph, count = self.operator()
        torch.manual_seed(seed)
        vals, _ = ph.eigenvalues(maxIter=cfg.power_max_iter, tol=cfg.tol, top_n=1)
        return np.asarray(vals), count.n

    def top(self, cfg: Sizes, seed: int) -> tuple[np.ndarray, int]:
        ph, count = self.operator()
        torch.manual_seed(seed)
        vals, _ = ph.eigenvalues(maxIter=cfg.power_max_iter, tol=cfg.tol, top_n=cfg.top_k)
        return np.asarray(vals), count.n

    def trace_samples(self, m: int, seed: int, tol: float = -math.inf) -> tuple[np.ndarray, int]:
        """PyHessian's Hutchinson samples ``z^T H z``; ``tol=-inf`` disables its stopping rule.

        (``tol=0`` does not: its test ``|mean - prev| / (prev + 1e-6) < tol`` is true as
        soon as the running mean turns negative.)"""
        ph, count = self.operator()
        torch.manual_seed(seed)
        return np.asarray(ph.trace(maxIter=m, tol=tol)), count.n

    def density(self, cfg: Sizes, seed: int, probes: int, steps: int | None = None) -> Scaled:
        """``probes`` of the ``cfg.probes`` probes (each an identical, independent loop of
        ``cfg.steps`` products), of ``steps`` Lanczos steps each (default ``cfg.steps``);
        time and HVPs scaled to ``cfg.probes x cfg.steps`` (the cost per step is one
        product plus a reorthogonalisation the products dwarf at these sizes)."""
        steps = cfg.steps if steps is None else steps
        ph, count = self.operator()
        torch.manual_seed(seed)
        with torch_eig_shim():
            nodes, weights = ph.density(iter=steps, n_v=probes)
        nodes = np.asarray(nodes, dtype=float).reshape(-1)
        weights = np.asarray(weights, dtype=float).reshape(-1) / probes
        scale = cfg.probes * cfg.steps / (probes * steps)
        return Scaled((nodes, weights), count.n * scale, 0.0, scale)


class CurvlinopsTool:
    """curvlinops 3.0: ``HessianLinearOperator`` with SciPy's ARPACK and its own Hutch++/SLQ."""

    name = "curvlinops"

    def __init__(self, w: Workload) -> None:
        self.w = w
        import curvlinops

        self.cl = curvlinops

    def operator(self) -> tuple[Any, Counter]:
        H = self.cl.HessianLinearOperator(
            self.w.model, self.w.loss, self.w.params, self.w.data,
            check_deterministic=False, num_data=self.w.n_data,
        )
        return H, count_products(H, "_matmat", lambda M: int(M[0].shape[-1]))

    def hvp(self, v: Tensor, op: Any = None) -> tuple[Tensor, int]:
        H, _ = self.operator() if op is None else op
        return H @ v, 1

    def _scipy(self, H: Any) -> LinearOperator:
        return H.to_scipy(dtype=np.float32)

    def _eigsh(self, k: int, cfg: Sizes, seed: int) -> tuple[np.ndarray, int]:
        H, count = self.operator()
        v0 = np.random.default_rng(seed).standard_normal(self.w.n_params).astype(np.float32)
        vals = eigsh(self._scipy(H), k=k, which="LA", tol=cfg.tol, v0=v0,
                     return_eigenvectors=False)
        return np.sort(vals)[::-1], count.n

    def lambda_max(self, cfg: Sizes, seed: int) -> tuple[np.ndarray, int]:
        return self._eigsh(1, cfg, seed)

    def top(self, cfg: Sizes, seed: int) -> tuple[np.ndarray, int]:
        return self._eigsh(cfg.top_k, cfg, seed)

    def trace(self, m: int, seed: int) -> tuple[float, float, int]:
        H, count = self.operator()
        torch.manual_seed(seed)
        m3 = max(3, 3 * round(m / 3))
        return float(self.cl.hutchpp_trace(H, m3)), math.nan, count.n

    def density(self, cfg: Sizes, seed: int, probes: int, steps: int | None = None) -> Scaled:
        """Spectral boundaries by ARPACK (what ``lanczos_approximate_spectrum`` does first),
        then ``probes`` Lanczos runs of ``cfg.steps`` steps (``steps`` is not used: its
        Lanczos is ARPACK-driven); the probe part is scaled to ``cfg.probes``."""
        from curvlinops.papyan2020traces.spectrum import approximate_boundaries

        t0 = time.perf_counter()
        H, count = self.operator()
        torch.manual_seed(seed)
        bounds = approximate_boundaries(H)
        fixed_s, fixed_hvps = time.perf_counter() - t0, count.n
        grid, dens = self.cl.lanczos_approximate_spectrum(
            H, ncv=cfg.steps, num_repeats=probes, num_points=2048, boundaries=bounds
        )
        grid, dens = grid.double().numpy(), dens.double().clamp_min(0).numpy()
        weights = dens * np.gradient(grid)  # the broadened density as a discrete measure
        scale = cfg.probes / probes
        return Scaled((grid, weights), fixed_hvps + (count.n - fixed_hvps) * scale, fixed_s,
                      scale)
