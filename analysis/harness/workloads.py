"""Models and data the benchmarks time: a model at fixed weights, a list of batches and
the loss -- what every tool sees."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

import curvature as cv
from curvature import models

__all__ = ["Workload", "train_briefly", "mlp_digits", "resnet20_cifar", "vit_cifar",
           "digits_all", "digits_batches", "seeded_vector"]


@dataclass
class Workload:
    """A model at fixed weights, a list of batches and the loss: what every tool sees."""

    name: str
    label: str
    model: nn.Module
    batches: list[tuple[Tensor, Tensor]]
    loss: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    sweep: str = ""  # "" for main workloads, "data"/"params" for the MLP sweeps

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    @property
    def n_data(self) -> int:
        return sum(len(y) for _, y in self.batches)

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def train_briefly(model: nn.Module, batches: list[tuple[Tensor, Tensor]], steps: int,
                  lr: float) -> None:
    """A short seeded Adam run on cross-entropy, cycling through ``batches``, so that the
    Hessian is that of a partly trained network; leaves the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for step in range(steps):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None


def mlp_digits(hidden: int, n_train: int | None, train_steps: int, batch: int = 256,
               sweep: str = "") -> Workload:
    """Tanh MLP 64-``hidden``-10 on the digits training split (``n_train`` examples)."""
    torch.manual_seed(0)
    ds = cv.load_dataset({"name": "digits", "n_train": n_train})
    model = models.mlp(64, (hidden,), 10, "tanh")
    batches = ds.train_batches(batch)
    train_briefly(model, batches, train_steps, 1e-2)
    return Workload(f"mlp{hidden}-digits{len(ds.x_train)}",
                    f"MLP 64-{hidden}-10 (tanh), digits N={len(ds.x_train)}", model, batches,
                    sweep=sweep)


def resnet20_cifar(width: int, n_train: int, train_steps: int, batch: int) -> Workload:
    """ResNet-20 of ``width`` (BatchNorm in eval mode) on synthetic 3x32x32 images."""
    torch.manual_seed(0)
    ds = cv.load_dataset({"name": "synthetic-image", "n_train": n_train, "n_test": 1})
    model = models.resnet20(width=width)
    batches = ds.train_batches(batch)
    train_briefly(model, batches, train_steps, 1e-2)
    return Workload(f"resnet20w{width}-cifar{n_train}",
                    f"ResNet-20 width {width} (BN, eval), 3x32x32 synthetic N={n_train}",
                    model, batches)


def vit_cifar(dim: int, n_train: int, train_steps: int, batch: int, image: int = 32,
              patch: int = 8, depth: int = 2, heads: int = 4) -> Workload:
    """A small ViT on synthetic ``3 x image x image`` images."""
    torch.manual_seed(0)
    ds = cv.load_dataset({"name": "synthetic-image", "n_train": n_train, "n_test": 1,
                             "size": image})
    model = models.vit(image_size=image, patch_size=patch, dim=dim, depth=depth, heads=heads)
    batches = ds.train_batches(batch)
    train_briefly(model, batches, train_steps, 3e-3)
    return Workload(f"vit{dim}-cifar{n_train}",
                    f"ViT dim {dim}, depth {depth}, {heads} heads, patch {patch}, 3x{image}x{image} "
                    f"synthetic N={n_train}", model, batches)


def digits_all() -> tuple[Tensor, Tensor]:
    """All 1797 sklearn digits, features standardised per pixel: ``x`` float32 ``(1797, 64)``,
    ``y`` int64 ``(1797,)``."""
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y)


def digits_batches(batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """:func:`digits_all` cut into consecutive batches of ``batch_size``."""
    X, y = digits_all()
    return [(X[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(X), batch_size)]


def seeded_vector(n: int, seed: int) -> Tensor:
    """A standard-normal float32 vector of length ``n`` from its own generator."""
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


