"""Workloads, optimizers and sizes of the minima study."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Workload:
    """A dataset spec, a zoo model and a training budget."""

    data: str
    model: str
    model_kwargs: dict[str, Any]
    epochs: float
    batch_size: int = 64
    description: str = ""
    optimizers: tuple[str, ...] | None = None  # None: all of OPTIMIZERS
    hessian_examples: int | None = None  # None: Settings.hessian_examples


WORKLOADS: dict[str, Workload] = {
    "digits-mlp": Workload(
        "digits", "mlp", {"in_features": 64, "hidden": [32], "num_classes": 10},
        epochs=100, description="8x8 digits (1347 train / 450 test), tanh MLP 64-32-10 "
        "(2410 parameters)"),
    "synthetic-mlp": Workload(
        "synthetic-classification:n_train=3000,n_test=2000,d=32,classes=8,separation=2.5",
        "mlp", {"in_features": 32, "hidden": [64, 64], "num_classes": 8},
        epochs=60, description="Gaussian mixture, 8 classes in 32 dimensions (3000 train / "
        "2000 test), tanh MLP 32-64-64-8 (6856 parameters)"),
    "digits-cnn": Workload(
        "digits-image", "cnn", {"channels": [8, 16]},
        epochs=25, description="8x8 digits as images, ReLU CNN conv8-conv16-linear "
        "(1978 parameters); a subset of the optimizers and the Hessian on 512 examples "
        "(convolution HVPs are ~10x dearer on CPU)",
        optimizers=("SGD", "Momentum", "Adam", "SAM", "SA-SGD", "SA-SAM", "alpha-SAM (a=2)"),
        hessian_examples=512),
}

# label -> (curvature.train name, train() keyword arguments). One learning-rate scale
# (0.1 per step of SGD) for the SGD-based methods; the other methods at the defaults
# of their docstrings.
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "SGD": ("sgd", {"lr": 0.1}),
    "Momentum": ("momentum", {"lr": 0.01}),  # momentum 0.9: same effective step 0.1
    "Adam": ("adam", {"lr": 1e-3}),
    "SAM": ("sam", {"lr": 0.1, "rho": 0.05}),
    "SA-SGD": ("sa-sgd", {"lr": 0.1}),
    "SA-SAM": ("sa-sam", {"lr": 0.1}),
    "AcceleratedSAM": ("accelerated-sam", {"lr": 0.5, "rho": 0.05}),
    "alpha-SAM (a=2)": ("alpha-sam", {"lr": 0.1, "rho": 0.05,
                                      "optimizer_kwargs": {"alpha": 2.0}}),
    "AntiSAM (a=-1)": ("alpha-sam", {"lr": 0.1, "rho": 0.05,
                                     "optimizer_kwargs": {"alpha": -1.0}}),
    "AdaHessian": ("adahessian", {"lr": 0.15}),
    "SGDHess": ("extended-sgdhess", {"lr": 0.1, "rho": 100.0}),
    "IRE": ("ire", {"lr": 0.1}),
}
SAM_FAMILY = ["SAM", "SA-SAM", "AcceleratedSAM", "alpha-SAM (a=2)"]
BASELINES = ["SGD", "Momentum", "Adam"]
GROUPS = [
    ("plain and adaptive", ["SGD", "Momentum", "Adam", "SGDHess"]),
    ("SAM and smoothness-adaptive", ["SGD", "SAM", "SA-SGD", "SA-SAM"]),
    ("SAM variants", ["SGD", "AcceleratedSAM", "alpha-SAM (a=2)", "AntiSAM (a=-1)"]),
    ("diagonal-Hessian methods", ["SGD", "AdaHessian", "IRE"]),
]
# twelve distinguishable colours (dark tab20 shades first) and markers for the scatter
METRICS = [
    ("test_accuracy", "test accuracy"),
    ("train_loss", "train loss"),
    ("lambda_max_train", "lambda_max (train)"),
    ("lambda_max_test", "lambda_max (test)"),
    ("trace_train", "Tr(H) (train)"),
    ("trace_test", "Tr(H) (test)"),
]


@dataclass
class Settings:
    seeds: int = 3
    hessian_examples: int = 1000
    tol: float = 1e-3
    trace_matvecs: int = 100
    density_probes: int = 5
    density_steps: int = 60
    landscape_points: int = 41
    landscape_2d_points: int = 25
    epochs_scale: float = 1.0
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))
    optimizers: list[str] = field(default_factory=lambda: list(OPTIMIZERS))
    landscape_2d: list[str] = field(default_factory=lambda: ["SGD", "Adam", "SAM", "SA-SAM"])
    progress: bool = False


QUICK = Settings(seeds=2, hessian_examples=200, tol=1e-2, trace_matvecs=12,
                 density_probes=2, density_steps=12, landscape_points=9,
                 landscape_2d_points=7, epochs_scale=0.02, workloads=["digits-mlp"],
                 optimizers=["SGD", "SAM", "SA-SAM"], landscape_2d=["SGD", "SA-SAM"])

