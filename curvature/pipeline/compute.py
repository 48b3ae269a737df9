"""The computation of a post-hoc analysis: :func:`analyze` runs the estimators on a
model's data and returns an :class:`~curvature.pipeline.summary.Analysis`.

On the training data and optionally on test data it computes

* the ``k`` largest and ``k`` smallest Hessian eigenvalues (Lanczos, with residuals
  and convergence flags),
* the trace (Hutch++ with a standard error),
* the spectral density (stochastic Lanczos quadrature),
* the loss along the top eigenvectors and along filter-normalised random directions,
  on lines (1-D) and planes (2-D) -- the landscape directions are chosen here.

Nothing is written: :func:`curvature.pipeline.write_analysis` turns the result into
a folder.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from curvature import memory
from curvature.batches import batch_size_of, model_args
from curvature.data_loop import DataLoop
from curvature.pipeline.config import AnalysisConfig, resolve_config
from curvature.pipeline.summary import Analysis, SplitAnalysis

__all__ = ["analyze"]


def _timed(timings: dict[str, float], key: str):
    @contextlib.contextmanager
    def ctx() -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0

    return ctx()


def _resolve_dtype(config: AnalysisConfig, device: torch.device,
                   num_params: int = 0) -> tuple[torch.dtype, str]:
    """``(dtype, reason)``: :func:`curvature.memory.analysis_dtype` (float64 on CPU up to
    its size threshold, float32 products with float64 bookkeeping above)."""
    from curvature.memory import analysis_dtype

    return analysis_dtype(num_params, device, config.dtype)


def analyze(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    data: Any,
    *,
    test_data: Any = None,
    config: AnalysisConfig | None = None,
    info: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> Analysis:
    """Curvature analysis of ``model`` at its current parameters.

    Args:
        model: the network (never modified: the analysis runs on a copy in the
            computation dtype/device, in eval mode).
        loss_fn: ``loss_fn(outputs, targets)``, the mean loss of a batch.
        data: training data: one ``(inputs, targets)`` batch or a list of batches.
        test_data: optional held-out data in the same form.
        config: an :class:`AnalysisConfig`; keyword ``overrides`` replace its fields
            (e.g. ``top_k=3``).
        info: provenance to record in the summary.
        log: receives one-line progress messages.

    Returns:
        an :class:`Analysis` (write it with :func:`write_analysis`).
    """
    from curvature.estimators import eigenvalues, spectral_density, trace
    from curvature.landscape import (
        filter_normalized_direction,
        loss_landscape_1d,
        loss_landscape_2d,
        symmetric_grid,
    )
    from curvature.operators import HessianOperator

    config = resolve_config(config, overrides)
    log = log or (lambda _m: None)
    ref = next(iter(model.parameters()))
    device = torch.device(config.device) if config.device else ref.device
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dtype, dtype_reason = _resolve_dtype(config, device, num_params)
    if device.type == "cpu" and num_params > memory.FLOAT64_MAX_PARAMS:
        memory.return_freed_memory()  # big models: freed graph tensors leave the heap
    work = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    names = [k for k, p in work.named_parameters() if p.requires_grad]
    k = min(config.top_k, num_params)
    plan = memory_plan(config, num_params, dtype, work)
    want = set(config.metrics)
    timings: dict[str, float] = {}
    splits: dict[str, SplitAnalysis] = {}
    directions: dict[str, tuple[Tensor, ...]] = {}
    t_all = time.perf_counter()

    datasets = [("train", data)] + ([("test", test_data)] if test_data is not None else [])
    for split, batches in datasets:
        op = HessianOperator(
            work, loss_fn, batches, method=config.hvp_method, device=device, dtype=dtype
        )
        with _timed(timings, f"{split}_loss_gradient"):
            g = op.gradient()
            loss = op.loss()
        acc = _accuracy(work, batches, device, dtype)
        res = SplitAnalysis(split, _count(batches, device), loss, acc, float(g.double().norm()))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if "eigenvalues" in want or ("landscape" in want and split == "train"):
                for which, attr in (("largest", "top"), ("smallest", "bottom")):
                    log(f"{split}: Lanczos, {k} {which} eigenvalues")
                    before = op.num_matvecs
                    with _timed(res.timings, f"eigenvalues_{which}"):
                        r = eigenvalues(op, k, which=which, tol=config.tol,
                                        max_matvecs=config.max_matvecs, seed=config.seed,
                                        progress=config.progress,
                                        basis_size=plan["lanczos_basis_size"])
                    setattr(res, attr, r)
                    res.num_matvecs[f"eigenvalues_{which}"] = op.num_matvecs - before
            if "trace" in want:
                log(f"{split}: Hutch++ trace, {config.trace_matvecs} products")
                before = op.num_matvecs
                with _timed(res.timings, "trace"):
                    res.trace = trace(op, method="hutch++", num_matvecs=config.trace_matvecs,
                                      seed=config.seed, progress=config.progress,
                                      sketch_size=plan["hutchpp_sketch_size"])
                res.num_matvecs["trace"] = op.num_matvecs - before
            if "density" in want:
                steps = min(plan["density_steps"], num_params)
                log(f"{split}: SLQ density, {config.density_probes} probes x {steps} steps")
                before = op.num_matvecs
                with _timed(res.timings, "density"):
                    res.density = spectral_density(
                        op, num_steps=steps, num_probes=config.density_probes,
                        seed=config.seed, progress=config.progress,
                        probe_block=plan["density_probe_block"])
                res.num_matvecs["density"] = op.num_matvecs - before
        res.warnings = sorted({str(w.message).splitlines()[0] for w in caught})
        for w in res.warnings:
            log(f"{split}: warning: {w}")

        if "landscape" in want:
            if not directions:
                directions = _directions(work, names, res, config, filter_normalized_direction)
            line_a = symmetric_grid(config.landscape_radius, config.landscape_points)
            line_r = symmetric_grid(config.random_radius, config.landscape_points)
            grid_a = symmetric_grid(config.landscape_radius, config.landscape_grid)
            grid_r = symmetric_grid(config.random_radius, config.landscape_grid)
            log(f"{split}: loss landscapes")
            with _timed(res.timings, "landscape"):
                for name, (d, label, curv) in _line_specs(directions):
                    radius = line_r if name.startswith("random") else line_a
                    land = loss_landscape_1d(work, loss_fn, batches, d, radius, params=names,
                                             label=label, progress=config.progress)
                    res.lines[name] = land
                    if curv is not None:
                        slope = float(g.double() @ d.double())
                        res.quadratic[name] = (land.loss0, slope, curv)
                for name, (d1, d2, labels) in _plane_specs(directions):
                    radius = grid_r if name.startswith("random") else grid_a
                    res.planes[name] = loss_landscape_2d(
                        work, loss_fn, batches, (d1, d2), radius, params=names,
                        labels=labels, progress=config.progress)
        splits[split] = res
        if "eigenvalues" not in want:
            res.top = res.bottom = None
    per_layer = None
    if config.per_layer:
        from curvature.blockwise import block_spectra

        grouping = plan["per_layer_blocks"]
        log(f"train: per-layer spectra (one block per {grouping})")
        with _timed(timings, "per_layer"):
            per_layer = block_spectra(
                work, loss_fn, data, blocks=grouping, tol=config.tol,
                max_steps=plan["per_layer_steps"], trace_matvecs=config.trace_matvecs,
                seed=config.seed, dtype=dtype, device=device, method=config.hvp_method,
                density=plan["per_layer_density"],
                density_steps=plan["per_layer_density_steps"],
                density_probes=plan["per_layer_density_probes"],
            )
        if plan["per_layer_note"]:
            log(f"train: per-layer: {plan['per_layer_note']}")
        if not per_layer.converged:
            log(f"train: per-layer: {per_layer.message}")
    timings["total"] = time.perf_counter() - t_all
    info = dict(info or {})
    info.setdefault("dtype", str(dtype).replace("torch.", ""))
    info.setdefault("dtype_reason", dtype_reason)
    info.setdefault("memory_plan", plan)
    info.setdefault("device", str(device))
    return Analysis(splits=splits, num_params=num_params, config=config, info=info,
                    timings=timings, per_layer=per_layer)


def memory_plan(config: AnalysisConfig, n: int, dtype: torch.dtype, work: nn.Module) -> dict[str, Any]:
    """Sizes of the stored vectors of each estimator under :data:`curvature.memory.VECTOR_BYTES`
    (:mod:`curvature.memory`; ``None``: the estimator's default, which fits)."""
    from curvature import memory

    k = min(config.top_k, n)
    steps, probe_block = memory.slq_plan(config.density_steps, config.density_probes, n, dtype)
    per_layer = {}
    if config.per_layer:
        per_layer = memory.per_layer_plan(
            work, n, dtype, config.max_matvecs or 300, "density" in config.metrics,
            config.density_steps, config.density_probes)
    return {
        "vector_bytes": memory.VECTOR_BYTES,
        "vectors": memory.vector_count(n, dtype),
        "lanczos_basis_size": memory.lanczos_basis_size(k, n, dtype),
        "hutchpp_sketch_size": memory.sketch_size(config.trace_matvecs, n, dtype),
        "density_steps": steps,
        "density_probe_block": probe_block,
        "per_layer_blocks": None,
        **per_layer,
    }


def _count(batches: Any, device) -> int:
    """Examples in ``batches`` (over all ranks under torch.distributed)."""

    def step(_: int, batch: Any) -> tuple[Tensor, None]:
        return torch.tensor([float(batch_size_of(batch))], dtype=torch.float64, device=device), None

    total = torch.zeros(1, dtype=torch.float64, device=device)
    return int(DataLoop(batches).accumulate(step, total, weighted=False).item())


class _NotClassification(Exception):
    """Targets or outputs that have no accuracy (regression, non-logit outputs)."""


@torch.no_grad()
def _accuracy(model: nn.Module, batches: Any, device, dtype) -> float | None:
    """Fraction of correct ``argmax`` predictions (over all ranks; per target entry, so
    per token for ``[B, T]`` labels); ``None`` for regression targets and for outputs
    that are not logits shaped like the targets plus a class dimension."""

    def step(_: int, batch: Any) -> tuple[Tensor, None]:
        x, y = batch
        if not isinstance(y, Tensor) or y.is_floating_point():
            raise _NotClassification
        out = model(*model_args(x))
        if not isinstance(out, Tensor) or out.shape[:-1] != y.shape:
            raise _NotClassification
        correct = (out.argmax(-1) == y).sum().to(torch.float64)
        return torch.stack([correct, correct.new_tensor(float(y.numel()))]), None

    total = torch.zeros(2, dtype=torch.float64, device=device)
    try:
        sums = DataLoop(batches, device=device, dtype=dtype).accumulate(step, total, weighted=False)
    except _NotClassification:
        return None
    return float(sums[0] / sums[1]) if sums[1] > 0 else None


def _directions(work, names, train: SplitAnalysis, config, filter_normalized):
    """Directions of the landscapes: top eigenvectors (train) and two random ones."""
    out: dict[str, tuple[Tensor, ...]] = {}
    if train.top is not None:
        V = train.top.vectors
        out["eigen"] = tuple(V[:, i] for i in range(min(2, V.shape[1])))
        out["eigen_values"] = tuple(float(v) for v in train.top.values[:2])
    if train.bottom is not None:
        out["bottom"] = (train.bottom.vectors[:, 0],)
        out["bottom_values"] = (float(train.bottom.values[0]),)
    out["random"] = tuple(
        filter_normalized(work, params=names, seed=config.seed + i) for i in (1, 2)
    )
    return out


def _line_specs(directions):
    """``(name, (direction, label, curvature or None))`` for the 1-D landscapes."""
    if "eigen" in directions:
        v, lam = directions["eigen"][0], directions["eigen_values"][0]
        yield "v_max", (v, rf"$v_{{\max}}$ ($\lambda$ = {lam:.3g})", lam)
    if "bottom" in directions:
        v, lam = directions["bottom"][0], directions["bottom_values"][0]
        yield "v_min", (v, rf"$v_{{\min}}$ ($\lambda$ = {lam:.3g})", lam)
    yield "random", (directions["random"][0], "random (filter-normalised)", None)


def _plane_specs(directions):
    if "eigen" in directions and len(directions["eigen"]) == 2:
        l1, l2 = directions["eigen_values"]
        yield "eigen", (*directions["eigen"],
                        (rf"$v_1$ ($\lambda_1$ = {l1:.3g})", rf"$v_2$ ($\lambda_2$ = {l2:.3g})"))
    yield "random", (*directions["random"], ("random $d_1$", "random $d_2$"))
