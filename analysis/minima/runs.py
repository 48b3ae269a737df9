"""Training runs of the minima study and the measurements of each minimum."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import curvature as cv
from analysis.harness.measures import curvature_metrics
from analysis.harness.timing import Timer
from analysis.minima.config import OPTIMIZERS, WORKLOADS, Settings, Workload
from curvature.landscape import loss_landscape_1d, loss_landscape_2d, symmetric_grid
from curvature.train import train


def run_one(wl_name: str, wl: Workload, ds: cv.Dataset, opt_label: str, seed: int,
            cfg: Settings, extras: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train one (workload, optimizer, seed) and measure its minimum.

    Returns the CSV row and (when ``extras``) the density / eigenvectors / model."""
    name, kw = OPTIMIZERS[opt_label]
    torch.manual_seed(seed)
    model = cv.build_model(wl.model, **wl.model_kwargs)
    row: dict[str, Any] = {"workload": wl_name, "optimizer": opt_label, "seed": seed}
    timer = Timer()
    epochs = max(wl.epochs * cfg.epochs_scale, 1 / 8)
    try:
        res = train(model, ds, optimizer=name, epochs=epochs, batch_size=wl.batch_size,
                    seed=seed, progress=False, **kw)
    except FloatingPointError as e:
        row.update(status=f"diverged: {e}", train_time_s=timer.elapsed)
        return row, {}
    row["train_time_s"] = timer.elapsed
    row["steps"] = int(res.history["step"].iloc[-1])
    for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        row[k] = float(res.metadata[k])
    loss_fn = ds.loss_fn()
    timer = Timer()
    extra: dict[str, Any] = {}
    nex = wl.hessian_examples or cfg.hessian_examples
    for split, (x, y) in (("train", (ds.x_train, ds.y_train)), ("test", (ds.x_test, ds.y_test))):
        m = curvature_metrics(model, loss_fn, x, y, max_examples=nex,
                              tol=cfg.tol, trace_matvecs=cfg.trace_matvecs,
                              k=2 if (extras and split == "train") else 1, seed=seed,
                              progress=cfg.progress)
        row[f"lambda_max_{split}"] = m["lambda_max"]
        row[f"lambda_residual_{split}"] = m["lambda_max_residual"]
        row[f"lambda_converged_{split}"] = m["lambda_converged"]
        row[f"trace_{split}"] = m["trace"]
        row[f"trace_stderr_{split}"] = m["trace_stderr"]
        if extras and split == "train":
            extra["eig"] = m["_eig"]
            extra["density"] = cv.spectral_density(
                m["_op"], num_steps=cfg.density_steps, num_probes=cfg.density_probes,
                seed=seed, progress=cfg.progress)
            extra["model"] = model
            extra["data"] = (x[:nex], y[:nex])
    row["curvature_time_s"] = timer.elapsed
    row["status"] = "ok"
    return row, extra


def landscapes(wl_name: str, extras: dict[str, dict[str, Any]], loss_fn, cfg: Settings):
    """1-D loss along each optimizer's top eigenvector (common range) and 2-D planes."""
    lams = [float(e["eig"].values[0]) for e in extras.values()]
    lam_ref = float(np.median([v for v in lams if v > 0])) if any(v > 0 for v in lams) else 1.0
    radius = 1.5 * math.sqrt(2.0 / lam_ref)  # quadratic rise ~2.25 at the median curvature
    alphas = symmetric_grid(radius, cfg.landscape_points)
    rows, lines, planes = [], {}, {}
    for label, e in extras.items():
        v1 = e["eig"].vectors[:, 0]
        land = loss_landscape_1d(e["model"], loss_fn, e["data"], v1, alphas,
                                 label=f"{label} v1")
        lines[label] = (land, float(e["eig"].values[0]))
        for a, loss in zip(land.coords[0].tolist(), land.loss.tolist()):
            rows.append({"workload": wl_name, "optimizer": label, "direction": "v1",
                         "alpha": a, "loss": loss})
        if label in cfg.landscape_2d and e["eig"].vectors.shape[1] > 1:
            grid2 = symmetric_grid(radius, cfg.landscape_2d_points)
            planes[label] = loss_landscape_2d(
                e["model"], loss_fn, e["data"], (v1, e["eig"].vectors[:, 1]), grid2,
                labels=("v1", "v2"))
    return pd.DataFrame(rows), lines, planes, radius


def sa_diagnostic(out: Path, cfg: Settings, seed: int = 0) -> pd.DataFrame:
    """Step size ``eta_t`` (``opt.step_size``) and mini-batch loss of SA-SGD and SA-SAM on
    digits-mlp, step by step (same data, model, batch size and epochs as the main runs)."""
    from curvature.data import loader
    from curvature.optim import SASAM, SASGD

    wl = WORKLOADS["digits-mlp"]
    ds = cv.load_dataset(wl.data)
    loss_fn = ds.loss_fn()
    epochs = max(1, int(wl.epochs * cfg.epochs_scale))
    rows = []
    for label, cls in (("SA-SGD", SASGD), ("SA-SAM", SASAM)):
        torch.manual_seed(seed)
        model = cv.build_model(wl.model, **wl.model_kwargs)
        opt = cls(model.parameters(), lr=OPTIMIZERS[label][1]["lr"], model=model)
        batches = loader(ds.x_train, ds.y_train, wl.batch_size, shuffle=True, seed=seed)
        step = 0
        for _ in range(epochs):
            for x, y in batches:
                def closure(x=x, y=y, opt=opt, model=model):
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model(x), y)
                    loss.backward()
                    return loss

                loss = float(opt.step(closure).detach())
                step += 1
                rows.append({"optimizer": label, "step": step, "eta": opt.step_size,
                             "rho": math.sqrt(opt.step_size) if label == "SA-SAM" else math.nan,
                             "batch_loss": loss})
                if not math.isfinite(loss):
                    break
            if rows and not math.isfinite(rows[-1]["batch_loss"]):
                break
    df = pd.DataFrame(rows)
    df.to_csv(out / "sa_step_size.csv", index=False)
    return df

