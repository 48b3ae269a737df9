"""Post-hoc analysis of a trained model, and comparison of several analyses.

:func:`analyze` computes, on the training data and optionally on test data,

* the ``k`` largest and ``k`` smallest Hessian eigenvalues (Lanczos, with residuals
  and convergence flags),
* the trace (Hutch++ with a standard error),
* the spectral density (stochastic Lanczos quadrature),
* the loss along the top eigenvectors and along filter-normalised random directions,
  on lines (1-D) and planes (2-D),

and returns an :class:`Analysis`; :func:`write_analysis` turns it into a folder
with ``summary.json``, CSV tables, PNG figures and ``report.md``.
:func:`analyze_checkpoint` does both for a checkpoint file (the ``curvature
analyze`` command). :func:`compare` overlays and tabulates several analysis folders
(``curvature compare``).

Folders are written atomically: everything goes to a temporary directory next to
the target, which is renamed over the target at the end (:func:`atomic_directory`),
so an error never leaves a half-written report.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

__all__ = [
    "METRICS",
    "Analysis",
    "AnalysisConfig",
    "InputError",
    "SplitAnalysis",
    "analyze",
    "analyze_checkpoint",
    "atomic_directory",
    "check_data_fits",
    "compare",
    "make_loss",
    "write_analysis",
]

METRICS = ("eigenvalues", "trace", "density", "landscape")
"""Names accepted by ``AnalysisConfig.metrics`` (``--metrics``)."""


class InputError(ValueError):
    """Bad input to the analysis (wrong data shape, missing data spec, bad folder...);
    the message names the problem."""


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class AnalysisConfig:
    """What :func:`analyze` computes and how hard it tries.

    Attributes:
        metrics: subset of :data:`METRICS`.
        top_k: eigenvalues at each end of the spectrum.
        tol: Lanczos relative residual tolerance.
        max_matvecs: Lanczos product budget per end (``None``: the estimator's default).
        trace_matvecs: Hutch++ products.
        density_probes, density_steps: SLQ probes and Lanczos steps per probe.
        landscape_points: points on each 1-D line.
        landscape_grid: points per side of each 2-D grid.
        landscape_radius: half-width of eigenvector lines/planes, in Euclidean parameter
            distance (eigenvectors have unit norm).
        random_radius: half-width of random lines/planes, in units of the
            filter-normalised direction (1 = every filter moved by its own norm).
        seed: seeds every random choice (probes, start vectors, random directions).
        dtype: computation dtype (``None``: float64 on CPU, float32 elsewhere).
        device: where to compute (``None``: the model's device).
        progress: tqdm bars on stderr.
    """

    metrics: tuple[str, ...] = METRICS
    top_k: int = 5
    tol: float = 1e-5
    max_matvecs: int | None = None
    trace_matvecs: int = 90
    density_probes: int = 8
    density_steps: int = 60
    landscape_points: int = 41
    landscape_grid: int = 25
    landscape_radius: float = 1.0
    random_radius: float = 1.0
    seed: int = 0
    dtype: str | None = None
    device: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise InputError(f"unknown metrics {bad}; choose from {', '.join(METRICS)}")
        for name in ("top_k", "trace_matvecs", "density_probes", "density_steps",
                     "landscape_points", "landscape_grid"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if self.trace_matvecs < 4:
            raise InputError(f"trace_matvecs must be at least 4 (Hutch++), got {self.trace_matvecs}")
        for name in ("landscape_radius", "random_radius", "tol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise InputError(f"{name} must be a positive number, got {v!r}")
        if self.dtype not in (None, "float32", "float64"):
            raise InputError(f"dtype must be float32 or float64, got {self.dtype!r}")


# ------------------------------------------------------------------ losses / data


class _MSE(nn.Module):
    """Mean squared error; integer class targets are one-hot encoded."""

    def forward(self, out: Tensor, y: Tensor) -> Tensor:
        if not y.is_floating_point():
            y = nn.functional.one_hot(y, out.shape[-1]).to(out.dtype)
        return nn.functional.mse_loss(out, y.reshape(out.shape).to(out.dtype))


def make_loss(name: str) -> nn.Module:
    """``"ce"``: mean cross-entropy; ``"mse"``: mean squared error (one-hot targets for
    class labels)."""
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "mse":
        return _MSE()
    raise InputError(f"unknown loss {name!r}; choose ce or mse")


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_data_fits(
    model: nn.Module, loss_fn: Callable, x: Tensor, y: Tensor, what: str,
    *, labels: Tensor | None = None,
) -> None:
    """Run the model and the loss on two examples of ``(x, y)``, and check every class
    label (``labels``, default ``y``) against the model's output width; raise
    :class:`InputError` ("data of shape ... does not fit model ...") if anything fails.
    The model's mode is restored."""
    from curvature.engine import eval_mode

    device = next(iter(model.parameters())).device
    try:
        with eval_mode(model), torch.no_grad():
            out = model(x[:2].to(device))
            loss = loss_fn(out, y[:2].to(device))
            if loss.ndim != 0:
                raise RuntimeError(f"the loss is not a scalar (shape {list(loss.shape)})")
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"data of shape {_shape(x)} (targets {_shape(y)}) does not fit model "
            f"{what}: {first}"
        ) from None
    labels = y if labels is None else labels
    if not labels.is_floating_point() and len(labels) and out.ndim == 2:
        # two examples cannot reveal every class: check all labels against the outputs
        top = int(labels.max())
        if top >= out.shape[-1] or int(labels.min()) < 0:
            raise InputError(
                f"data of shape {_shape(x)} has class labels up to {top} but model {what} "
                f"has {out.shape[-1]} outputs: the data does not fit the model"
            )


def _subsample(x: Tensor, y: Tensor, n: int | None, seed: int) -> tuple[Tensor, Tensor]:
    if n is None or n >= len(x):
        return x, y
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=gen)[:n].sort().values
    return x[idx], y[idx]


# ------------------------------------------------------------------ analysis


@dataclass
class SplitAnalysis:
    """Results on one data split.

    Attributes:
        name: ``"train"`` or ``"test"``.
        num_examples: examples used.
        loss, accuracy, grad_norm: at the analysed parameters.
        top, bottom: :class:`curvature.results.EigenResult` for ``which="largest"``
            and ``"smallest"`` (``None`` if not computed).
        trace: :class:`curvature.results.TraceResult` or ``None``.
        density: :class:`curvature.density.SpectralDensity` or ``None``.
        lines, planes: 1-D and 2-D :class:`curvature.landscape.Landscape` by name.
        timings: seconds per quantity.
        warnings: convergence and other warnings raised while computing.
    """

    name: str
    num_examples: int
    loss: float
    accuracy: float | None
    grad_norm: float
    top: Any = None
    bottom: Any = None
    trace: Any = None
    density: Any = None
    lines: dict[str, Any] = field(default_factory=dict)
    planes: dict[str, Any] = field(default_factory=dict)
    quadratic: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    num_matvecs: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def scalars(self) -> dict[str, Any]:
        """The split's headline numbers as a JSON-able dict."""
        out: dict[str, Any] = {
            "num_examples": self.num_examples,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "grad_norm": self.grad_norm,
        }
        if self.top is not None:
            out["lambda_max"] = float(self.top.values[0])
            out["eigenvalues_largest"] = self.top.values.tolist()
            out["residuals_largest"] = self.top.residuals.tolist()
            out["converged_largest"] = bool(self.top.converged)
        if self.bottom is not None:
            out["lambda_min"] = float(self.bottom.values[0])
            out["eigenvalues_smallest"] = self.bottom.values.tolist()
            out["residuals_smallest"] = self.bottom.residuals.tolist()
            out["converged_smallest"] = bool(self.bottom.converged)
        if self.top is not None and self.bottom is not None:
            lmax, lmin = out["lambda_max"], out["lambda_min"]
            out["negative_ratio"] = abs(min(lmin, 0.0)) / lmax if lmax > 0 else math.nan
        if self.trace is not None:
            out["trace"] = float(self.trace.estimate)
            out["trace_stderr"] = float(self.trace.stderr)
        if self.density is not None:
            out["density_lambda_min"] = self.density.lambda_min
            out["density_lambda_max"] = self.density.lambda_max
        for name, land in self.lines.items():
            out[f"landscape_{name}_max_loss"] = float(land.loss.max())
        out["converged"] = {
            k: v for k, v in (("largest", out.get("converged_largest")),
                              ("smallest", out.get("converged_smallest"))) if v is not None
        }
        out["num_matvecs"] = dict(self.num_matvecs)
        out["timings_s"] = {k: round(v, 4) for k, v in self.timings.items()}
        out["warnings"] = list(self.warnings)
        return out


@dataclass
class Analysis:
    """Everything :func:`analyze` computed.

    Attributes:
        splits: ``{"train": SplitAnalysis, "test": SplitAnalysis?}``.
        num_params: ``n``, the number of differentiated parameters.
        config: the :class:`AnalysisConfig` used.
        info: provenance recorded in the summary (checkpoint, factory, data spec,
            training metadata...).
        timings: total seconds per phase.
    """

    splits: dict[str, SplitAnalysis]
    num_params: int
    config: AnalysisConfig
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """``summary.json``: training-split headline numbers at the top level, every
        split in full under ``"splits"``."""
        train = self.splits["train"].scalars()
        out: dict[str, Any] = {"num_params": self.num_params}
        for key in ("lambda_max", "lambda_min", "trace", "trace_stderr", "negative_ratio",
                    "loss", "accuracy", "grad_norm", "converged", "num_matvecs"):
            if key in train:
                out[key] = train[key]
        if "test" in self.splits:
            test = self.splits["test"].scalars()
            for key in ("lambda_max", "lambda_min", "trace", "trace_stderr", "loss", "accuracy"):
                if key in test:
                    out[f"test_{key}"] = test[key]
        out["num_matvecs_total"] = sum(
            sum(s.num_matvecs.values()) for s in self.splits.values()
        )
        timings = dict(self.timings)
        for name, split in self.splits.items():
            timings.update({f"{name}_{k}": v for k, v in split.timings.items()})
        out["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
        out["splits"] = {k: s.scalars() for k, s in self.splits.items()}
        out["config"] = asdict(self.config)
        out["config"]["metrics"] = list(self.config.metrics)
        out.update({k: v for k, v in self.info.items() if k not in out})
        return _jsonable(out)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    if isinstance(obj, Tensor):
        return _jsonable(obj.tolist())
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _timed(timings: dict[str, float], key: str):
    @contextlib.contextmanager
    def ctx() -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0

    return ctx()


def _resolve_dtype(config: AnalysisConfig, device: torch.device) -> torch.dtype:
    if config.dtype is not None:
        return getattr(torch, config.dtype)
    return torch.float64 if device.type == "cpu" else torch.float32


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
    from curvature.density import spectral_density
    from curvature.eigen import eigenvalues
    from curvature.landscape import (
        filter_normalized_direction,
        loss_landscape_1d,
        loss_landscape_2d,
        symmetric_grid,
    )
    from curvature.operators import HessianOperator
    from curvature.trace import trace

    config = config or AnalysisConfig()
    if overrides:
        config = AnalysisConfig(**{**asdict(config), **overrides})
    log = log or (lambda _m: None)
    ref = next(iter(model.parameters()))
    device = torch.device(config.device) if config.device else ref.device
    dtype = _resolve_dtype(config, device)
    work = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    names = [k for k, p in work.named_parameters() if p.requires_grad]
    num_params = sum(p.numel() for p in work.parameters() if p.requires_grad)
    k = min(config.top_k, num_params)
    want = set(config.metrics)
    timings: dict[str, float] = {}
    splits: dict[str, SplitAnalysis] = {}
    directions: dict[str, tuple[Tensor, ...]] = {}
    t_all = time.perf_counter()

    datasets = [("train", data)] + ([("test", test_data)] if test_data is not None else [])
    for split, batches in datasets:
        op = HessianOperator(work, loss_fn, batches, device=device, dtype=dtype)
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
                                        progress=config.progress)
                    setattr(res, attr, r)
                    res.num_matvecs[f"eigenvalues_{which}"] = op.num_matvecs - before
            if "trace" in want:
                log(f"{split}: Hutch++ trace, {config.trace_matvecs} products")
                before = op.num_matvecs
                with _timed(res.timings, "trace"):
                    res.trace = trace(op, method="hutch++", num_matvecs=config.trace_matvecs,
                                      seed=config.seed, progress=config.progress)
                res.num_matvecs["trace"] = op.num_matvecs - before
            if "density" in want:
                steps = min(config.density_steps, num_params)
                log(f"{split}: SLQ density, {config.density_probes} probes x {steps} steps")
                before = op.num_matvecs
                with _timed(res.timings, "density"):
                    res.density = spectral_density(
                        op, num_steps=steps, num_probes=config.density_probes,
                        seed=config.seed, progress=config.progress)
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
    timings["total"] = time.perf_counter() - t_all
    info = dict(info or {})
    info.setdefault("dtype", str(dtype).replace("torch.", ""))
    info.setdefault("device", str(device))
    return Analysis(splits=splits, num_params=num_params, config=config, info=info,
                    timings=timings)


def _count(batches: Any, device) -> int:
    """Examples in ``batches`` (over all ranks under torch.distributed)."""
    from curvature.engine import all_reduce_sum, as_batches, batch_size_of

    n = torch.tensor([float(sum(batch_size_of(b) for b in as_batches(batches)))],
                     dtype=torch.float64, device=device)
    return int(all_reduce_sum(n).item())


@torch.no_grad()
def _accuracy(model: nn.Module, batches: Any, device, dtype) -> float | None:
    """Fraction of correct ``argmax`` predictions (over all ranks; per target entry, so
    per token for ``[B, T]`` labels); ``None`` for regression targets and for outputs
    that are not logits shaped like the targets plus a class dimension."""
    from curvature.batches import check_pair, model_args, to_device
    from curvature.engine import all_reduce_sum, as_batches

    correct, total = 0, 0
    for i, b in enumerate(as_batches(batches)):
        check_pair(b, i)
        x, y = to_device(tuple(b), device, dtype)
        if not isinstance(y, Tensor) or y.is_floating_point():
            return None
        out = model(*model_args(x))
        if not isinstance(out, Tensor) or out.shape[:-1] != y.shape:
            return None
        correct += int((out.argmax(-1) == y).sum())
        total += y.numel()
    sums = all_reduce_sum(torch.tensor([correct, total], dtype=torch.float64, device=device))
    return float(sums[0] / sums[1]) if sums[1] > 0 else None


def _shard(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """This rank's examples ``x[rank::world]`` under torch.distributed, else all."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        r, w = dist.get_rank(), dist.get_world_size()
        return x[r::w], y[r::w]
    return x, y


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


# ------------------------------------------------------------------ writing


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``out``; on success it replaces ``out``.

    On an exception the temporary directory is removed and ``out`` is untouched. An
    existing ``out`` directory is replaced as a whole (renamed aside, then deleted).

    Raises:
        InputError: ``out`` exists and is not a directory.
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {str(out)!r} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for root, dirs, _files in os.walk(tmp):
            for d in dirs:
                os.chmod(Path(root) / d, 0o777 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _tables(analysis: Analysis) -> dict[str, pd.DataFrame]:
    from curvature.plots import density_grid

    eig, nodes, dens, lines, planes = [], [], [], [], []
    densities = {s: a.density for s, a in analysis.splits.items() if a.density is not None}
    grid, sigma = density_grid(list(densities.values())) if densities else (None, None)
    for split, a in analysis.splits.items():
        for which, r in (("largest", a.top), ("smallest", a.bottom)):
            if r is None:
                continue
            for i, (v, res, ok) in enumerate(zip(r.values.tolist(), r.residuals.tolist(),
                                                 r.converged_mask.tolist())):
                eig.append({"split": split, "which": which, "rank": i + 1, "eigenvalue": v,
                            "residual": res, "converged": bool(ok)})
        if a.density is not None:
            for p in range(a.density.nodes.shape[0]):
                for node, weight in zip(a.density.nodes[p].tolist(),
                                        a.density.weights[p].tolist()):
                    nodes.append({"split": split, "probe": p, "node": node, "weight": weight})
            values = a.density.evaluate(grid, sigma).tolist()
            dens += [{"split": split, "eigenvalue": t, "density": d, "sigma": sigma}
                     for t, d in zip(grid.tolist(), values)]
        for name, land in a.lines.items():
            acc = land.accuracy.tolist() if land.accuracy is not None else [None] * len(land.loss)
            for alpha, loss, ac in zip(land.coords[0].tolist(), land.loss.tolist(), acc):
                lines.append({"split": split, "direction": name, "alpha": alpha, "loss": loss,
                              "accuracy": ac})
        for name, land in a.planes.items():
            A, B = land.coords
            acc = land.accuracy
            for i, alpha in enumerate(A.tolist()):
                for j, beta in enumerate(B.tolist()):
                    planes.append({"split": split, "plane": name, "alpha": alpha, "beta": beta,
                                   "loss": float(land.loss[i, j]),
                                   "accuracy": None if acc is None else float(acc[i, j])})
    out = {}
    for name, rows in (("eigenvalues.csv", eig), ("slq_nodes.csv", nodes), ("density.csv", dens),
                       ("landscape_1d.csv", lines), ("landscape_2d.csv", planes)):
        if rows:
            out[name] = pd.DataFrame(rows)
    return out


def _figures(analysis: Analysis, folder: Path) -> list[tuple[str, str]]:
    """Draw every figure into ``folder``; returns ``(file, caption)`` pairs."""
    import matplotlib.pyplot as plt

    from curvature import plots

    made: list[tuple[str, str]] = []
    splits = analysis.splits
    densities = {s: a.density for s, a in splits.items() if a.density is not None}
    eigs = {s: np.concatenate([a.top.values.numpy() if a.top is not None else [],
                               a.bottom.values.numpy() if a.bottom is not None else []])
            for s, a in splits.items()}
    with plots.style():
        if densities:
            fig, ax = plt.subplots(figsize=(6.0, 3.8))
            plots.plot_density(densities, eigenvalues=eigs, ax=ax,
                               title="Hessian spectral density (SLQ) with Lanczos extremes")
            plots.save_figure(fig, folder / "spectrum.png")
            made.append(("spectrum.png", "Spectral density of the Hessian by stochastic Lanczos "
                          "quadrature, log density axis; dashed/dotted lines mark the largest/"
                          "smallest Lanczos eigenvalue, ticks the top and bottom k."))
        series = {s: {"largest": a.top.values.numpy(), "smallest": a.bottom.values.numpy()}
                  for s, a in splits.items() if a.top is not None and a.bottom is not None}
        if series:
            fig, ax = plt.subplots(figsize=(5.2, 3.6))
            plots.plot_eigenvalues(series, ax=ax, title="Extreme Hessian eigenvalues (Lanczos)")
            plots.save_figure(fig, folder / "eigenvalues.png")
            made.append(("eigenvalues.png", "The k largest (filled) and k smallest (open) "
                         "eigenvalues by rank; symmetric-log axis when they span decades."))
        train = splits["train"]
        if train.lines:
            eig_lines = [n for n in train.lines if n != "random"]
            panels = (["eigen"] if eig_lines else []) + ["random"]
            fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.4),
                                     squeeze=False)
            for ax, panel in zip(axes[0], panels):
                wanted = eig_lines if panel == "eigen" else ["random"]
                curves, quad, styles, cols = [], {}, {}, {}
                for ci, n in enumerate(wanted):
                    for s, a in splits.items():
                        if n not in a.lines:
                            continue
                        lab = f"{s}, {a.lines[n].labels[0]}"
                        curves.append((lab, a.lines[n]))
                        cols[lab] = f"C{ci}"
                        styles[lab] = "-" if s == "train" else "--"
                        if s == "train" and n in a.quadratic:
                            quad[lab] = a.quadratic[n]
                xlabel = (r"distance $a$ along the unit eigenvector (parameter units)"
                          if panel == "eigen" else
                          r"step $a$ along the filter-normalised direction (filter norms)")
                plots.plot_landscape_1d(curves, ax=ax, quadratic=quad, xlabel=xlabel,
                                        linestyles=styles, colors_=cols,
                                        title="Loss along Hessian eigenvectors" if panel == "eigen"
                                        else "Loss along a random direction (Li et al. 2018)")
            plots.save_figure(fig, folder / "landscape_1d.png")
            made.append(("landscape_1d.png", "Loss along lines through the analysed parameters: "
                         "left, the top and bottom Hessian eigenvectors with their quadratic "
                         "models (dotted); right, a filter-normalised random direction. Solid: "
                         "train, dashed: test."))
        for name in train.planes:
            fig, ax = plt.subplots(figsize=(4.8, 4.0))
            land = train.planes[name]
            unit = "parameter units" if name == "eigen" else "filter norms"
            plots.plot_landscape_2d(
                land, ax=ax,
                xlabel=f"{land.labels[0]} ({unit})", ylabel=f"{land.labels[1]} ({unit})",
                title=("Training loss, plane of the top two eigenvectors"
                       if name == "eigen" else "Training loss, random plane (filter-normalised)"))
            plots.save_figure(fig, folder / f"landscape_2d_{name}.png")
            made.append((f"landscape_2d_{name}.png",
                         "Training loss on a 2-D slice "
                         + ("spanned by the top two Hessian eigenvectors"
                            if name == "eigen" else "spanned by two filter-normalised random "
                            "directions") + "; log-spaced contour levels."))
    return made


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def _report(analysis: Analysis, summary: dict[str, Any], figures, tables, title: str) -> str:
    cfg = analysis.config
    lines = [f"# {title}", ""]
    info = analysis.info
    src = []
    for key, label in (("checkpoint", "checkpoint"), ("factory", "model"),
                       ("factory_kwargs", "model arguments"), ("data_spec", "data"),
                       ("loss_name", "loss")):
        if info.get(key) not in (None, {}, ""):
            value = info[key]
            text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            src.append(f"- {label}: `{text}`")
    meta = info.get("metadata") or {}
    if meta:
        keys = [k for k in ("optimizer", "step", "seed", "train_accuracy", "test_accuracy")
                if k in meta]
        hp = meta.get("hyperparameters")
        src.append("- training: " + ", ".join(f"{k} {_fmt(meta[k])}" for k in keys)
                   + (f"; hyperparameters `{json.dumps(hp)}`" if hp else ""))
    src.append(f"- {analysis.num_params} parameters, computed in {info.get('dtype')} on "
               f"{info.get('device')} in {analysis.timings.get('total', 0):.1f} s")
    lines += src + ["", "## Curvature", ""]
    names = list(analysis.splits)
    rows = [
        ("examples", "num_examples", ""),
        ("loss", "loss", ""),
        ("accuracy", "accuracy", ""),
        ("gradient norm", "grad_norm", ""),
        ("λ_max (Lanczos)", "lambda_max", "converged_largest"),
        ("λ_min (Lanczos)", "lambda_min", "converged_smallest"),
        ("\\|λ_min\\| / λ_max", "negative_ratio", ""),
        ("trace (Hutch++)", "trace", ""),
    ]
    per = {s: summary["splits"][s] for s in names}
    lines.append("| quantity | " + " | ".join(names) + " |")
    lines.append("| --- |" + " --- |" * len(names))
    for label, key, conv in rows:
        if not any(key in per[s] for s in names):
            continue
        cells = []
        for s in names:
            v = per[s].get(key)
            cell = _fmt(v)
            if key == "trace" and v is not None:
                cell = f"{v:.4g} ± {per[s]['trace_stderr']:.2g}"
            if conv and per[s].get(conv) is False:
                cell += " (not converged)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for s in names:
        sc = per[s]
        if "eigenvalues_largest" in sc:
            lines.append(f"- {s}: largest eigenvalues "
                         + ", ".join(_fmt(v) for v in sc["eigenvalues_largest"])
                         + "; smallest " + ", ".join(_fmt(v) for v in sc["eigenvalues_smallest"])
                         + f" (max residual {max(sc['residuals_largest'] + sc['residuals_smallest']):.2g})")
        if sc.get("warnings"):
            lines.append(f"- {s}: warnings: " + "; ".join(sc["warnings"]))
    lines += [
        "",
        f"Lanczos: k = {cfg.top_k} at each end, relative residual tolerance {cfg.tol:g}. "
        f"Hutch++: {cfg.trace_matvecs} products, error bar ± one standard error. "
        f"SLQ: {cfg.density_probes} Rademacher probes × {cfg.density_steps} Lanczos steps. "
        f"Seed {cfg.seed}. Products per quantity: `{json.dumps(summary.get('num_matvecs', {}))}`.",
        "",
    ]
    if figures:
        lines += ["## Figures", ""]
        for name, caption in figures:
            lines += [f"![{name}]({name})", "", f"*{caption}*", ""]
    lines += ["## Files", "", "- `summary.json` — every number above, per split"]
    lines += [f"- `{t}`" for t in tables]
    lines.append("")
    return "\n".join(lines)


def write_analysis(
    analysis: Analysis,
    out: str | os.PathLike,
    *,
    title: str = "Curvature analysis",
    figures: bool = True,
) -> Path:
    """Write ``summary.json``, CSV tables, PNG figures and ``report.md`` into ``out``
    (atomically: a temporary folder renamed over ``out`` at the end). Returns ``out``."""
    summary = analysis.summary()
    tables = _tables(analysis)
    out = Path(out)
    with atomic_directory(out) as tmp:
        _write_into(tmp, analysis, summary, tables, title, figures)
    return out


def _write_into(folder: Path, analysis: Analysis, summary, tables, title, figures=True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, df in tables.items():
        df.to_csv(folder / name, index=False)
    made = _figures(analysis, folder) if figures else []
    (folder / "report.md").write_text(_report(analysis, summary, made, tables, title))


# ------------------------------------------------------------------ checkpoints


def analyze_checkpoint(
    path: str | os.PathLike,
    *,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    data: Any = None,
    loss: str | None = None,
    max_examples: int | None = None,
    batch_size: int | None = 1024,
    test: bool = True,
    config: AnalysisConfig | None = None,
    log: Callable[[str], None] | None = None,
    source_name: str | None = None,
    **overrides: Any,
) -> Analysis:
    """Load a checkpoint (never executing code from it), rebuild its data and analyse it.

    Args:
        path: a checkpoint of :func:`curvature.checkpoint.save_checkpoint` or a bare
            state dict (then ``model`` is required).
        model, model_kwargs: model factory (``"package.module:function"`` or a zoo
            name) and its arguments, overriding the recorded ones.
        data: a dataset spec (default: the one recorded in the checkpoint).
        loss: ``"ce"`` or ``"mse"`` (default: recorded, else from the dataset's task).
        max_examples: analyse a seeded random subset of this many examples per split.
        batch_size: examples per batch in the Hessian products (``None``: one batch).
        test: also analyse the test split when the dataset has one.

    Under ``torch.distributed`` (e.g. ``torchrun``), every rank takes the examples
    ``rank::world_size`` of each split and the products, losses and landscapes are
    all-reduced, so every rank computes the single-process analysis.
        config, overrides: see :func:`analyze`.
        source_name: how the checkpoint is named in the summary and report (default:
            ``path`` as given).

    Raises:
        curvature.checkpoint.CheckpointError: bad checkpoint, unknown factory,
            mismatching state dict.
        InputError: no data spec, data that does not fit the model, bad options.
        ValueError: a bad data spec.
    """
    from curvature.checkpoint import load_checkpoint
    from curvature.data import batches, load_dataset

    config = config or AnalysisConfig()
    if overrides:
        config = AnalysisConfig(**{**asdict(config), **overrides})
    ckpt = load_checkpoint(path, model_factory=model, model_kwargs=model_kwargs,
                           map_location="cpu")
    spec = data if data is not None else ckpt.data_spec
    if spec is None:
        raise InputError(
            f"{path} records no dataset; name one with --data (e.g. --data digits)")
    ds = load_dataset(spec)
    loss_name = loss or (ckpt.metadata.get("loss") if ckpt.metadata.get("loss") in ("ce", "mse")
                         else None) or ("ce" if ds.task == "classification" else "mse")
    loss_fn = make_loss(loss_name)
    what = f"{ckpt.factory}(**{json.dumps(ckpt.factory_kwargs)})"
    check_data_fits(ckpt.model, loss_fn, ds.x_train, ds.y_train, what,
                    labels=torch.cat([ds.y_train, ds.y_test]))
    if max_examples is not None and (isinstance(max_examples, bool) or max_examples < 1):
        raise InputError(f"max_examples must be a positive integer, got {max_examples!r}")
    # the same seeded subset on every rank, then this rank's shard of it
    x, y = _shard(*_subsample(ds.x_train, ds.y_train, max_examples, config.seed))
    train_batches = batches(x, y, batch_size)
    test_batches = None
    if test and len(ds.x_test):
        xt, yt = _shard(*_subsample(ds.x_test, ds.y_test, max_examples, config.seed + 1))
        test_batches = batches(xt, yt, batch_size)
    info = {
        "checkpoint": source_name or str(path),
        "factory": ckpt.factory,
        "factory_kwargs": ckpt.factory_kwargs,
        "data_spec": ds.spec,
        "loss_name": loss_name,
        "bare_state_dict": ckpt.bare,
        "metadata": {k: v for k, v in ckpt.metadata.items() if k != "monitor_history"},
    }
    return analyze(ckpt.model, loss_fn, train_batches, test_data=test_batches, config=config,
                   info=info, log=log)


# ------------------------------------------------------------------ comparison


def _read_analysis(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    if not folder.is_dir():
        raise InputError(f"{str(folder)!r} is not a directory (expected an analysis folder)")
    if not path.is_file():
        raise InputError(f"{str(folder)!r} is not an analysis folder (no summary.json)")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(summary, dict) or "splits" not in summary:
        raise InputError(f"{path}: not a curvature analysis summary (no 'splits')")
    out: dict[str, Any] = {"summary": summary, "nodes": None}
    nodes = folder / "slq_nodes.csv"
    if nodes.is_file():
        out["nodes"] = pd.read_csv(nodes)
    lines = folder / "landscape_1d.csv"
    out["lines"] = pd.read_csv(lines) if lines.is_file() else None
    return out


def _label(folder: Path, summary: dict[str, Any]) -> str:
    opt = (summary.get("metadata") or {}).get("optimizer")
    return f"{folder.name}" if not opt or opt in folder.name else f"{folder.name} ({opt})"


def compare(
    folders: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    split: str = "train",
    title: str = "Curvature comparison",
) -> pd.DataFrame:
    """Overlay the spectra and tabulate the metrics of several analysis folders.

    Writes ``metrics.csv`` (one row per folder), ``spectra.png`` (SLQ densities on a
    common grid and Gaussian width, log density axis), ``eigenvalues.png`` and
    ``report.md`` into ``out`` (atomically). Returns the metrics table.

    Raises:
        InputError: a folder is not an analysis folder, or labels do not match.
    """
    import matplotlib.pyplot as plt

    from curvature import plots
    from curvature.density import SpectralDensity

    folders = [Path(f) for f in folders]
    if len(folders) < 1:
        raise InputError("compare needs at least one analysis folder")
    runs = [_read_analysis(f) for f in folders]
    if labels is None:
        labels = [_label(f, r["summary"]) for f, r in zip(folders, runs)]
    if len(labels) != len(folders):
        raise InputError(f"{len(labels)} labels for {len(folders)} folders")
    if len(set(labels)) != len(labels):
        labels = [f"{lab} [{i + 1}]" for i, lab in enumerate(labels)]
    rows, densities, series = [], {}, {}
    for lab, folder, run in zip(labels, folders, runs):
        s = run["summary"]
        sp = s["splits"].get(split) or s["splits"]["train"]
        meta = s.get("metadata") or {}
        row = {"run": lab, "folder": str(folder), "optimizer": meta.get("optimizer"),
               "num_params": s.get("num_params")}
        for key in ("loss", "accuracy", "lambda_max", "lambda_min", "negative_ratio", "trace",
                    "trace_stderr", "grad_norm"):
            row[key] = sp.get(key)
        test = s["splits"].get("test") or {}
        for key in ("loss", "accuracy", "lambda_max", "trace"):
            row[f"test_{key}"] = test.get(key)
        rows.append(row)
        nodes = run["nodes"]
        if nodes is not None and (nodes["split"] == split).any():
            nd = nodes[nodes["split"] == split]
            P = int(nd["probe"].max()) + 1
            N = nd["node"].to_numpy(dtype=np.float64, copy=True).reshape(P, -1)
            W = nd["weight"].to_numpy(dtype=np.float64, copy=True).reshape(P, -1)
            densities[lab] = SpectralDensity(nodes=torch.as_tensor(N), weights=torch.as_tensor(W),
                                             num_matvecs=N.size, dim=int(s.get("num_params") or 0))
        if "eigenvalues_largest" in sp:
            series[lab] = {"largest": sp["eigenvalues_largest"],
                           "smallest": sp.get("eigenvalues_smallest", [])}
    table = pd.DataFrame(rows)
    # folders relative to the report, so the links survive moving the whole tree
    table["folder"] = [os.path.relpath(Path(f).absolute(), Path(out).absolute())
                       for f in folders]
    with atomic_directory(out) as tmp:
        table.to_csv(tmp / "metrics.csv", index=False)
        figs = []
        with plots.style():
            if densities:
                fig, ax = plt.subplots(figsize=(6.4, 4.0))
                eigs = {lab: list(series.get(lab, {}).get("largest", []))
                        + list(series.get(lab, {}).get("smallest", [])) for lab in densities}
                plots.plot_density(densities, eigenvalues=eigs, ax=ax,
                                   title=f"Hessian spectral densities ({split} data)")
                plots.save_figure(fig, tmp / "spectra.png")
                figs.append(("spectra.png", "SLQ spectral densities on a common grid and "
                             "Gaussian width (log density axis); dashed/dotted lines mark each "
                             "run's largest/smallest Lanczos eigenvalue."))
            if series:
                fig, ax = plt.subplots(figsize=(5.4, 3.8))
                plots.plot_eigenvalues(series, ax=ax, title=f"Extreme eigenvalues ({split} data)")
                plots.save_figure(fig, tmp / "eigenvalues.png")
                figs.append(("eigenvalues.png", "Top-k (filled) and bottom-k (open) Lanczos "
                             "eigenvalues of each run."))
            panels = [(d, t) for d, t in (
                ("v_max", "along each run's top eigenvector (parameter units)"),
                ("random", "along a filter-normalised random direction (filter norms)"))
                if any(r["lines"] is not None and ((r["lines"]["direction"] == d)
                       & (r["lines"]["split"] == split)).any() for r in runs)]
            if panels:
                fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.6),
                                         squeeze=False)
                for ax, (d, xlabel) in zip(axes[0], panels):
                    for i, (lab, run) in enumerate(zip(labels, runs)):
                        df = run["lines"]
                        if df is None:
                            continue
                        df = df[(df["direction"] == d) & (df["split"] == split)]
                        if len(df):
                            ax.plot(df["alpha"], df["loss"], color=f"C{i}", label=lab)
                    ax.axvline(0.0, color="0.5", lw=0.6)
                    ax.set_yscale("log")
                    ax.set_xlabel(f"step $a$ {xlabel}")
                    ax.set_ylabel(f"{split} loss (log scale)")
                    ax.set_title("Loss " + xlabel.split(" (")[0])
                    ax.legend(frameon=False, fontsize=7)
                plots.save_figure(fig, tmp / "landscapes.png")
                figs.append(("landscapes.png", "Loss along each run's own top Hessian "
                             "eigenvector and along a filter-normalised random direction."))
            metric_cols = [c for c in ("lambda_max", "trace", "negative_ratio", "loss",
                                       "test_loss", "test_accuracy")
                           if table[c].notna().any()]
            if len(rows) > 1 and metric_cols:
                mat = table[metric_cols].to_numpy(dtype=np.float64)
                ref = np.nanmax(np.abs(mat), axis=0)
                ref[~(ref > 0)] = 1.0
                fig, ax = plt.subplots(figsize=(1.6 + 1.0 * len(metric_cols), 1.2 + 0.5 * len(rows)))
                text = [[_fmt(float(v), 3) if np.isfinite(v) else "–" for v in row]
                        for row in mat]
                plots.plot_heatmap(mat / ref, labels, metric_cols, ax=ax, log=False,
                                   cbar_label="value / column max |value|", cell_text=text,
                                   title="Metrics relative to the largest run")
                plots.save_figure(fig, tmp / "metrics.png")
                figs.append(("metrics.png", "Metrics of each run (cells: values; colours: "
                             "value divided by the column's largest magnitude)."))
        (tmp / "report.md").write_text(_compare_report(table, figs, title, split))
    return table


def _compare_report(table: pd.DataFrame, figs, title: str, split: str) -> str:
    cols = [("run", "run"), ("optimizer", "optimizer"), ("lambda_max", "λ_max"),
            ("lambda_min", "λ_min"), ("trace", "trace"), ("loss", f"{split} loss"),
            ("accuracy", f"{split} accuracy"), ("test_loss", "test loss"),
            ("test_accuracy", "test accuracy")]
    cols = [(k, h) for k, h in cols if k in table and table[k].notna().any()]
    lines = [f"# {title}", "", "| " + " | ".join(h for _, h in cols) + " |",
             "|" + " --- |" * len(cols)]
    for _, r in table.iterrows():
        cells = []
        for k, _ in cols:
            v = r[k]
            if k == "trace" and pd.notna(r.get("trace_stderr")):
                cells.append(f"{v:.4g} ± {r['trace_stderr']:.2g}")
            else:
                cells.append(_fmt(v.item() if hasattr(v, "item") else v))
        lines.append("| " + " | ".join(cells) + " |")
    if "lambda_max" in table and table["lambda_max"].notna().sum() >= 2:
        lm = table["lambda_max"].astype(float)
        lo, hi = int(lm.idxmin()), int(lm.idxmax())
        lines += ["", f"Flattest (smallest λ_max): **{table.loc[lo, 'run']}**, "
                  f"{lm[hi] / lm[lo]:.3g}× smaller λ_max than {table.loc[hi, 'run']}."]
    lines += [""]
    for name, caption in figs:
        lines += [f"![{name}]({name})", "", f"*{caption}*", ""]
    lines += ["Source folders (relative to this report):", ""]
    lines += [f"- [{f}]({f}/report.md)" for f in table["folder"]] + [""]
    lines += ["Files: `metrics.csv`" + "".join(f", `{n}`" for n, _ in figs), ""]
    return "\n".join(lines)
