"""Sizes of a benchmark run and the workloads it times."""

from __future__ import annotations

from dataclasses import dataclass

from analysis.harness.workloads import Workload, mlp_digits, resnet20_cifar, vit_cifar

DENSE_LIMIT = 3000  # parameters; above this the references are ARPACK / long Hutch++
TOOLS = ("curvature", "pyhessian", "curvlinops")
TASKS = ("gradient", "hvp", "hvp_warm", "lambda_max", "top10", "trace", "density")


@dataclass(frozen=True)
class Config:
    """Sizes of one benchmark run (``--quick`` shrinks every one of them)."""

    repeats: int = 3
    hvp_repeats: int = 5
    long_s: float = 20.0  # a task whose first run takes longer is run once
    timeout_s: float = 90.0  # a run still going after this is stopped (a lower bound)
    budget_s: float = 40.0  # trace/density work a tool runs before extrapolating
    tol: float = 1e-3
    top_k: int = 10
    trace_rel: float = 0.01
    trace_ladder: tuple[int, ...] = (30, 60, 120, 240, 480, 960)
    pyhessian_trace_cap: int = 300  # Hutchinson products actually run; beyond: extrapolated
    trace_reference_matvecs: int = 200
    probes: int = 10
    steps: int = 80
    power_max_iter: int = 100  # PyHessian's default maxIter per eigenvalue
    sweep: bool = True
    profile: bool = True


QUICK = Config(
    repeats=1, hvp_repeats=2, long_s=5.0, timeout_s=20.0, budget_s=1.0, top_k=3,
    trace_ladder=(12, 24, 48),
    pyhessian_trace_cap=20, trace_reference_matvecs=60, probes=2, steps=8,
    power_max_iter=30, sweep=False, profile=False,
)


def workloads(quick: bool) -> list[Workload]:
    if quick:
        return [mlp_digits(8, 200, 20, batch=100)]
    return [
        mlp_digits(32, None, 200),
        resnet20_cifar(4, 32, 10, 16),
        vit_cifar(32, 64, 20, 32),
    ]


def sweep_workloads() -> list[Workload]:
    """MLP sweeps around the main MLP (hidden 32, all 1347 training digits)."""
    return [
        mlp_digits(32, 337, 200, sweep="data"),
        mlp_digits(32, 674, 200, sweep="data"),
        mlp_digits(16, None, 200, sweep="params"),
        mlp_digits(64, None, 200, sweep="params"),
    ]

