"""Models and data the benchmarks time: a model at fixed weights, a list of batches and
the loss -- what every tool sees."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

import curvature as cv
from analysis.scale.resnet18 import ResNet18
from curvature import models

__all__ = ["Workload", "train_briefly", "mlp_digits", "resnet20_cifar", "vit_cifar",
           "resnet18_cifar", "gpt2_tokens", "as_loader", "digits_all",
           "digits_batches", "seeded_vector", "FEEDS"]

FEEDS = ("tensor", "loader", "loader-shuffle")
"""How a workload's data reaches the tools: the list of tensor batches, a non-shuffling
``DataLoader`` over the same examples, or a shuffling one (as PyHessian users pass it)."""


@dataclass
class Workload:
    """A model at fixed weights, a list of batches and the loss: what every tool sees."""

    name: str
    label: str
    model: nn.Module
    batches: list[tuple[Tensor, Tensor]]
    loss: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    sweep: str = ""  # "" for main workloads, "data"/"params" for the MLP sweeps
    feed: str = "tensor"  # one of FEEDS
    loader: Iterable[Any] | None = None  # the DataLoader when feed != "tensor"
    group: str = "small"  # the row group (--rows) the workload belongs to
    truth_key: str = ""  # workloads sharing a model and data share one ground truth
    blocks: Any = None  # per-layer partition for block_spectra (None: the benchmark's kind)

    @property
    def data(self) -> Iterable[Any]:
        """What every tool is given: the DataLoader, else the list of batches."""
        return self.loader if self.loader is not None else self.batches

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    @property
    def n_data(self) -> int:
        return sum(len(x) for x, _ in self.batches)

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


def as_loader(w: Workload, shuffle: bool = False) -> Workload:
    """The same model and examples as ``w``, given to the tools as a ``DataLoader`` over a
    ``TensorDataset`` with ``w``'s batch size (``shuffle=True``: a new order every pass).
    The model object is shared with ``w`` (same weights); ``batches`` keeps the in-order
    list for the ground truth."""
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.cat([b[0] for b in w.batches])
    y = torch.cat([b[1] for b in w.batches])
    gen = torch.Generator().manual_seed(0) if shuffle else None
    loader = DataLoader(TensorDataset(x, y), batch_size=len(w.batches[0][1]), shuffle=shuffle,
                        generator=gen)
    feed = "loader-shuffle" if shuffle else "loader"
    return Workload(f"{w.name}-{feed}", f"{w.label}; DataLoader{' (shuffle)' if shuffle else ''}",
                    w.model, w.batches, w.loss, w.sweep, feed, loader, w.group,
                    w.truth_key or w.name, w.blocks)


def resnet18_cifar(n_train: int, train_steps: int, batch: int, width: int = 64) -> Workload:
    """The CIFAR ResNet-18 of :mod:`analysis.scale.resnet18` (``width`` channels in the
    stem; 64: 11,173,962 parameters; BatchNorm in eval mode) on synthetic CIFAR-shaped
    images."""
    torch.manual_seed(0)
    ds = cv.load_dataset({"name": "synthetic-image", "n_train": n_train, "n_test": 1})
    model = ResNet18(width=width / 64)
    batches = ds.train_batches(batch)
    train_briefly(model, batches, train_steps, 1e-3)
    return Workload(f"resnet18w{width}-cifar{n_train}",
                    f"ResNet-18 CIFAR variant width {width} (BN, eval), 3x32x32 synthetic "
                    f"N={n_train}", model, batches, group="scale")


class _TokenLM(nn.Module):
    """A causal LM as a classifier of every position: ``[B, T]`` token ids ->
    ``[B, vocab, T - 1]`` next-token logits (class dimension second, as
    ``nn.CrossEntropyLoss`` takes it; the targets ``[B, T - 1]`` are the ids shifted)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, x: Tensor) -> Tensor:
        return self.lm(input_ids=x).logits[:, :-1].transpose(1, 2)


def gpt2_tokens(n_embd: int, n_layer: int, n_train: int, batch: int, seq: int = 32,
                vocab: int = 512, train_steps: int = 20) -> Workload:
    """A GPT-2 from ``transformers`` (small config, random init, eager attention, no
    dropout) on random token sequences with a repeated-bigram structure; the loss is
    next-token cross-entropy averaged over positions (targets ``y = x[:, 1:]``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=n_embd, n_layer=n_layer,
                     n_head=max(1, n_embd // 32), resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, attn_implementation="eager")
    model = _TokenLM(GPT2LMHeadModel(cfg))
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(vocab, generator=g)
    x = torch.randint(0, vocab, (n_train, seq), generator=g)
    x[:, 1::2] = perm[x[:, 0::2]]  # every second token follows from the one before it
    batches = [(x[i:i + batch], x[i:i + batch, 1:]) for i in range(0, n_train, batch)]
    train_briefly(model, batches, train_steps, 1e-3)
    # Per-layer blocks: the embeddings (token, tied with the LM head, and position), each
    # transformer block, the final LayerNorm.
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")  # lm.transformer.<wte|wpe|h|ln_f>[.<i>]...
        key = "embeddings" if parts[2] in ("wte", "wpe") else (
            f"h.{parts[3]}" if parts[2] == "h" else parts[2])
        groups.setdefault(key, []).append(name)
    return Workload(f"gpt2d{n_embd}l{n_layer}-tok{n_train}",
                    f"GPT-2 (transformers) {n_layer} layers, n_embd {n_embd}, vocab {vocab}, "
                    f"sequences of {seq} random tokens N={n_train}", model, batches,
                    group="scale", blocks=groups)


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


