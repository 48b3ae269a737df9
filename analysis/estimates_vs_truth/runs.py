"""One monitored training run per (workload, optimizer)."""

from __future__ import annotations

import math

import pandas as pd
import torch

import curvature as cv
from analysis.estimates_vs_truth.config import CALIBRATE, OPTIMIZERS, Workload
from analysis.harness.timing import Timer


def run_one(w: Workload, opt_name: str, *, seed: int, quick: bool, progress: bool) -> pd.DataFrame:
    """Train ``opt_name`` on ``w`` with a monitor; return its history (plus step losses)."""
    data = cv.load_dataset(w.data)
    torch.manual_seed(seed)
    model = cv.build_model(w.model, **w.model_kwargs)
    loss_fn = torch.nn.CrossEntropyLoss()
    factory, create_graph = OPTIMIZERS[opt_name]
    opt = factory(model)
    probe = (data.x_train[: w.probe_examples], data.y_train[: w.probe_examples])
    mon = cv.CurvatureMonitor(
        model, loss_fn, probe, optimizer=opt, every=w.every, tol=1e-4, trace_matvecs=60,
        exact_diag_max_params=4096, diag_probes=64 if quick else 256, seed=seed,
        progress=progress, vector_truth_full=False,
    )
    gen = torch.Generator().manual_seed(seed)
    n = len(data.x_train)
    order = torch.randperm(n, generator=gen)
    pos, losses, step_sizes = 0, {}, {}
    model.train()
    for step in range(1, w.steps + 1):
        if pos + w.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + w.batch_size]
        pos += w.batch_size
        x, y = data.x_train[idx], data.y_train[idx]

        def closure(x=x, y=y) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward(create_graph=create_graph)
            return loss

        loss = opt.step(closure)
        losses[step] = float(loss.detach())
        if not math.isfinite(losses[step]):
            raise FloatingPointError(f"{opt_name} diverged on {w.name} at step {step}")
        if mon.step(step, (x, y)) is not None and hasattr(opt, "step_size"):
            step_sizes[step] = opt.step_size
    h = mon.history
    if step_sizes:
        h["step_size"] = h["step"].map(step_sizes)
    if opt_name == "SAM":  # spectrum at the end: how separated is lambda_1?
        op = cv.HessianOperator(model, loss_fn, probe)
        top = cv.eigenvalues(op, 3, tol=1e-4, seed=seed).values.tolist()
        for i, v in enumerate(top, 1):
            h[f"final_lambda_{i}_full"] = v
    h.insert(0, "optimizer", opt_name)
    h.insert(0, "workload", w.name)
    h["train_loss_batch"] = h["step"].map(losses)
    return h



def run_calibration(w: Workload, *, seed: int, quick: bool) -> pd.DataFrame:
    """LeCun's calibrate-then-fix at the initial weights, against Lanczos on the same examples.

    The probe set is split into batches of ``CALIBRATE["batch_size"]`` examples ("a few
    examples" per update, cycled); the truth is the top eigenvalue of the Hessian of the
    mean loss over the same examples (``cv.eigenvalues``, tol 1e-6).  One row per update.
    """
    data = cv.load_dataset(w.data)
    torch.manual_seed(seed)
    model = cv.build_model(w.model, **w.model_kwargs)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = data.x_train[: w.probe_examples], data.y_train[: w.probe_examples]
    bs = CALIBRATE["batch_size"]
    batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]
    t = Timer()
    res = cv.optim.calibrate_learning_rate(
        model, loss_fn, batches, rho=CALIBRATE["rho"], beta=CALIBRATE["beta"],
        tol=CALIBRATE["tol"], window=CALIBRATE["window"], max_iters=60 if quick else 600,
        seed=seed)
    seconds = t.elapsed
    truth = float(cv.eigenvalues(cv.HessianOperator(model, loss_fn, batches), 1, tol=1e-6,
                                 seed=seed).values[0])
    return pd.DataFrame({
        "workload": w.name, "iteration": range(1, res.iterations + 1), "norm_v": res.history,
        "rayleigh": res.rayleigh, "truth": truth, "lambda_max": res.lambda_max, "lr": res.lr,
        "converged": res.converged, "gradients": res.gradients, "seconds": seconds,
    })
