"""Workloads, optimizers, learning-rate grids and sizes of the minima study."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Workload:
    """A dataset spec, a zoo model, a training budget and the equal-loss target.

    ``target_loss``: the training loss (mean cross-entropy on the whole training set) at
    which each run is also measured, the first time a check (every ``check_every``
    epochs) finds it at or below the target.
    """

    data: str
    model: str
    model_kwargs: dict[str, Any]
    epochs: int
    target_loss: float
    batch_size: int = 64
    check_every: float = 0.5
    sgd_grid: tuple[float, ...] = (0.03, 0.1, 0.3)
    hessian_examples: int | None = None  # None: Settings.hessian_examples
    description: str = ""


WORKLOADS: dict[str, Workload] = {
    "digits-mlp": Workload(
        "digits", "mlp", {"in_features": 64, "hidden": [32], "num_classes": 10},
        epochs=40, target_loss=0.1,
        description="8x8 digits (1347 train / 450 test), tanh MLP 64-32-10 (2410 parameters)"),
    "mnist1d-mlp": Workload(
        "mnist1d", "mlp", {"in_features": 40, "hidden": [64, 64], "num_classes": 10},
        epochs=30, target_loss=0.6, sgd_grid=(0.1, 0.3, 1.0),
        description="MNIST-1D (4000 train / 1000 test, Greydanus & Kobak 2024), tanh MLP "
        "40-64-64-10 (7434 parameters)"),
    "mnist1d-cnn": Workload(
        "mnist1d", "cnn1d", {"channels": [16, 16, 16]},
        epochs=20, target_loss=0.5, sgd_grid=(0.1, 0.3, 1.0), hessian_examples=500,
        description="MNIST-1D, ReLU 1-D CNN conv16-conv16-conv16 (stride 2) -> linear "
        "(3498 parameters; Hessian metrics on 500 examples)"),
}

# label -> (curvature.train optimizer name, fixed keyword arguments). The learning rate
# is not here: it is chosen per workload from lr_grid(label, wl) on a validation split.
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "SGD": ("sgd", {}),
    "SAM": ("sam", {"rho": 0.05}),
    "alpha-SAM (a=2)": ("alpha-sam", {"rho": 0.05, "optimizer_kwargs": {"alpha": 2.0}}),
    "AntiSAM (a=-1)": ("alpha-sam", {"rho": 0.05, "optimizer_kwargs": {"alpha": -1.0}}),
    "alpha-SAM (rho<0, a=-1)": ("alpha-sam", {"rho": -0.05,
                                              "optimizer_kwargs": {"alpha": -1.0}}),
    "DiagHessianSGD": ("diag-hessian-sgd", {"rho": 1.0}),
    "AdaHessian": ("adahessian", {}),
}
# Three learning rates per optimizer, a factor ~3 apart: the workload's ``sgd_grid`` for
# the SGD-based methods (SGD, the SAM family, DiagHessianSGD), ADAHESSIAN_GRID around
# AdaHessian's default 0.15.
ADAHESSIAN_GRID = (0.015, 0.05, 0.15)


def lr_grid(label: str, wl: Workload) -> tuple[float, ...]:
    """The learning rates tried for optimizer ``label`` on workload ``wl``."""
    return ADAHESSIAN_GRID if label == "AdaHessian" else wl.sgd_grid


# (claim id, a, b, expected direction of a vs b: "less"/"greater"/"equivalent")
COMPARISONS: list[tuple[str, str, str, str]] = [
    ("sam-flatter", "SAM", "SGD", "less"),
    ("alpha2-flatter-than-sam", "alpha-SAM (a=2)", "SAM", "less"),
    ("antisam-sharper-than-sam", "AntiSAM (a=-1)", "SAM", "greater"),
    ("negrho-equals-sam", "alpha-SAM (rho<0, a=-1)", "SAM", "equivalent"),
    ("diaghessian-flatter-than-adahessian", "DiagHessianSGD", "AdaHessian", "less"),
]
# metrics of the ledger (pre-registered primary) and of the report only (secondary)
PRIMARY = ["lambda_max_train", "asharp_worst"]
SECONDARY = ["trace_train", "asharp_avg", "lambda_max_test"]
POINTS = ["budget", "equal_loss"]
METRIC_LABELS = {
    "lambda_max_train": "lambda_max (train Hessian)",
    "lambda_max_test": "lambda_max (test Hessian)",
    "trace_train": "Tr(H) (train)",
    "asharp_worst": "adaptive worst-case sharpness",
    "asharp_avg": "adaptive average-case sharpness",
    "test_accuracy": "test accuracy",
}
# equivalence margin of "negative rho with alpha = -1 ~ SAM": geometric-mean ratio within
# [1/1.25, 1.25] (the 95% interval must lie inside for "holds")
EQUIVALENCE_RATIO = 1.25


@dataclass
class Settings:
    seeds: int = 5
    lr_seeds: int = 1  # seeds per LR grid value on the validation split
    val_fraction: float = 0.2
    hessian_examples: int = 1000
    tol: float = 1e-3
    trace_matvecs: int = 40
    sharp_rho_worst: float = 0.05
    sharp_rho_avg: float = 0.05
    sharp_steps: int = 10
    sharp_samples: int = 20
    epochs_scale: float = 1.0
    target_scale: float = 1.0  # multiplies every workload's target loss (quick mode)
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))
    optimizers: list[str] = field(default_factory=lambda: list(OPTIMIZERS))
    progress: bool = False


QUICK = Settings(seeds=3, hessian_examples=200, tol=1e-2, trace_matvecs=8,
                 sharp_steps=3, sharp_samples=4, epochs_scale=0.1, target_scale=6.0,
                 workloads=["digits-mlp"], optimizers=["SGD", "SAM", "alpha-SAM (a=2)"])
