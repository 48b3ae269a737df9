"""Shared fixtures and workloads of the test suite.

Fixtures: ``digits_standardized`` (sklearn's digits, standardised, numpy), ``digits``
(150 of them as float64 tensors), ``float64_default`` (models built in float64; use with
``pytestmark = pytest.mark.usefixtures("float64_default")``), ``one_thread`` (one intra-op
thread). Helpers, imported as
``from conftest import ...``: small models with known quirks (:func:`mlp`, :func:`cnn`
with BatchNorm and Dropout, :func:`attention` with LayerNorm and tied weights,
:func:`tiny_gpt2` taking one ``BatchEncoding``), their data, :func:`rel` and
:func:`probe_block`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn


@pytest.fixture(scope="session")
def digits_standardized() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1797 digits: ``X`` float64 ``[1797, 64]`` standardised per pixel, ``y`` labels."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X - X.mean(0)) / (X.std(0) + 1e-8), y


@pytest.fixture(scope="module")
def digits(digits_standardized) -> tuple[torch.Tensor, torch.Tensor]:
    """150 standardised digits (a fixed random subset) as float64 tensors."""
    X, y = digits_standardized
    idx = np.random.default_rng(0).permutation(len(X))[:150]
    return torch.tensor(X[idx]), torch.tensor(y[idx])


@pytest.fixture
def float64_default():
    """Build every model of the test in float64 (the default dtype is restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (restored afterwards): tiny models run fastest so
    and are immune to a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class Quadratic(nn.Module):
    """Model whose output is its own weight vector; loss 0.5 w^T A w - b^T w."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return self.w.expand(x.shape[0], -1)


def quadratic_loss(A, b):
    def loss(out, _):
        w = out[0]
        return 0.5 * w @ A @ w - b @ w

    return loss


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(3 * 4 * 4, 10)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(self.drop(h.flatten(1)))


def cnn():
    torch.manual_seed(1)
    model = SmallCNN()
    # non-trivial running statistics, so eval-mode BatchNorm is not the identity
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model


class AttentionBlock(nn.Module):
    """Embedding -> LayerNorm -> multi-head self-attention -> mean pool -> tied readout."""

    def __init__(self, vocab: int = 7, dim: int = 6, heads: int = 2, fused: bool = False) -> None:
        super().__init__()
        self.fused = fused  # fused=True: scaled_dot_product_attention (no double backward)
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight  # weight tying

    def forward(self, tokens):
        h = self.norm(self.embed(tokens))
        a, _ = self.attn(h, h, h, need_weights=not self.fused)
        return self.out((h + a).mean(1))


def attention(fused: bool = False):
    torch.manual_seed(2)
    return AttentionBlock(fused=fused)


def tokens(n=24, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 7, (n, 5), generator=g), torch.randint(0, 7, (n,), generator=g)


def mse_onehot(out, y):
    return F.mse_loss(out, F.one_hot(y, out.shape[-1]).to(out.dtype))


def workloads(digits):
    X, y = digits
    img = X.reshape(-1, 1, 8, 8)[:40]
    return {
        "mlp-ce": (mlp(), F.cross_entropy, (X, y)),
        "mlp-mse": (mlp(), mse_onehot, (X, y)),
        "cnn-bn-dropout-ce": (cnn(), F.cross_entropy, (img, y[:40])),
        "attention-ln-tied-ce": (attention(), F.cross_entropy, tokens()),
        "attention-ln-tied-mse": (attention(), mse_onehot, tokens()),
    }


NAMES = [
    "mlp-ce",
    "mlp-mse",
    "cnn-bn-dropout-ce",
    "attention-ln-tied-ce",
    "attention-ln-tied-mse",
]


class LogitsOf(nn.Module):
    """A HuggingFace model called with one ``BatchEncoding`` (the project's convention
    for keyword-argument models): ``batch -> model(**batch).logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model(**batch).logits


def tiny_gpt2(vocab: int = 11):
    """A random float64 GPT-2 (1 layer, n_embd 16, 2 heads, ``vocab`` tokens, eager
    attention) behind :class:`LogitsOf`, and its mean next-token cross-entropy
    ``lm_loss(logits [N, T, V], ids [N, T])``. Skips the test without ``transformers``."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=vocab,
                                     n_positions=8, bos_token_id=0, eos_token_id=0,
                                     attn_implementation="eager")
    torch.manual_seed(5)
    model = LogitsOf(transformers.GPT2LMHeadModel(config).double())

    def lm_loss(logits, labels):
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                               labels[:, 1:].reshape(-1))

    return model, lm_loss


def probe_block(n, k=3, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
