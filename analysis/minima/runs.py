"""Training runs of the minima study: learning-rate selection on a validation split, then
seeded runs measured at a fixed budget and when they first reach a target training loss.

A seed fixes both the initial weights (``torch.manual_seed(seed)`` before the model is
built) and the order of the mini-batches (a permutation per epoch from a generator seeded
with ``seed``), so run ``i`` of two optimizers starts from the same weights and sees the
same batches: the runs are paired by seed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

import curvature as cv
from analysis.minima.config import OPTIMIZERS, Settings, Workload, lr_grid
from curvature.sharpness import adaptive_sharpness
from curvature.train import evaluate, make_optimizer

Split = tuple[Tensor, Tensor]


def validation_split(ds: cv.Dataset, fraction: float) -> tuple[Split, Split]:
    """The training set cut into (sub-train, validation): the last ``fraction`` of a fixed
    permutation (generator seed 12345) is the validation split."""
    n = len(ds.x_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(12345))
    n_val = int(round(fraction * n))
    tr, va = perm[: n - n_val], perm[n - n_val:]
    return (ds.x_train[tr], ds.y_train[tr]), (ds.x_train[va], ds.y_train[va])


def _optimizer(label: str, model: nn.Module, lr: float, seed: int):
    name, kw = OPTIMIZERS[label]
    extra = dict(kw.get("optimizer_kwargs", {}))
    if name in ("adahessian", "diag-hessian-sgd"):
        extra["seed"] = seed  # their Rademacher probes
    return make_optimizer(name, model, lr=lr, rho=kw.get("rho"), extra=extra)


def train_run(wl: Workload, train: Split, label: str, lr: float, seed: int, epochs: float,
              on_target=None, target: float | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train a fresh model (init from ``seed``) on ``train`` for ``epochs`` passes.

    ``on_target(model, step)`` is called once, the first time the whole-training-set loss
    (checked every ``wl.check_every`` epochs) is ``<= target`` (default
    ``wl.target_loss``).

    Returns ``(model, info)``: ``info`` has ``status`` (``"ok"`` or ``"diverged: ..."``),
    ``steps`` and ``steps_to_target`` (NaN when never reached).
    """
    target = wl.target_loss if target is None else target
    torch.manual_seed(seed)
    model = cv.build_model(wl.model, **wl.model_kwargs)
    opt, create_graph, _ = _optimizer(label, model, lr, seed)
    loss_fn = nn.CrossEntropyLoss()
    x, y = train
    n = len(x)
    per_epoch = math.ceil(n / wl.batch_size)
    total = max(1, math.ceil(epochs * per_epoch))
    check = max(1, round(wl.check_every * per_epoch))
    gen = torch.Generator().manual_seed(int(seed))
    info: dict[str, Any] = {"status": "ok", "steps": total, "steps_to_target": math.nan}
    step = 0
    model.train()
    while step < total:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, wl.batch_size):
            idx = perm[i:i + wl.batch_size]
            xb, yb = x[idx], y[idx]

            def closure(xb=xb, yb=yb) -> Tensor:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward(create_graph=create_graph)
                return loss

            loss = opt.step(closure)
            step += 1
            if not math.isfinite(float(loss.detach())):
                info.update(status=f"diverged at step {step}", steps=step)
                return model, info
            if on_target is not None and math.isnan(info["steps_to_target"]) and (
                    step % check == 0 or step == total):
                if evaluate(model, loss_fn, x, y)["loss"] <= target:
                    info["steps_to_target"] = step
                    on_target(model, step)
                    model.train()
            if step >= total:
                break
    for p in model.parameters():
        p.grad = None
    model.eval()
    return model, info


def measure(model: nn.Module, train: Split, test: Split, cfg: Settings,
            seed: int, examples: int | None = None) -> dict[str, Any]:
    """Loss/accuracy on both splits; ``lambda_max`` (Lanczos) of the loss Hessian on the
    first ``examples`` (default ``cfg.hessian_examples``) training and test examples, ``Tr(H)`` (Hutch++) on the
    training ones, and the adaptive worst-case and average-case sharpness
    (:mod:`curvature.sharpness`) on the same training examples."""
    loss_fn = nn.CrossEntropyLoss()
    row: dict[str, Any] = {}
    for split, (x, y) in (("train", train), ("test", test)):
        for k, v in evaluate(model, loss_fn, x, y).items():
            row[f"{split}_{k}"] = float(v)
    nex = examples or cfg.hessian_examples
    for split, (x, y) in (("train", train), ("test", test)):
        op = cv.HessianOperator(model, loss_fn, (x[:nex], y[:nex]))
        eig = cv.eigenvalues(op, k=1, tol=cfg.tol, seed=seed)
        row[f"lambda_max_{split}"] = float(eig.values[0])
        row[f"lambda_residual_{split}"] = float(eig.residuals[0])
        row[f"lambda_converged_{split}"] = bool(eig.converged)
        if split == "train":
            tr = cv.trace(op, num_matvecs=cfg.trace_matvecs, seed=seed)
            row["trace_train"] = float(tr.estimate)
            row["trace_stderr_train"] = float(tr.stderr)
    batch = (train[0][:nex], train[1][:nex])
    worst = adaptive_sharpness(model, loss_fn, batch, rho=cfg.sharp_rho_worst, kind="worst",
                               steps=cfg.sharp_steps, seed=seed)
    avg = adaptive_sharpness(model, loss_fn, batch, rho=cfg.sharp_rho_avg, kind="average",
                             samples=cfg.sharp_samples, seed=seed)
    row["asharp_worst"] = worst.value
    row["asharp_avg"] = avg.value
    row["asharp_avg_stderr"] = avg.stderr
    return row


def select_lr(wl_name: str, wl: Workload, ds: cv.Dataset, label: str,
              cfg: Settings) -> list[dict[str, Any]]:
    """Train ``label`` at every value of ``lr_grid(label, wl)`` on the sub-training split
    (seeds ``1000 + s``, ``s < cfg.lr_seeds``) for the full budget; one row per (lr, seed)
    with the validation accuracy and loss (NaN if diverged)."""
    sub, val = validation_split(ds, cfg.val_fraction)
    loss_fn = nn.CrossEntropyLoss()
    rows = []
    for lr in lr_grid(label, wl):
        for s in range(cfg.lr_seeds):
            model, info = train_run(wl, sub, label, lr, 1000 + s, wl.epochs * cfg.epochs_scale)
            row = {"workload": wl_name, "optimizer": label, "lr": lr, "seed": 1000 + s,
                   "status": info["status"], "val_accuracy": math.nan, "val_loss": math.nan}
            if info["status"] == "ok":
                ev = evaluate(model, loss_fn, *val)
                row.update(val_accuracy=float(ev["accuracy"]), val_loss=float(ev["loss"]))
            rows.append(row)
    return rows


def chosen_lr(rows: list[dict[str, Any]]) -> float:
    """The grid value with the highest mean validation accuracy (ties: lower mean
    validation loss; diverged runs count as accuracy 0)."""
    by: dict[float, list[tuple[float, float]]] = {}
    for r in rows:
        acc = r["val_accuracy"] if math.isfinite(r["val_accuracy"]) else 0.0
        loss = r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf
        by.setdefault(float(r["lr"]), []).append((acc, loss))
    score = {lr: (sum(a for a, _ in v) / len(v), -sum(b for _, b in v) / len(v))
             for lr, v in by.items()}
    return max(score, key=lambda lr: score[lr])


def final_runs(wl_name: str, wl: Workload, ds: cv.Dataset, label: str, lr: float,
               seed: int, cfg: Settings) -> list[dict[str, Any]]:
    """One seeded run on the whole training set at the chosen ``lr``: two rows, the
    measurements at the first check with training loss <= the target (``point =
    "equal_loss"``) and at the end of the budget (``point = "budget"``)."""
    train, test = (ds.x_train, ds.y_train), (ds.x_test, ds.y_test)
    base = {"workload": wl_name, "optimizer": label, "seed": seed, "lr": lr}
    at_target: dict[str, Any] = {}

    def on_target(model: nn.Module, step: int) -> None:
        at_target.update(measure(model, train, test, cfg, seed, wl.hessian_examples), steps=step)

    model, info = train_run(wl, train, label, lr, seed, wl.epochs * cfg.epochs_scale,
                            on_target=on_target, target=wl.target_loss * cfg.target_scale)
    rows = []
    end = {"steps": info["steps"]}
    if info["status"] == "ok":
        end.update(measure(model, train, test, cfg, seed, wl.hessian_examples))
    rows.append({**base, "point": "budget", "status": info["status"], **end,
                 "steps_to_target": info["steps_to_target"]})
    status = "ok" if at_target else "target not reached"
    rows.append({**base, "point": "equal_loss", "status": status, **at_target,
                 "steps_to_target": info["steps_to_target"]})
    return rows
