"""``curvature demo``: train SGD and SAM on the embedded digits, analyse both minima,
compare them, and write one report.

Everything runs offline on scikit-learn's embedded 8x8 digits (1347 training and 450
test images as 64 features) with a one-hidden-layer tanh MLP (2410 parameters), so
the whole run takes about a minute on two CPU cores. The folder it writes::

    report.md             overview: training, sharpness trajectory, comparison
    training.png          loss curves and lambda_max trajectories of both runs
    sgd/, sam/            checkpoints (step_*.pt, final.pt), history.csv, train.json
    sgd/analysis/, sam/analysis/   `curvature analyze` output of final.pt
    comparison/           `curvature compare` output of the two analyses
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEMO", "run_demo"]

DEMO: dict[str, Any] = {
    "data": "digits",
    "model": "mlp",
    "model_kwargs": {"in_features": 64, "hidden": [32], "num_classes": 10, "activation": "tanh"},
    "lr": 0.1,
    "momentum": 0.9,
    "rho": 0.1,
    "batch_size": 64,
    "steps": 600,
    "save_at": [25, 50, 100, 200, 300, 400, 500],
}
"""The demo's set-up (both runs share everything but the optimizer)."""

_QUICK = {"steps": 40, "save_at": [20], "data": "digits:n_train=300,n_test=100"}


def _analysis_config(quick: bool, seed: int, progress: bool, device: str | None):
    from curvature.pipeline import AnalysisConfig

    if quick:
        return AnalysisConfig(top_k=3, tol=1e-4, trace_matvecs=12, density_probes=3,
                              density_steps=20, landscape_points=11, landscape_grid=7,
                              seed=seed, progress=progress, device=device)
    return AnalysisConfig(top_k=5, tol=1e-4, trace_matvecs=150, density_probes=10,
                          density_steps=80, landscape_points=41, landscape_grid=31,
                          landscape_radius=1.0, random_radius=0.5, seed=seed,
                          progress=progress, device=device)


def _lambda_max_trajectory(folder: Path, data, loss_fn, seed: int, device) -> list[dict]:
    """Lanczos ``lambda_max`` of the full training loss at every checkpoint in ``folder``."""
    import torch

    from curvature.checkpoint import load_checkpoint
    from curvature.estimators import eigenvalues
    from curvature.operators import HessianOperator

    dtype = torch.float64 if device is None or torch.device(device).type == "cpu" else None
    rows = []
    for path in sorted(folder.glob("*.pt")):
        c = load_checkpoint(path)
        op = HessianOperator(c.model, loss_fn, (data.x_train, data.y_train), dtype=dtype,
                             device=device)
        r = eigenvalues(op, 1, which="largest", tol=1e-4, seed=seed)
        rows.append({"step": int(c.metadata["step"]), "lambda_max": float(r.values[0]),
                     "converged": bool(r.converged)})
    return sorted(rows, key=lambda r: r["step"])


def run_demo(
    out: str | Path = "curvature-demo",
    *,
    quick: bool = False,
    steps: int | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run the demo and write its folder atomically; returns the path of ``report.md``."""
    import torch

    from curvature.atomic import atomic_directory
    from curvature.data import load_dataset
    from curvature.inputs import make_loss
    from curvature.models import build_model
    from curvature.pipeline import analyze_checkpoint, compare, write_analysis
    from curvature.plots import training_figure
    from curvature.train import train

    log = log or (lambda _m: None)
    setup = {**DEMO, **(_QUICK if quick else {})}
    if steps is not None:
        setup["steps"] = steps
        setup["save_at"] = [s for s in setup["save_at"] if s < steps]
    data = load_dataset(setup["data"])
    loss_fn = make_loss("ce")
    config = _analysis_config(quick, seed, progress, device)
    runs = {
        "sgd": {"optimizer": "momentum", "rho": None, "short": "SGD",
                "label": f"SGD (momentum {setup['momentum']})"},
        "sam": {"optimizer": "sam", "rho": setup["rho"], "short": "SAM",
                "label": f"SAM (rho {setup['rho']}, momentum {setup['momentum']})"},
    }
    t0 = time.perf_counter()
    out = Path(out)
    with atomic_directory(out) as tmp:
        results, trajectories = {}, {}
        for name, run in runs.items():
            log(f"demo: training {run['label']} for {setup['steps']} steps")
            torch.manual_seed(seed)  # both runs start from the same weights
            model = build_model(setup["model"], **setup["model_kwargs"])
            folder = tmp / name
            res = train(
                model, data, optimizer=run["optimizer"], lr=setup["lr"],
                momentum=setup["momentum"], rho=run["rho"], steps=setup["steps"],
                batch_size=setup["batch_size"], seed=seed, loss_fn=loss_fn, loss_name="ce",
                out=folder, save_at=setup["save_at"], factory=setup["model"],
                factory_kwargs=setup["model_kwargs"], device=device, progress=progress, log=log,
            )
            res.history.to_csv(folder / "history.csv", index=False)
            res.evaluations.to_csv(folder / "evaluations.csv", index=False)
            (folder / "train.json").write_text(json.dumps(res.metadata, indent=2) + "\n")
            results[name] = res
            trajectories[name] = _lambda_max_trajectory(folder, data, loss_fn, seed, device)
            log(f"demo: analysing {name}/final.pt")
            analysis = analyze_checkpoint(folder / "final.pt", config=config, log=log,
                                          source_name=f"{name}/final.pt")
            write_analysis(analysis, folder / "analysis",
                           title=f"Curvature analysis: {run['label']} on digits")
        log("demo: comparing")
        table = compare([tmp / n / "analysis" for n in runs], tmp / "comparison",
                        labels=[runs[n]["label"] for n in runs],
                        title="SGD vs SAM on digits: curvature of the minima")
        training_figure(results, trajectories, runs, tmp / "training.png")
        elapsed = time.perf_counter() - t0
        (tmp / "report.md").write_text(
            _report(setup, runs, results, trajectories, table, quick, elapsed, config, data))
    return out / "report.md"


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def equal_loss_lambda(evaluations: Any, trajectory: Sequence[dict], target: float
                      ) -> tuple[float, int, int] | None:
    """``lambda_max`` where a run's training loss first reaches ``target``, interpolated
    linearly in log(train loss) between the two checkpoints that bracket it; returns
    ``(lambda, step before, step after)`` or ``None`` when the run never reaches it.

    ``evaluations`` has columns ``step`` and ``train_loss`` (:func:`curvature.train.train`'s
    checkpoint evaluations); ``trajectory`` rows ``{"step", "lambda_max"}``."""
    lam = {int(r["step"]): float(r["lambda_max"]) for r in trajectory}
    pts = [(int(st), float(lo)) for st, lo in zip(evaluations["step"], evaluations["train_loss"])
           if int(st) in lam and lo > 0]
    pts.sort()
    for i, (st, lo) in enumerate(pts):
        if lo <= target:
            if i == 0:
                return lam[st], st, st
            st0, lo0 = pts[i - 1]
            w = (np.log(lo0) - np.log(target)) / (np.log(lo0) - np.log(lo))
            return (1 - w) * lam[st0] + w * lam[st], st0, st
    return None


def _headline(runs, results, trajectories, config) -> list[str]:
    """What one seed can say: both runs at the end of the budget *and* at equal training
    loss, with how much lambda_max was still moving; no verdict from one seed."""
    names = [n for n in ("sgd", "sam") if n in results]
    if len(names) < 2:
        return []
    final = {n: float(results[n].metadata.get("train_loss", np.nan)) for n in names}
    traj = {n: sorted(trajectories[n], key=lambda r: r["step"]) for n in names}
    if not all(len(traj[n]) >= 2 and np.isfinite(final[n]) for n in names):
        return []
    lam_end = {n: traj[n][-1]["lambda_max"] for n in names}
    drift = {n: traj[n][-1]["lambda_max"] / traj[n][-2]["lambda_max"] - 1 for n in names}
    last_gap = {n: traj[n][-1]["step"] - traj[n][-2]["step"] for n in names}
    short = {n: runs[n]["short"] for n in names}
    out = [
        "**One seed, not a test.** This demo trains each optimizer once, from one initial "
        "point; it shows what the tools measure, and cannot say whether SAM finds flatter "
        "minima in general (for that, compare paired seeds: `reports/minima/` and the claims "
        "ledger `reports/claims/`).",
        "",
        f"- At the end of the budget: λ_max {short['sgd']} {lam_end['sgd']:.3g}, "
        f"{short['sam']} {lam_end['sam']:.3g} (ratio {lam_end['sgd'] / lam_end['sam']:.3g}); "
        f"train loss {short['sgd']} {final['sgd']:.3g}, {short['sam']} {final['sam']:.3g}. "
        "λ_max was still moving over the last checkpoint interval: "
        + ", ".join(f"{short[n]} {100 * drift[n]:+.0f}% in {last_gap[n]} steps" for n in names)
        + " -- neither run has settled, so the end-of-budget ratio depends on the budget.",
    ]
    target = max(final.values())
    at = {n: equal_loss_lambda(results[n].evaluations, traj[n], target) for n in names}
    if all(v is not None for v in at.values()):
        out.append(
            f"- At equal training loss ({target:.3g}, the higher of the two final losses; "
            "λ_max interpolated in log-loss between the bracketing checkpoints): "
            + ", ".join(f"{short[n]} {at[n][0]:.3g} (steps {at[n][1]}-{at[n][2]})"
                        for n in names)
            + f", ratio {at['sgd'][0] / at['sam'][0]:.3g}.")
    out.append(f"- λ_max: full training set, Lanczos to relative residual {config.tol:g}.")
    return out


def _report(setup, runs, results, trajectories, table, quick, elapsed, config, data) -> str:
    mk = setup["model_kwargs"]
    n_train, n_test = len(data.x_train), len(data.x_test)
    lines = [
        "# curvature demo: SGD vs SAM on digits",
        "",
        f"{'Quick run (`--quick`): tiny budgets, for tests only. ' if quick else ''}"
        f"Both runs start from the same initial weights of an MLP "
        f"{mk['in_features']}-{'-'.join(str(h) for h in mk['hidden'])}-{mk['num_classes']} "
        f"({mk['activation']}) and see the same mini-batches (batch {setup['batch_size']}, "
        f"{setup['steps']} steps, learning rate {setup['lr']}, momentum {setup['momentum']}); "
        f"SAM adds the ascent step of radius rho = {setup['rho']}. Data: scikit-learn's "
        f"embedded 8x8 digits, {n_train} training / {n_test} test images. Total time "
        f"{elapsed:.0f} s.",
        "",
        "| run | train loss | train acc. | test loss | test acc. | λ_max | λ_min | trace |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (name, run), (_, row) in zip(runs.items(), table.iterrows()):
        m = results[name].metadata
        trace = (f"{row['trace']:.4g} ± {row['trace_stderr']:.2g}"
                 if row.get("trace") is not None and np.isfinite(row.get("trace", np.nan)) else "–")
        lines.append(
            f"| {run['label']} | {_fmt(m.get('train_loss'))} | {_fmt(m.get('train_accuracy'))} | "
            f"{_fmt(m.get('test_loss'))} | {_fmt(m.get('test_accuracy'))} | "
            f"{_fmt(float(row['lambda_max']))} | {_fmt(float(row['lambda_min']))} | {trace} |")
    lines += ["", *_headline(runs, results, trajectories, config)]
    lines += [
        "",
        "![training](training.png)",
        "",
        "*Left: mini-batch training loss (running mean) and test loss at the checkpoints. "
        "Right: λ_max of the full training loss at every checkpoint (Lanczos), and SAM's own "
        "per-step estimate ‖(g_adv − g)/ρ‖ ≈ ‖H_B u‖ along the normalised gradient u, read "
        "off the two gradients SAM computes anyway. It is taken on the mini-batch B, whose "
        "Hessian is sharper than the full-data Hessian, and with a finite radius ρ, so it "
        "sits above the full-data λ_max while following its downward trend.*",
        "",
        "Trajectory of λ_max (Lanczos, full training set):",
        "",
        "| step | " + " | ".join(trajectories) + " |",
        "| --- |" + " --- |" * len(trajectories),
    ]
    steps = sorted({r["step"] for t in trajectories.values() for r in t})
    by = {n: {r["step"]: r["lambda_max"] for r in t} for n, t in trajectories.items()}
    for s in steps:
        lines.append(f"| {s} | " + " | ".join(_fmt(by[n].get(s)) for n in trajectories) + " |")
    lines += [
        "",
        "## Comparison of the final minima",
        "",
        "![spectra](comparison/spectra.png)",
        "",
        "*Hessian spectral densities of both minima (stochastic Lanczos quadrature, log "
        "density axis) with their extreme Lanczos eigenvalues.*",
        "",
        "Full comparison: [comparison/report.md](comparison/report.md). Per-run analyses "
        "(eigenvalues, trace, density, 1-D and 2-D loss landscapes, CSV tables): "
        "[sgd/analysis/report.md](sgd/analysis/report.md), "
        "[sam/analysis/report.md](sam/analysis/report.md).",
        "",
        "![sgd landscape](sgd/analysis/landscape_1d.png)",
        "",
        "![sam landscape](sam/analysis/landscape_1d.png)",
        "",
        "*Loss along the top and bottom Hessian eigenvectors (with the quadratic model "
        "from the eigenvalue) and along a filter-normalised random direction; top: SGD, "
        "bottom: SAM.*",
        "",
        "Reproduce: `curvature demo` (or the steps by hand: `curvature train --optimizer "
        f"sam --rho {setup['rho']} --momentum {setup['momentum']} --lr {setup['lr']} --steps "
        f"{setup['steps']} --model mlp --model-kwargs '{json.dumps(mk)}' --out sam`, "
        "`curvature analyze sam/final.pt --out sam/analysis`, `curvature compare "
        "sgd/analysis sam/analysis --out comparison`).",
        "",
    ]
    return "\n".join(lines)
