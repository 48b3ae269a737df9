"""Workloads and optimizers of the estimates-vs-truth study."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from curvature.optim import (
    IRE,
    SAM,
    SASAM,
    SASGD,
    AcceleratedSAM,
    AdaHessian,
    AlphaSAM,
    DiagHessianSGD,
    ExtendedSGDHess,
    ForwardSAM,
    Saddam,
    SGDHess,
)
from curvature.optim.online_eigen_sam import OnlineEigenSAM

DPI = 110
SGDHESS_BETA2 = 0.999


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    data: str
    model: str
    model_kwargs: dict[str, Any]
    steps: int
    every: int
    probe_examples: int
    batch_size: int = 64


def workloads(quick: bool) -> list[Workload]:
    if quick:
        return [
            Workload("digits-mlp", "digits, MLP 64-32-10 (2,410 params)", "digits", "mlp", {},
                     steps=8, every=4, probe_examples=64),
            Workload("wide-mlp", "synthetic 10-class, MLP 32-64-64-10 (6,922 params)",
                     "synthetic-classification:n_train=512,n_test=128,d=32,classes=10,separation=2.5",
                     "mlp", {"in_features": 32, "hidden": [64, 64], "num_classes": 10},
                     steps=4, every=4, probe_examples=64),
        ]
    return [
        Workload("digits-mlp", "digits, MLP 64-32-10 (2,410 params)", "digits", "mlp", {},
                 steps=600, every=40, probe_examples=512),
        Workload("wide-mlp", "synthetic 10-class, MLP 32-64-64-10 (6,922 params)",
                 "synthetic-classification:n_train=2048,n_test=512,d=32,classes=10,separation=2.5",
                 "mlp", {"in_features": 32, "hidden": [64, 64], "num_classes": 10},
                 steps=600, every=40, probe_examples=512),
    ]


# name -> (factory(model) -> optimizer, closure needs create_graph)
OPTIMIZERS: dict[str, tuple[Callable[[torch.nn.Module], torch.optim.Optimizer], bool]] = {
    "SGD": (lambda m: torch.optim.SGD(m.parameters(), lr=0.1), False),
    "Adam": (lambda m: torch.optim.Adam(m.parameters(), lr=3e-3), False),
    "SAM": (lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.1), False),
    "OnlineEigenSAM": (lambda m: OnlineEigenSAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.1,
                                                beta=0.2, seed=0), False),
    "AlphaSAM": (lambda m: AlphaSAM(m.parameters(), torch.optim.SGD, rho=0.05, alpha=0.5,
                                    lr=0.1), False),
    "AcceleratedSAM": (lambda m: AcceleratedSAM(m.parameters(), lr=0.3, rho=0.05, beta=0.9), False),
    "ForwardSAM": (lambda m: ForwardSAM(m.parameters(), lr=0.1, alpha=0.005), False),
    "SASGD": (lambda m: SASGD(m.parameters(), lr=0.1), False),
    "SASAM": (lambda m: SASAM(m.parameters(), lr=0.1), False),
    "ExtendedSGDHess": (lambda m: ExtendedSGDHess(m.parameters(), lr=0.1,
                                                   betas=(0.9, SGDHESS_BETA2)), False),
    "AdaHessian": (lambda m: AdaHessian(m.parameters(), lr=0.05, seed=0), True),
    "IRE": (lambda m: IRE(m.parameters(), torch.optim.SGD, k=2.0, lr=0.1, seed=0), True),
    # issue 14: the fixed ASAM (T_w = |w| + eta, biases T = 1) and the new methods
    "ASAM": (lambda m: SAM(m.named_parameters(), torch.optim.SGD, rho=0.5, adaptive=True,
                           lr=0.1), False),
    # sign ascent; rho = 0.05 / sqrt(n_digits) keeps ||e||_2 near SAM's 0.05 on the digits MLP
    "SAM-pinf": (lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.001, p=float("inf"),
                               lr=0.1), False),
    "Saddam": (lambda m: Saddam(m.parameters(), torch.optim.Adam, rho=0.05, lr=3e-3), False),
    "SGDHess": (lambda m: SGDHess(m.parameters(), lr=0.1, momentum=0.9), True),
    "DiagHessianSGD": (lambda m: DiagHessianSGD(m.parameters(), lr=0.1, rho=0.1, seed=0), True),
}
SAM_FAMILY = ["SAM", "AlphaSAM", "AcceleratedSAM", "ForwardSAM", "SASAM", "OnlineEigenSAM",
              "ASAM", "SAM-pinf", "Saddam"]
CALIBRATE = {"rho": 1e-3, "beta": 0.05, "tol": 0.03, "window": 20, "batch_size": 64}
"""calibrate_learning_rate settings (LeCun's calibrate-then-fix, run at the initial weights)."""

