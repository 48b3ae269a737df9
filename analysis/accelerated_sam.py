"""Accelerated SAM's claims (``accelerated-sam-adaptive-lr.md``): is ``lr = 1/lambda_max``
near-optimal, and does AcceleratedSAM converge faster than SAM?

Part A, the step-size rule. Full-batch gradient descent on the digits MLP (cross-entropy,
1347 training images) with a fixed ``lr = c / lambda_0``, ``lambda_0`` the top
eigenvalue of the full-batch training Hessian at the initial weights (the engine's
Lanczos, ``curvature.eigenvalues``), for multiples ``c``; the seed predicts ``c = 1`` to
be "close enough to the optimal" and ``c > 2`` to diverge. Also LeCun's
calibrate-then-fix estimate (``calibrate_learning_rate``) against ``lambda_0``.

Part B, convergence speed. Mini-batch training (same initial weights and batch order per
seed for every method) of

* SAM (rho 0.05, plain SGD) at each learning rate of a grid; the best one (lowest
  geometric-mean final train loss over the seeds, an oracle tuning) is the baseline;
* SAM at the fixed ``lr = 1/lambda_0`` (calibrate-then-fix with the true eigenvalue);
* ``AcceleratedSAM`` with ``lr = 1`` (the seed's step ``1/||h_t||``);
* an **oracle**: SAM whose step is ``1/lambda_max(w_t)``, the engine's top eigenvalue
  of the full-batch training Hessian, recomputed every ``refresh`` steps -- the seed's
  rule with the true curvature in place of the SAM-pair estimate ``||h_t||``.

Primary metric: full training loss after the budget (paired log ratios over seeds).
Every ``refresh`` steps the driver also logs ``lambda_max(w_t)`` and the step's
``lr_t * lambda_max(w_t)`` (1 = the seed's rule, 2 = the GD stability edge). Report text
and figures: :mod:`analysis.accelerated_sam_report`. Writes ``reports/accelerated-sam/``.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python -m analysis.accelerated_sam
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

import curvature as cv
from analysis.harness.cli import base_parser, settings_and_out
from analysis.harness.report import png_sizes, write_run_meta
from analysis.harness.timing import Timer
from curvature.optim import SAM, AcceleratedSAM, calibrate_learning_rate

CE = nn.CrossEntropyLoss()


@dataclass
class Settings:
    data: str = "digits"
    hidden: list[int] = field(default_factory=lambda: [32])
    seeds: int = 10
    multiples: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0, 8.0,
                                                            16.0, 32.0])
    losses: list[str] = field(default_factory=lambda: ["ce", "mse"])
    gd_steps: int = 300
    sam_lrs: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 2.0, 4.0])
    rho: float = 0.05
    beta: float = 0.9
    batch_size: int = 64
    epochs: int = 10
    refresh: int = 10  # steps between engine lambda_max evaluations
    tol: float = 1e-3
    target_loss: float = 0.1

    @property
    def workload(self) -> str:
        return f"{self.data} MLP 64-{'-'.join(map(str, self.hidden))}-10 tanh (CE)"


QUICK = Settings(seeds=2, multiples=[0.5, 1.0, 4.0], gd_steps=30, sam_lrs=[0.1, 0.3],
                 epochs=1, refresh=10, tol=1e-2)


def build(seed: int, s: Settings) -> nn.Module:
    torch.manual_seed(seed)
    return cv.build_model("mlp", in_features=64, hidden=list(s.hidden), num_classes=10,
                          activation="tanh")


def mse(out: Tensor, target: Tensor) -> Tensor:
    """``(1/N) sum_i ||f(x_i) - onehot(y_i)||^2 / 2`` (the edge-of-stability square loss)."""
    return 0.5 * (out - nn.functional.one_hot(target, out.shape[1]).to(out.dtype)
                  ).square().sum(1).mean()


LOSSES = {"ce": CE, "mse": mse}


def lambda_max(model: nn.Module, x: Tensor, y: Tensor, s: Settings, seed: int = 0,
               loss_fn: Any = CE) -> float:
    """The engine's top eigenvalue of the full-batch training Hessian (Lanczos)."""
    op = cv.HessianOperator(model, loss_fn, (x, y))
    return float(cv.eigenvalues(op, 1, tol=s.tol, seed=seed).values[0])


def full_loss(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Any = CE) -> float:
    with torch.no_grad():
        return float(loss_fn(model(x), y))


def part_a(seed: int, ds: cv.Dataset, s: Settings, loss_name: str) -> list[dict[str, Any]]:
    """Full-batch GD at ``lr = c / lambda_0`` for every multiple ``c``."""
    x, y = ds.x_train, ds.y_train
    loss_fn = LOSSES[loss_name]
    model = build(seed, s)
    lam0 = lambda_max(model, x, y, s, seed, loss_fn)
    cal = calibrate_learning_rate(model, loss_fn, ds.train_batches(256), seed=seed)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    for c in s.multiples:
        model.load_state_dict(init)
        lr = c / lam0
        diverged = False
        for _ in range(s.gd_steps):
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss.detach()) or float(loss.detach()) > 1e3:
                diverged = True
                break
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
        final = full_loss(model, x, y, loss_fn)
        diverged = diverged or not math.isfinite(final) or final > 1e3
        lam_end = math.nan if diverged else lambda_max(model, x, y, s, seed, loss_fn)
        acc = math.nan
        if not diverged:
            with torch.no_grad():
                acc = float((model(ds.x_test).argmax(1) == ds.y_test).float().mean())
        rows.append({"loss": loss_name, "seed": seed, "multiple": c, "lambda_0": lam0, "lr": lr,
                     "calibrated_lambda": cal.lambda_max, "calibrated_converged": cal.converged,
                     "diverged": diverged, "final_train_loss": math.nan if diverged else final,
                     "test_accuracy": acc, "lambda_end": lam_end,
                     "lr_times_lambda_end": lr * lam_end})
    return rows


def _batches(n: int, s: Settings, seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(10_000 + seed)
    out = []
    for _ in range(s.epochs):
        perm = torch.randperm(n, generator=g)
        out += [perm[i:i + s.batch_size] for i in range(0, n, s.batch_size)]
    return out


def part_b_run(method: str, lr: float, seed: int, ds: cv.Dataset, s: Settings,
               lam0: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One mini-batch run; returns its summary row and its trace every ``refresh`` steps."""
    x, y = ds.x_train, ds.y_train
    model = build(seed, s)
    params = list(model.parameters())
    if method == "AcceleratedSAM":
        opt: torch.optim.Optimizer = AcceleratedSAM(params, lr=lr, rho=s.rho, beta=s.beta)
    else:
        opt = SAM(params, torch.optim.SGD, rho=s.rho, lr=lr)
    trace: list[dict[str, Any]] = []
    reached = math.nan
    order = _batches(len(x), s, seed)
    diverged = False
    for step, idx in enumerate(order):
        lam_t = math.nan
        if step % s.refresh == 0:
            lam_t = lambda_max(model, x, y, s, seed)
            if method == "oracle":
                for g in opt.param_groups:
                    g["lr"] = lr / lam_t
        xb, yb = x[idx], y[idx]

        def closure(xb=xb, yb=yb) -> Tensor:
            opt.zero_grad(set_to_none=True)
            loss = CE(model(xb), yb)
            loss.backward()
            return loss

        opt.step(closure)
        if method == "AcceleratedSAM":
            eff = opt.step_size
        else:
            eff = opt.param_groups[0]["lr"]
        if step % s.refresh == 0:
            loss = full_loss(model, x, y)
            if not math.isfinite(loss) or loss > 1e3:
                diverged = True
                break
            if math.isnan(reached) and loss <= s.target_loss:
                reached = step + 1
            trace.append({"method": method, "lr": lr, "seed": seed, "step": step + 1,
                          "train_loss": loss, "lambda_max": lam_t, "step_size": eff,
                          "step_times_lambda": eff * lam_t,
                          "h_norm": opt.estimates.get("lambda_max", math.nan)
                          if method == "AcceleratedSAM" else math.nan})
    final = math.nan if diverged else full_loss(model, x, y)
    acc = math.nan
    if not diverged:
        with torch.no_grad():
            acc = float((model(ds.x_test).argmax(1) == ds.y_test).float().mean())
    return ({"method": method, "lr": lr, "seed": seed, "steps": len(order),
             "diverged": diverged, "final_train_loss": final, "test_accuracy": acc,
             "steps_to_target": reached, "lambda_0": lam0}, trace)


def part_b(seed: int, ds: cv.Dataset, s: Settings, lam0: float):
    runs: list[tuple[str, float]] = [("SAM", lr) for lr in s.sam_lrs]
    runs += [("SAM at 1/lambda_0", 1.0 / lam0), ("AcceleratedSAM", 1.0), ("oracle", 1.0)]
    rows, traces = [], []
    for method, lr in runs:
        row, tr = part_b_run("SAM" if method == "SAM at 1/lambda_0" else method, lr, seed,
                             ds, s, lam0)
        row["method"] = method
        for t in tr:
            t["method"] = method
        rows.append(row)
        traces += tr
    return rows, traces


def main(argv: list[str] | None = None) -> int:
    from analysis.accelerated_sam_report import rebuild

    p = base_parser(__doc__.split("\n")[0], "reports/accelerated-sam",
                    report_only="rebuild tables, figures and report.md from the CSVs in --out")
    args = p.parse_args(argv)
    s, out = settings_and_out(args, QUICK, Settings())
    if args.report_only:
        return rebuild(out, s, args.quick)
    timer = Timer()
    ds = cv.load_dataset(s.data)
    a_rows, b_rows, traces = [], [], []
    for seed in range(s.seeds):
        a = [r for loss in s.losses for r in part_a(seed, ds, s, loss)]
        a_rows += a
        lam0 = next(r["lambda_0"] for r in a if r["loss"] == "ce")
        b, tr = part_b(seed, ds, s, lam0)
        b_rows += b
        traces += tr
        print(f"[{timer.elapsed:6.0f} s] seed {seed}: lambda_0 {lam0:.4g}; GD "
              + ", ".join(f"{r['loss']} c={r['multiple']:g}: {r['final_train_loss']:.3g}" for r in a)
              + "; " + ", ".join(f"{r['method']}({r['lr']:.3g}): {r['final_train_loss']:.3g}"
                                 for r in b), flush=True)
        pd.DataFrame(a_rows).to_csv(out / "lr_multiples.csv", index=False)
        pd.DataFrame(b_rows).to_csv(out / "convergence.csv", index=False)
        pd.DataFrame(traces).to_csv(out / "trajectories.csv", index=False)
    write_run_meta(out, timer)
    rc = rebuild(out, s, args.quick)
    print(f"PNG sizes {png_sizes(out)}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
