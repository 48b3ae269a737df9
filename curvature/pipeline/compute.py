"""The computation of a post-hoc analysis: :func:`analyze` runs the estimators on a
model's data and returns an :class:`~curvature.pipeline.summary.Analysis`.

On the training data and optionally on test data it computes

* the ``k`` largest and ``k`` smallest Hessian eigenvalues (Lanczos, with residuals
  and convergence flags),
* the trace (Hutch++ with a standard error),
* the spectral density (stochastic Lanczos quadrature),
* the loss along the top eigenvectors and along filter-normalised random directions,
  on lines (1-D) and planes (2-D) -- the landscape directions are chosen here,
* on the training data only, the adaptive worst-case and average-case sharpness
  (:mod:`curvature.sharpness`) on the whole training split as given (the same batches
  and batch-size weighted loss as the Hessian; batches are never concatenated, so dict
  inputs of different sequence lengths work).

Nothing is written: :func:`curvature.pipeline.write_analysis` turns the result into
a folder.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from curvature import memory
from curvature.batches import batch_size_of, model_args
from curvature.data_loop import DataLoop
from curvature.errors import CurvatureWarning
from curvature.pipeline.config import AnalysisConfig, resolve_config
from curvature.pipeline.costs import block_column_seconds, measure_costs, point_seconds
from curvature.pipeline.meter import MeteredOperator, analysis_bar
from curvature.pipeline.plan import Plan, make_plan
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
    log = log or _silent
    ref = next(iter(model.parameters()))
    device = torch.device(config.device) if config.device else ref.device
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dtype, dtype_reason = _resolve_dtype(config, device, num_params)
    work = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    names = [k for k, p in work.named_parameters() if p.requires_grad]
    k = min(config.top_k, num_params)
    mem = memory_plan(config, num_params, dtype, work)
    want = set(config.metrics)
    timings: dict[str, float] = {}
    splits: dict[str, SplitAnalysis] = {}
    t_all = time.perf_counter()

    datasets = [("train", data)] + ([("test", test_data)] if test_data is not None else [])
    ops, grads = {}, {}
    for split, batches in datasets:
        ops[split] = HessianOperator(
            work, loss_fn, batches, method=config.hvp_method, device=device, dtype=dtype
        )
        with _timed(timings, f"{split}_loss_gradient"):
            grads[split] = ops[split].gradient()
            loss = ops[split].loss()
        with _timed(timings, f"{split}_forward"):
            acc = _accuracy(work, batches, device, dtype)
        splits[split] = SplitAnalysis(split, _count(batches, device), loss, acc,
                                      float(grads[split].double().norm()))

    plan = _plan(config, work, loss_fn, datasets, ops, names, k, num_params, t_all, timings,
                 splits["train"].num_examples, mem["per_layer_blocks"])
    if log is not _silent:
        log(plan.line())
    elif config.progress:
        print(plan.line(), file=sys.stderr, flush=True)
    bar = analysis_bar(plan.progress_total(), config.progress)
    state: dict[str, Any] = {}

    def tick(columns: float) -> None:
        units = plan.progress_units(state["item"], columns)
        if bar.n + units > bar.total:  # more work than planned: the total grows with it
            bar.total = bar.n + units
        bar.update(units)

    def start(name: str, text: str | Callable[[dict], str]) -> Any:
        it = plan.grant(name, _elapsed(t_all))
        state["item"] = it
        bar.total += plan.progress_units(it, it.granted - it.planned)
        if it.settings is None:
            log(f"{name.replace('/', ': ')}: skipped: budget")
            return None
        text = text(it.settings) if callable(text) else text
        if bar.disable:
            log(text)
        else:
            bar.set_description_str(text)
        return it.settings

    def spend(name: str, used: int) -> None:
        it = plan[name]
        # (not below the work done: rounding must not leave the bar past its total)
        bar.total = max(bar.total - plan.progress_units(it, it.granted - used), bar.n)
        plan.spend(name, used)
        bar.refresh()

    directions: dict[str, tuple[Tensor, ...]] = {}
    for split, batches in datasets:
        res, g = splits[split], grads[split]
        op = MeteredOperator(ops[split], tick)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for which, attr in (("largest", "top"), ("smallest", "bottom")):
                name = f"{split}/eigenvalues_{which}"
                def label(st: dict, split: str = split, which: str = which) -> str:
                    return f"{split}: Lanczos, {st.get('top_k', k)} {which} eigenvalues"

                if name not in plan or (s := start(name, label)) is None:
                    continue
                before = op.num_matvecs
                # the gradient lies mostly in the top eigenspace: a start guess for the
                # largest end (curvature.algorithms.probes.start_block)
                guess = g if which == "largest" and _usable_guess(g) else None
                with _timed(res.timings, f"eigenvalues_{which}"):
                    r = eigenvalues(op, s.get("top_k", k), which=which, tol=config.tol,
                                    max_matvecs=s["max_matvecs"], seed=config.seed,
                                    basis_size=mem["lanczos_basis_size"], v0=guess)
                setattr(res, attr, r)
                res.num_matvecs[f"eigenvalues_{which}"] = op.num_matvecs - before
                spend(name, op.num_matvecs - before)
            name = f"{split}/trace"
            if name in plan and (s := start(name, f"{split}: Hutch++ trace")) is not None:
                before = op.num_matvecs
                with _timed(res.timings, "trace"):
                    mem["hutchpp_sketch_size"] = memory.sketch_size(s["num_matvecs"],
                                                                    num_params, dtype)
                    res.trace = trace(op, method="hutch++", num_matvecs=s["num_matvecs"],
                                      seed=config.seed, sketch_size=mem["hutchpp_sketch_size"])
                res.num_matvecs["trace"] = op.num_matvecs - before
                spend(name, op.num_matvecs - before)
            name = f"{split}/density"
            if name in plan and (s := start(name, f"{split}: SLQ density")) is not None:
                before = op.num_matvecs
                steps, probe_block = memory.slq_plan(s["num_steps"], s["num_probes"],
                                                     num_params, dtype)
                mem.update(density_steps=steps, density_probe_block=probe_block)
                with _timed(res.timings, "density"):
                    res.density = spectral_density(
                        op, num_steps=min(steps, s["num_steps"]), num_probes=s["num_probes"],
                        seed=config.seed, probe_block=probe_block)
                res.num_matvecs["density"] = op.num_matvecs - before
                spend(name, op.num_matvecs - before)
        res.warnings = _own_warnings(caught)
        for w in res.warnings:
            log(f"{split}: warning: {w}")

        name = f"{split}/landscape"
        if name in plan and (s := start(name, f"{split}: loss landscapes")) is not None:
            if not directions:
                directions = _directions(work, names, splits["train"], config,
                                         filter_normalized_direction)
            line_a = symmetric_grid(config.landscape_radius, s["points"])
            line_r = symmetric_grid(config.random_radius, s["points"])
            grid_a = symmetric_grid(config.landscape_radius, s["grid"])
            grid_r = symmetric_grid(config.random_radius, s["grid"])
            evaluations = 0
            with _timed(res.timings, "landscape"):
                for key, (d, label, curv) in _line_specs(directions):
                    radius = line_r if key.startswith("random") else line_a
                    land = loss_landscape_1d(work, loss_fn, batches, d, radius, params=names,
                                             label=label)
                    res.lines[key] = land
                    evaluations += len(radius)
                    tick(len(radius))
                    if curv is not None:
                        slope = float(g.double() @ d.double())
                        res.quadratic[key] = (land.loss0, slope, curv)
                for key, (d1, d2, labels) in _plane_specs(directions):
                    radius = grid_r if key.startswith("random") else grid_a
                    res.planes[key] = loss_landscape_2d(
                        work, loss_fn, batches, (d1, d2), radius, params=names,
                        labels=labels)
                    evaluations += len(radius) ** 2
                    tick(len(radius) ** 2)
            spend(name, evaluations)
        name = f"{split}/sharpness"
        if name in plan and (s := start(name, f"{split}: adaptive sharpness")) is not None:
            with _timed(res.timings, "sharpness"):
                res.sharpness = _sharpness(ops[split].risk, config, s, tick)
            used = sum(r.evaluations for r in res.sharpness.values()
                       if not isinstance(r, str))
            spend(name, used)
            if "error" in res.sharpness:
                log(f"{split}: adaptive sharpness: {res.sharpness['error']}")
        if "eigenvalues" not in want:
            res.top = res.bottom = None
    per_layer = None
    if "train/per_layer" in plan and (
            s := start("train/per_layer", "train: per-layer spectra")) is not None:
        from curvature.blockwise import block_spectra

        pl = memory.per_layer_plan(
            work, num_params, dtype, s["max_steps"], s["density_probes"] > 0,
            max(1, s["density_steps"]), max(1, s["density_probes"]))
        mem.update(pl)
        log(f"train: per-layer spectra (one block per {pl['per_layer_blocks']})")
        if pl["per_layer_note"]:
            log(f"train: per-layer: {pl['per_layer_note']}")
        with _timed(timings, "per_layer"):
            per_layer = block_spectra(
                work, loss_fn, data, blocks=pl["per_layer_blocks"], tol=config.tol,
                max_steps=pl["per_layer_steps"], trace_matvecs=s["trace_matvecs"],
                seed=config.seed, dtype=dtype, device=device, method=config.hvp_method,
                density=pl["per_layer_density"], density_steps=pl["per_layer_density_steps"],
                density_probes=pl["per_layer_density_probes"], on_product=tick,
            )
        spend("train/per_layer", per_layer.num_matvecs)
        if not per_layer.converged:
            log(f"train: per-layer: {per_layer.message}")
    bar.close()
    timings["total"] = time.perf_counter() - t_all
    info = dict(info or {})
    info.setdefault("dtype", str(dtype).replace("torch.", ""))
    info.setdefault("dtype_reason", dtype_reason)
    info.setdefault("memory_plan", mem)
    info.setdefault("device", str(device))
    return Analysis(splits=splits, num_params=num_params, config=config, info=info,
                    timings=timings, per_layer=per_layer, plan=plan)


def _elapsed(t0: float) -> float:
    """Seconds since ``t0``; under torch.distributed the largest over the ranks, so every
    rank grants the same products."""
    import torch.distributed as dist

    elapsed = time.perf_counter() - t0
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dev = (torch.device("cuda", torch.cuda.current_device())
               if dist.get_backend() == "nccl" else torch.device("cpu"))
        t = torch.tensor([elapsed], dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        elapsed = float(t.item())
    return elapsed


def _world_size() -> int:
    """Processes under torch.distributed (1 without it)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _silent(_message: str) -> None:
    """The default ``log``: nothing."""


def _plan(config, work, loss_fn, datasets, ops, names, k, num_params, t_all, timings,
          examples: int, grouping: str | None = None) -> Plan:
    """Measure the costs (:mod:`curvature.pipeline.costs`) and make the plan
    (``examples``: the training split's, over all ranks)."""
    from curvature.algorithms.probes import default_block_size
    from curvature.partition import partition

    dims, block_column = None, None
    if config.per_layer:
        sizes = dict(zip(ops["train"].risk.names, ops["train"].risk.numels))
        parts = partition(work, grouping or "module")
        dims = [sum(sizes[p] for p in ps) for _, ps in parts]
        if config.hvp_method == "exact":
            def block_column() -> float:
                return block_column_seconds(
                    work, loss_fn, datasets[0][1], [list(ps) for _, ps in parts],
                    examples / _world_size(),
                    ops["train"].dtype,
                    ops["train"].device, config.seed)
    evaluate = None
    if "landscape" in config.metrics:
        train = datasets[0][1]
        evaluate = lambda: point_seconds(work, loss_fn, train, names, config.seed)  # noqa: E731
    with _timed(timings, "plan"):
        costs = measure_costs(ops, evaluate=evaluate,
                              per_layer_width=min(4, len(dims)) if dims else 0,
                              seed=config.seed, started=t_all,
                              gradient_s=timings.get("train_loss_gradient"),
                              forward_s=timings.get("train_forward"),
                              loss="sharpness" in config.metrics,
                              block_column=block_column)
    densities = dims is not None and "density" in config.metrics and memory.per_layer_plan(
        work, num_params, ops["train"].dtype, 3, True, config.density_steps,
        config.density_probes)["per_layer_density"]  # do block densities fit at all?
    return make_plan(config, costs, num_params=num_params, k=k, splits=tuple(ops),
                     block_dims=dims, probe_columns=default_block_size(ops["train"]),
                     budget_s=config.budget, block_densities=densities)


def _usable_guess(g: Tensor) -> bool:
    """A gradient that can seed Lanczos: finite and not zero."""
    norm = float(torch.linalg.vector_norm(g.double()))
    return norm > 0 and norm < float("inf")


def _own_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The first lines of curvature's own warnings (:class:`curvature.errors.CurvatureWarning`)
    among ``caught``; any other warning (third-party libraries, torch) is issued again to
    the caller's filters and not recorded."""
    own = set()
    for w in caught:
        if issubclass(w.category, CurvatureWarning):
            own.add(str(w.message).splitlines()[0])
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return sorted(own)


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


def _sharpness(risk, config: AnalysisConfig, settings: dict[str, int],
               tick: Callable[[float], None]) -> dict[str, Any]:
    """``{"worst": SharpnessResult, "average": SharpnessResult}`` on ``risk``'s data at
    ``config.sharpness_rho``/``sharpness_eta`` with the planned ``steps``/``samples``, or
    ``{"error": message}`` when a perturbed loss is non-finite (``rho`` too large)."""
    from curvature.sharpness import risk_sharpness

    out: dict[str, Any] = {}
    for kind in ("worst", "average"):
        try:
            r = risk_sharpness(risk, rho=config.sharpness_rho, kind=kind,
                               steps=settings["steps"], samples=settings["samples"],
                               eta=config.sharpness_eta, seed=config.seed)
        except ValueError as e:
            return {"error": f"{kind} case: {e}"}
        out[kind] = r
        tick(r.evaluations)
    return out


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
