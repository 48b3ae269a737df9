"""The results of an analysis: :class:`SplitAnalysis` per data split, gathered in an
:class:`Analysis`, and their JSON form (``summary.json``).

The result objects hold tensors and estimator results (:class:`curvature.EigenResult`,
:class:`curvature.TraceResult`, :class:`curvature.SpectralDensity`,
:class:`curvature.Landscape`); :meth:`Analysis.summary` turns them into plain JSON
values (non-finite floats as ``null`` / ``"inf"`` / ``"-inf"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from curvature.pipeline.config import AnalysisConfig

__all__ = ["Analysis", "SplitAnalysis"]


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
        density: :class:`curvature.results.SpectralDensity` or ``None``.
        lines, planes: 1-D and 2-D :class:`curvature.landscape.Landscape` by name.
        sharpness: ``{"worst": SharpnessResult, "average": SharpnessResult}``
            (:mod:`curvature.sharpness`; training split only), ``{"error": message}``
            when a perturbed loss was non-finite, or ``None`` if not computed.
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
    sharpness: dict[str, Any] | None = None
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
            out["lambda_max_converged"] = bool(self.top.converged_mask[0])
        if self.bottom is not None:
            out["lambda_min"] = float(self.bottom.values[0])
            out["eigenvalues_smallest"] = self.bottom.values.tolist()
            out["residuals_smallest"] = self.bottom.residuals.tolist()
            out["converged_smallest"] = bool(self.bottom.converged)
            out["lambda_min_converged"] = bool(self.bottom.converged_mask[0])
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
        if self.sharpness is not None:
            out["sharpness"] = _sharpness_scalars(self.sharpness)
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
        per_layer: the training split's :class:`curvature.BlockSpectra` (one block per
            module) when ``config.per_layer``, else ``None``.
        plan: the :class:`curvature.pipeline.plan.Plan` the analysis ran under (measured
            costs, planned and used products per metric), or ``None``.
    """

    splits: dict[str, SplitAnalysis]
    num_params: int
    config: AnalysisConfig
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    per_layer: Any = None
    plan: Any = None

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
        sharp = train.get("sharpness") or {}
        for key in ("worst", "average", "average_stderr", "rho", "eta"):
            if key in sharp:
                out[f"sharpness_{key}"] = sharp[key]
        out["num_matvecs_total"] = sum(
            sum(s.num_matvecs.values()) for s in self.splits.values()
        )
        timings = dict(self.timings)
        for name, split in self.splits.items():
            timings.update({f"{name}_{k}": v for k, v in split.timings.items()})
        out["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
        out["splits"] = {k: s.scalars() for k, s in self.splits.items()}
        out["config"] = _ran_settings(self.config, self.per_layer is not None)
        if self.plan is not None:
            out["plan"] = self.plan.to_dict()
        out.update({k: v for k, v in self.info.items() if k not in out})
        return _jsonable(out)


# the settings of each metric: a report lists them only for the metrics that ran
_SETTINGS = {
    "eigenvalues": ("top_k", "tol", "max_matvecs"),
    "trace": ("trace_matvecs",),
    "density": ("density_probes", "density_steps"),
    "landscape": ("landscape_points", "landscape_grid", "landscape_radius", "random_radius"),
    "sharpness": ("sharpness_rho", "sharpness_eta", "sharpness_steps", "sharpness_samples"),
}


def _sharpness_scalars(results: dict[str, Any]) -> dict[str, Any]:
    """The adaptive sharpness as JSON: values in loss units, the worst case flagged as a
    lower bound of the maximum, the average case with its standard error."""
    if "error" in results:
        return {"error": results["error"]}
    worst, avg = results["worst"], results["average"]
    return {
        "rho": worst.rho, "eta": worst.eta, "base_loss": worst.base_loss,
        "worst": worst.value, "worst_steps": worst.steps,
        "worst_note": "lower bound of the maximum (projected gradient ascent)",
        "average": avg.value, "average_stderr": avg.stderr, "average_samples": avg.steps,
        "evaluations": worst.evaluations + avg.evaluations,
    }


def _ran_settings(config: AnalysisConfig, per_layer: bool) -> dict[str, Any]:
    """``config`` as a dict without the settings of metrics that were not requested."""
    out = asdict(config)
    out["metrics"] = list(config.metrics)
    keep = set(config.metrics) | ({"eigenvalues", "trace"} if per_layer else set())
    if "landscape" in keep:
        keep.add("eigenvalues")  # its directions are eigenvectors
    for metric, names in _SETTINGS.items():
        if metric not in keep:
            for name in names:
                out.pop(name, None)
    return out


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
