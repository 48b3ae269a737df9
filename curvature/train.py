"""A small training loop: any optimizer of :mod:`curvature.optim` or ``torch.optim``,
checkpoints at chosen steps, optional curvature monitoring.

Used by ``curvature train`` and ``curvature demo``. Every optimizer is stepped with
the closure protocol (``opt.step(closure)``), which all torch optimizers accept and
the two-gradient methods (SAM family) need; methods that differentiate the gradient
(AdaHessian, IRE, SGDHess, DiagHessianSGD) get a closure that calls
``backward(create_graph=True)``.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from curvature.checkpoint import save_checkpoint
from curvature.data import Dataset, loader
from curvature.data_loop import DataLoop
from curvature.errors import NonFiniteLossError
from curvature.inputs import make_loss

__all__ = [
    "OPTIMIZERS",
    "TrainResult",
    "evaluate",
    "make_optimizer",
    "train",
]

# name -> (class path, wraps a base optimizer, needs create_graph, fixed kwargs)
OPTIMIZERS: dict[str, tuple[str, bool, bool, dict[str, Any]]] = {
    "sgd": ("torch.optim:SGD", False, False, {}),
    "momentum": ("torch.optim:SGD", False, False, {"momentum": 0.9}),
    "nesterov": ("torch.optim:SGD", False, False, {"momentum": 0.9, "nesterov": True}),
    "adam": ("torch.optim:Adam", False, False, {}),
    "adamw": ("torch.optim:AdamW", False, False, {}),
    "sam": ("curvature.optim:SAM", True, False, {}),
    "asam": ("curvature.optim:SAM", True, False, {"adaptive": True}),
    "alpha-sam": ("curvature.optim:AlphaSAM", True, False, {}),
    "accelerated-sam": ("curvature.optim:AcceleratedSAM", False, False, {}),
    "forward-sam": ("curvature.optim:ForwardSAM", False, False, {}),
    "sa-sam": ("curvature.optim:SASAM", False, False, {}),
    "sa-sgd": ("curvature.optim:SASGD", False, False, {}),
    "sam-inf": ("curvature.optim:SAM", True, False, {"p": float("inf")}),
    "saddam": ("curvature.optim:Saddam", True, False, {}),
    "sgdhess": ("curvature.optim:SGDHess", False, True, {}),
    "extended-sgdhess": ("curvature.optim:ExtendedSGDHess", False, False, {}),
    "diag-hessian-sgd": ("curvature.optim:DiagHessianSGD", False, True, {}),
    "adahessian": ("curvature.optim:AdaHessian", False, True, {}),
    "ire": ("curvature.optim:IRE", True, True, {}),
}
"""Optimizer names of :func:`make_optimizer`. Any other ``torch.optim`` class name
(case-insensitive, e.g. ``rmsprop``, ``adagrad``) is accepted too. Wrapping methods
(SAM, ASAM, SAM with the sign (p = inf) ascent, alpha-SAM, Saddam, IRE) wrap
``torch.optim.SGD`` by default (``--base-optimizer adam`` makes Saddam SAM + Adam)."""


def _resolve(path: str) -> type:
    module, name = path.split(":")
    return getattr(__import__(module, fromlist=[name]), name)


def _torch_optimizer(name: str) -> type | None:
    for attr in dir(torch.optim):
        obj = getattr(torch.optim, attr)
        if (attr.lower() == name.lower() and isinstance(obj, type)
                and issubclass(obj, torch.optim.Optimizer)):
            return obj
    return None


def _accepted(cls: type, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


def make_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float = 0.1,
    momentum: float | None = None,
    rho: float | None = None,
    weight_decay: float = 0.0,
    base: str = "sgd",
    extra: Mapping[str, Any] | None = None,
) -> tuple[torch.optim.Optimizer, bool, dict[str, Any]]:
    """Build an optimizer for ``model``'s trainable parameters by name.

    Args:
        name: a key of :data:`OPTIMIZERS` or a ``torch.optim`` class name.
        lr, momentum, rho, weight_decay: hyperparameters, passed to the optimizer (or,
            for wrapping methods, to the base optimizer) where its signature takes
            them; ``momentum=None`` keeps the method's default.
        base: base optimizer of wrapping methods (a ``torch.optim`` class name).
        extra: further keyword arguments (``--optimizer-kwargs``), passed unchanged.

    Returns:
        ``(optimizer, needs_create_graph, hyperparameters)`` -- the last is what was
        passed, for the checkpoint metadata.

    Raises:
        ValueError: unknown name, or arguments the optimizer rejects.
    """
    key = name.lower()
    hyper: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if momentum is not None:
        hyper["momentum"] = momentum
    if key in OPTIMIZERS:
        path, wraps, create_graph, fixed = OPTIMIZERS[key]
        cls = _resolve(path)
    else:
        cls = _torch_optimizer(key)
        if cls is None:
            raise ValueError(
                f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)} or a "
                f"torch.optim class name"
            )
        wraps, create_graph, fixed = False, False, {}
    hyper.update(fixed)
    params = [p for p in model.parameters() if p.requires_grad]
    sig = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {}
    if rho is not None and "rho" in sig:
        kwargs["rho"] = rho
    if "model" in sig:
        kwargs["model"] = model  # SAM-type methods freeze BatchNorm statistics at w + e
    try:
        if wraps:
            base_cls = _torch_optimizer(base)
            if base_cls is None:
                raise ValueError(f"unknown base optimizer {base!r} (a torch.optim class name)")
            base_kw = _accepted(base_cls, hyper)
            for k, v in fixed.items():  # the wrapper's own fixed options (adaptive, p)
                if k in sig:
                    kwargs[k] = v
                    base_kw.pop(k, None)
            opt = cls(params, base_cls, **kwargs, **base_kw, **dict(extra or {}))
            recorded = {**base_kw, **{k: v for k, v in kwargs.items() if k != "model"},
                        "base_optimizer": base_cls.__name__}
        else:
            own = _accepted(cls, hyper)
            opt = cls(params, **own, **kwargs, **dict(extra or {}))
            recorded = {**own, **{k: v for k, v in kwargs.items() if k != "model"}}
    except TypeError as e:
        raise ValueError(f"optimizer {name!r} rejects its arguments: {e}") from None
    recorded.update(dict(extra or {}))
    return opt, create_graph, recorded


@torch.no_grad()
def evaluate(
    model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
    batch_size: int = 2048,
) -> dict[str, float]:
    """Mean loss and (for integer targets) accuracy of ``model`` on ``(x, y)``, in eval
    mode; the train/eval flags of every submodule are restored. Batches of
    ``batch_size`` are streamed to the model's device (:class:`~curvature.data_loop.DataLoop`)."""
    if len(x) == 0:
        return {"loss": math.nan, "accuracy": math.nan}
    device = next(model.parameters()).device
    classify = not y.is_floating_point()

    def step(_: int, batch: Any) -> tuple[Tensor, None]:
        xb, yb = batch
        out = model(xb)
        loss = loss_fn(out, yb).detach().to(torch.float64).reshape(1)
        if not classify:
            return loss, None
        return torch.cat([loss, (out.argmax(-1) == yb).sum().reshape(1).to(torch.float64) / len(xb)]), None

    batches = ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size))
    total = torch.zeros(2 if classify else 1, dtype=torch.float64, device=device)
    means = DataLoop(batches, device=device, model=model).accumulate(step, total).tolist()
    out = {"loss": means[0]}
    if classify:
        out["accuracy"] = means[1]
    return out


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        model: the trained model (eval mode).
        history: one row per step: ``step``, ``epoch``, ``loss`` (the mini-batch loss
            the optimizer saw), ``time_s``; plus the optimizer's scalar estimates.
        evaluations: one row per checkpoint: ``step`` and train/test loss/accuracy.
        checkpoints: paths written (``step_XXXXXX.pt`` and ``final.pt``).
        monitor_history: the curvature monitor's history (``None`` if not run).
        metadata: the metadata written into the final checkpoint.
        monitor: the :class:`curvature.CurvatureMonitor` (``None`` if not run).
    """

    model: nn.Module
    history: pd.DataFrame
    evaluations: pd.DataFrame
    checkpoints: list[Path] = field(default_factory=list)
    monitor_history: pd.DataFrame | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    monitor: Any = None


def train(
    model: nn.Module,
    data: Dataset,
    *,
    optimizer: str = "sgd",
    lr: float = 0.1,
    momentum: float | None = None,
    rho: float | None = None,
    weight_decay: float = 0.0,
    base_optimizer: str = "sgd",
    optimizer_kwargs: Mapping[str, Any] | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = 64,
    seed: int = 0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    loss_name: str | None = None,
    out: str | Path | None = None,
    save_at: Sequence[int] = (),
    factory: str | None = None,
    factory_kwargs: Mapping[str, Any] | None = None,
    monitor_every: int | None = None,
    monitor_examples: int = 512,
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.x_train`` with mini-batches and write checkpoints.

    Args:
        model: the network (trained in place, moved to ``device``).
        data: a :class:`curvature.data.Dataset`.
        optimizer, lr, momentum, rho, weight_decay, base_optimizer, optimizer_kwargs:
            see :func:`make_optimizer`.
        steps: number of optimizer steps; or ``epochs`` (passes over the training set,
            ``steps = ceil(epochs * N / batch_size)``). Default: 1 epoch.
        batch_size: mini-batch size (batches reshuffled every epoch from ``seed``).
        seed: seeds the batch order (the caller seeds the model's initialisation).
        loss_fn, loss_name: the loss and its name (``"ce"``/``"mse"``), recorded in the
            checkpoints; by default ``make_loss(loss_name)``, and ``loss_name`` defaults to
            ``"ce"`` for classification data and ``"mse"`` for regression.
        out: directory for checkpoints ``step_XXXXXX.pt`` (at every step in ``save_at``)
            and ``final.pt``; ``None`` writes nothing.
        factory, factory_kwargs: recorded in the checkpoints (required with ``out``).
        monitor_every: probe a :class:`curvature.CurvatureMonitor` every this many
            steps on the first ``monitor_examples`` training examples (skipped with a
            message when the monitor is not available).
        device: where to train.
        progress: tqdm bar on stderr.
        log: receives one-line messages (default: silent).

    Returns:
        :class:`TrainResult`.
    """
    log = log or (lambda _msg: None)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(data.x_train)
    per_epoch = math.ceil(n / batch_size)
    if steps is None:
        steps = math.ceil((1.0 if epochs is None else float(epochs)) * per_epoch)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    save_at = sorted({int(s) for s in save_at})
    bad = [s for s in save_at if not 1 <= s <= steps]
    if bad:
        raise ValueError(f"--save-at steps {bad} are outside 1..{steps}")
    if out is not None and factory is None:
        raise ValueError("train(out=...) needs the model factory to record in the checkpoints")
    device = torch.device(device) if device is not None else torch.device("cpu")
    model.to(device)
    loss_name = loss_name or ("ce" if data.task == "classification" else "mse")
    loss_fn = loss_fn or make_loss(loss_name)
    opt, create_graph, hyper = make_optimizer(
        optimizer, model, lr=lr, momentum=momentum, rho=rho, weight_decay=weight_decay,
        base=base_optimizer, extra=optimizer_kwargs,
    )
    monitor = _make_monitor(model, loss_fn, data, opt, monitor_every, monitor_examples, log)
    batches = loader(data.x_train, data.y_train, batch_size, shuffle=True, seed=seed)

    rows: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    written: list[Path] = []
    meta_base = {
        "optimizer": optimizer,
        "hyperparameters": hyper,
        "seed": seed,
        "batch_size": batch_size,
        "steps": steps,
        "loss": loss_name,
    }

    def checkpoint(step: int, name: str) -> dict[str, Any]:
        metrics = {"step": step, "epoch": step / per_epoch}
        for split, (x, y) in (("train", (data.x_train, data.y_train)),
                              ("test", (data.x_test, data.y_test))):
            if len(x):
                for k, v in evaluate(model, loss_fn, x, y).items():
                    metrics[f"{split}_{k}"] = v
        evals.append(metrics)
        meta = {**meta_base, **metrics}
        if monitor is not None and name == "final.pt":
            meta["monitor_history"] = _records(monitor.history)
        if out is not None:
            written.append(save_checkpoint(
                Path(out) / name, model, factory=factory, factory_kwargs=factory_kwargs,
                data_spec=data.spec, metadata=meta,
            ))
        return meta

    model.train()
    start = time.perf_counter()
    step = 0
    bar = tqdm(total=steps, desc=f"train ({optimizer})", disable=not progress, leave=False)
    meta: dict[str, Any] = {}
    while step < steps:
        for x, y in batches:
            x, y = x.to(device), y.to(device)

            def closure(x=x, y=y) -> Tensor:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward(create_graph=create_graph)
                return loss

            loss = opt.step(closure)
            step += 1
            loss_value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
            if not math.isfinite(loss_value):
                bar.close()
                raise NonFiniteLossError(
                    f"training diverged: the loss is {loss_value} at step {step} "
                    f"(optimizer {optimizer}, lr {lr}); lower the learning rate"
                )
            row = {"step": step, "epoch": step / per_epoch, "loss": loss_value,
                   "time_s": time.perf_counter() - start}
            for k, v in (getattr(opt, "estimates", None) or {}).items():
                if isinstance(v, (int, float)):
                    row[k] = float(v)
            rows.append(row)
            if monitor is not None:
                monitor.step(step, (x, y))
            if step in save_at:
                checkpoint(step, f"step_{step:06d}.pt")
                model.train()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if step >= steps:
                break
    bar.close()
    meta = checkpoint(step, "final.pt")
    model.eval()
    log(
        f"trained {optimizer} for {steps} steps in {time.perf_counter() - start:.1f} s: "
        + ", ".join(f"{k} {meta[k]:.4g}" for k in
                    ("train_loss", "train_accuracy", "test_loss", "test_accuracy") if k in meta)
    )
    return TrainResult(
        model=model,
        history=pd.DataFrame(rows),
        evaluations=pd.DataFrame(evals),
        checkpoints=written,
        monitor_history=None if monitor is None else monitor.history,
        metadata=meta,
        monitor=monitor,
    )


def _records(df: Any) -> list[dict[str, Any]]:
    """A DataFrame as JSON-able records (NaN kept as float)."""
    out = []
    for rec in df.to_dict("records"):
        out.append({str(k): (float(v) if isinstance(v, (int, float)) else str(v))
                    for k, v in rec.items()})
    return out


def _make_monitor(model, loss_fn, data, opt, every, examples, log):
    """A :class:`curvature.CurvatureMonitor` on the first ``examples`` training examples, or ``None``.

    Vector estimates are compared on the optimizer's batch only: their probe-set
    truth (an exact diagonal on ``examples`` inputs) costs one product per parameter.
    """
    if not every:
        return None
    from curvature.monitor import CurvatureMonitor

    probe = (data.x_train[:examples], data.y_train[:examples])
    return CurvatureMonitor(
        model, loss_fn, probe, optimizer=opt, every=int(every), vector_truth_full=False
    )
