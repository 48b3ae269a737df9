"""Sizes of a benchmark run, the workloads it times and the row groups (``--rows``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from analysis.harness.workloads import (
    Workload,
    as_loader,
    gpt2_tokens,
    mlp_digits,
    resnet18_cifar,
    resnet20_cifar,
    vit_cifar,
)

DENSE_LIMIT = 3000  # parameters; above this the references are ARPACK / long Hutch++
ARPACK_LIMIT = 300_000  # parameters; above this the lambda_max reference is a tight Lanczos
TOOLS = ("curvature", "pyhessian", "curvlinops")
TASKS = ("gradient", "hvp", "hvp_warm", "lambda_max", "top10", "trace", "density", "blocks")
GROUPS = ("small", "sweep", "scale", "big")
"""Row groups: ``small`` (the three dense-truth-sized workloads and a DataLoader MLP),
``sweep`` (MLP sweeps over N and n), ``scale`` (10k to 1M parameters, tensor and
DataLoader data), ``big`` (the 11.2M-parameter ResNet-18, tensor and DataLoader)."""


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
    trace_reference_matvecs: int = 200  # 0: no trace reference (density checked by its edge)
    var_samples: int = 48  # Hutchinson samples for Var[z'Hz] when no dense Hessian
    trace_own_rule: bool = True  # also time PyHessian's own trace stopping rule
    probes: int = 10
    steps: int = 80
    min_steps: int = 10  # density: fewest Lanczos steps a budget-capped peer runs
    density_tools: tuple[str, ...] = TOOLS  # who runs the density (curvlinops' ARPACK
    # boundaries alone cost more than the scale rows' budget)
    power_max_iter: int = 100  # PyHessian's default maxIter per eigenvalue
    block_steps: int = 100  # per-layer spectra (block_spectra): Lanczos steps per block
    block_trace: int = 30  # per-layer Hutchinson probes per block
    block_kind: str = "module"  # the partition given to block_spectra
    tasks: tuple[str, ...] = TASKS
    warmup: bool = True  # untimed first calls of every kernel before the product timings
    reference_tol: float = 1e-6  # Lanczos reference above ARPACK_LIMIT
    sweep: bool = True
    profile: bool = True  # torch.profiler of one fresh product (profile.csv)
    matmat: bool = True  # k-column product scaling, k = 1, 8, 32 (matmat.csv)


QUICK = Config(
    repeats=1, hvp_repeats=2, long_s=5.0, timeout_s=20.0, budget_s=1.0, top_k=3,
    trace_ladder=(12, 24, 48),
    pyhessian_trace_cap=20, trace_reference_matvecs=60, probes=2, steps=8,
    power_max_iter=30, block_steps=10, block_trace=4, sweep=False, profile=False, matmat=False,
)

# The scale rows: fewer repeats and products, budgets instead of full peer runs; the
# density is the 2-probe x 40-step SLQ of issue 17's outside check.
SCALE = Config(
    repeats=1, hvp_repeats=3, long_s=5.0, timeout_s=150.0, budget_s=40.0, top_k=10,
    trace_ladder=(30,), pyhessian_trace_cap=12, trace_reference_matvecs=60, var_samples=16,
    trace_own_rule=False, probes=2, steps=40, density_tools=("curvature", "pyhessian"), min_steps=8, block_steps=40, block_trace=8,
    block_kind="layer", tasks=("gradient", "hvp", "hvp_warm", "lambda_max", "trace", "density",
                               "blocks"),
    sweep=False, profile=True,
)
# DataLoader twins of the scale rows: what issue 17 asks of loaders (lambda_max, density).
SCALE_LOADER = replace(SCALE, tasks=("gradient", "hvp", "hvp_warm", "lambda_max", "density"),
                       profile=False, matmat=False)
# The 1M-parameter rows: shorter reference, density and per-layer runs.
MID = replace(SCALE, hvp_repeats=2, timeout_s=100.0, trace_reference_matvecs=30,
              var_samples=8, steps=20, block_steps=10, matmat=False)
MID_LOADER = replace(MID, tasks=SCALE_LOADER.tasks, profile=False)
# The 11.2M-parameter ResNet-18 on 256 images (issue 13's size): one repeat, no warm-up,
# no trace (its products alone would take longer than the whole row), a 2 x 8 density,
# per-layer spectra capped at 6 lockstep steps (a cost measurement: blocks are reported
# unconverged where they are), a tol 1e-4 reference (about 13 products of 30 s).
BIG = replace(SCALE, hvp_repeats=1, warmup=False, timeout_s=480.0, budget_s=60.0,
              trace_reference_matvecs=0, var_samples=0, steps=8, min_steps=4,
              block_steps=6, block_trace=0, reference_tol=1e-4, profile=False, matmat=False,
              tasks=("gradient", "hvp", "hvp_warm", "lambda_max", "density", "blocks"))
# Its DataLoader twin times the products only (its lambda_max would repeat the tensor
# row's product counts at about 40 minutes for the three tools).
BIG_LOADER = replace(BIG, tasks=("gradient", "hvp", "hvp_warm"))


def parse_rows(spec: str) -> tuple[str, ...]:
    """``"small,scale"`` -> ``("small", "scale")`` in :data:`GROUPS` order; ``"all"`` is
    every group. An unknown name is refused with the list of known ones."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return GROUPS
    bad = [n for n in names if n not in GROUPS]
    if bad or not names:
        raise ValueError(f"--rows takes a comma-separated subset of {', '.join(GROUPS)} "
                         f"(or 'all'), got {spec!r}")
    return tuple(g for g in GROUPS if g in names)


Row = tuple[Callable[[], list[Workload]], Config]
"""A builder of one model's workloads (tensor-fed first, then its DataLoader twins) and
the configuration of each: built lazily, so that a run only builds the groups it times."""


def _with_loaders(base: Callable[[], Workload], shuffle: bool = False) -> Callable[[], list[Workload]]:
    def build() -> list[Workload]:
        w = base()
        out = [w, as_loader(w)]
        if shuffle:
            out.append(as_loader(w, shuffle=True))
        return out

    return build


def rows(groups: tuple[str, ...], quick: bool) -> list[tuple[Callable[[], list[Workload]],
                                                            tuple[Config, Config]]]:
    """Per model: its workload builder and (config for tensor data, config for loaders)."""
    if quick:
        return [(lambda: [mlp_digits(8, 200, 20, batch=100)], (QUICK, QUICK))]
    out: list = []
    full = Config()
    if "small" in groups:
        out += [
            (_with_loaders(lambda: mlp_digits(32, None, 200)), (full, full)),
            (lambda: [resnet20_cifar(4, 32, 10, 16)], (full, full)),
            (lambda: [vit_cifar(32, 64, 20, 32)], (full, full)),
        ]
    if "sweep" in groups:
        out += [(lambda b=b: [b()], (_SWEEP, _SWEEP)) for b in _sweep_builders()]
    if "scale" in groups:
        out += [
            (_with_loaders(lambda: _scale(mlp_digits(150, None, 200)), shuffle=True),
             (SCALE, SCALE_LOADER)),
            (_with_loaders(lambda: _scale(resnet20_cifar(10, 32, 10, 16))), (SCALE, SCALE_LOADER)),
            (_with_loaders(lambda: gpt2_tokens(128, 4, 32, 16)), (MID, MID_LOADER)),
            (_with_loaders(lambda: _scale(resnet20_cifar(32, 8, 10, 8))), (MID, MID_LOADER)),
        ]
    if "big" in groups:
        out += [(_with_loaders(lambda: _big(resnet18_cifar(256, 4, 64))), (BIG, BIG_LOADER))]
    return out


def _scale(w: Workload) -> Workload:
    w.group = "scale"
    return w


def _big(w: Workload) -> Workload:
    w.group = "big"
    return w


# Scaling sweeps: one repeat per point, densities scaled from what fits in 10 s.
_SWEEP = replace(Config(), repeats=1, hvp_repeats=3, budget_s=10.0,
                 tasks=("gradient", "hvp", "hvp_warm", "lambda_max", "density"), profile=False,
                 matmat=False)


def _sweep_builders() -> list[Callable[[], Workload]]:
    """MLP sweeps around the main MLP (hidden 32, all 1347 training digits)."""
    def sweep(hidden: int, n: int | None, kind: str) -> Callable[[], Workload]:
        def build() -> Workload:
            w = mlp_digits(hidden, n, 200, sweep=kind)
            w.group = "sweep"
            return w
        return build

    return [sweep(32, 337, "data"), sweep(32, 674, "data"), sweep(16, None, "params"),
            sweep(64, None, "params")]


def workloads(quick: bool) -> list[Workload]:
    """The tensor-fed workloads of the small group (``--matmat-only``)."""
    return [b()[0] for b, _ in rows(("small",), quick)]
