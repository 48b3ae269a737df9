"""What :func:`curvature.pipeline.analyze` computes and how hard it tries.

:data:`METRICS` names the quantities (``--metrics``); :class:`AnalysisConfig` holds
every setting of an analysis (budgets, tolerances, landscape grids, seed, dtype,
device), checked when it is made: a bad value raises
:class:`curvature.inputs.InputError` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from curvature.inputs import InputError

__all__ = ["HVP_METHODS", "METRICS", "AnalysisConfig", "resolve_config"]

METRICS = ("eigenvalues", "trace", "density", "landscape", "sharpness")
"""Names accepted by ``AnalysisConfig.metrics`` (``--metrics``)."""

HVP_METHODS = ("exact", "fd", "fd-central")
"""Product methods accepted by ``AnalysisConfig.hvp_method`` (``--hvp-method``)."""


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
        sharpness_rho: radius of the adaptive sharpness ball ``||u||_2 <= rho``, where the
            weights move by ``(|w| + eta) * u`` (:mod:`curvature.sharpness`; both the
            worst and the average case, training split only).
        sharpness_eta: offset ``eta >= 0`` of the elementwise scale ``|w| + eta``.
        sharpness_steps: projected gradient-ascent steps of the worst case (each a
            gradient over the training data).
        sharpness_samples: Gaussian draws of the average case (each a loss evaluation).
        seed: seeds every random choice (probes, start vectors, random directions).
        dtype: computation dtype (``None``: float64 on CPU, float32 elsewhere).
        device: where to compute (``None``: the model's device).
        progress: tqdm bars on stderr.
        hvp_method: how Hessian products are computed: ``"exact"`` (double backward),
            ``"fd"`` or ``"fd-central"`` (finite differences of gradients, for models
            whose kernels have no second derivative; see :class:`HessianOperator`).
        per_layer: also the per-block spectra of the training split, one block per
            module owning parameters, or per top-level child when the modules are many
            (:func:`curvature.memory.block_grouping`; :func:`curvature.block_spectra`: lambda_max,
            lambda_min and a Hutchinson trace of ``trace_matvecs`` probes per block;
            ``tol``; ``max_matvecs`` caps each block's Lanczos steps, default 300; with
            ``"density"`` in ``metrics`` also an SLQ density per block).
        budget: wall-time budget of the analysis in seconds (``None``: the default rule,
            the time of every setting above but at most 10 minutes, 15 with
            ``per_layer``). The settings above are the most each metric spends; a
            budget below their time lowers them (:mod:`curvature.pipeline.plan`), and
            what that cuts is reported as not converged, never dropped.
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
    sharpness_rho: float = 0.05
    sharpness_eta: float = 0.0
    sharpness_steps: int = 10
    sharpness_samples: int = 20
    seed: int = 0
    dtype: str | None = None
    device: str | None = None
    progress: bool = False
    hvp_method: str = "exact"
    per_layer: bool = False
    budget: float | str | None = None

    def __post_init__(self) -> None:
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise InputError(f"unknown metrics {bad}; choose from {', '.join(METRICS)}")
        for name in ("top_k", "trace_matvecs", "density_probes", "density_steps",
                     "landscape_points", "landscape_grid", "sharpness_steps",
                     "sharpness_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if self.trace_matvecs < 4:
            raise InputError(f"trace_matvecs must be at least 4 (Hutch++), got {self.trace_matvecs}")
        if self.sharpness_samples < 2:
            raise InputError(f"sharpness_samples must be at least 2 (a standard error), "
                             f"got {self.sharpness_samples}")
        if not (isinstance(self.sharpness_eta, (int, float)) and self.sharpness_eta >= 0
                and math.isfinite(self.sharpness_eta)):
            raise InputError(f"sharpness_eta must be a finite number >= 0, got "
                             f"{self.sharpness_eta!r}")
        for name in ("landscape_radius", "random_radius", "tol", "sharpness_rho"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise InputError(f"{name} must be a positive number, got {v!r}")
        if self.hvp_method not in HVP_METHODS:
            raise InputError(
                f"hvp_method must be one of {', '.join(HVP_METHODS)}, got {self.hvp_method!r}"
            )
        if self.budget is not None:
            from curvature.pipeline.plan import parse_budget

            object.__setattr__(self, "budget", parse_budget(self.budget))
        if self.dtype not in (None, "float32", "float64"):
            raise InputError(f"dtype must be float32 or float64, got {self.dtype!r}")


def resolve_config(config: AnalysisConfig | None, overrides: Mapping[str, Any]) -> AnalysisConfig:
    """``config`` (default :class:`AnalysisConfig()`) with the fields in ``overrides``
    replaced (e.g. ``{"top_k": 3}``); the result is checked like any new config."""
    config = config or AnalysisConfig()
    if overrides:
        config = AnalysisConfig(**{**asdict(config), **overrides})
    return config
