"""The transformers of the zoo: :func:`vit` (images) and :func:`transformer`
(sequences of feature vectors), on one pre-LayerNorm encoder.

Attention is written out with matrix products and ``softmax`` (no fused kernels), so
both support double backward and forward-over-reverse Hessian-vector products.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from curvature.models.arguments import positive_ints, positive_number, probability

__all__ = [
    "MultiHeadSelfAttention",
    "SequenceTransformer",
    "TransformerBlock",
    "ViT",
    "transformer",
    "vit",
]


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention (Vaswani et al., 2017) written with matrix products:
    ``softmax(Q K^T / sqrt(d_head)) V`` per head, then an output projection.

    Input and output ``[N, T, dim]``.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads, self.d_head = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        # [N, T, 3 dim] -> 3 x [N, heads, T, d_head]
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d_head), dim=-1)
        out = self.drop(att) @ v  # [N, heads, T, d_head]
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm encoder block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


def _depth(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"depth must be a non-negative integer, got {value!r}")
    return value


class _Encoder(nn.Module):
    """Tokens ``[N, T, dim]`` (+ learned positions, optional CLS token) -> blocks ->
    LayerNorm -> pooled ``[N, dim]`` -> linear head. Checks the encoder's arguments."""

    def __init__(self, tokens: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                 dropout: float, pool: str, num_classes: int) -> None:
        super().__init__()
        positive_ints(dim=dim, heads=heads)
        depth, mlp_ratio = _depth(depth), positive_number(mlp_ratio, "mlp_ratio")
        dropout = probability(dropout, "dropout")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        if pool == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, tokens + (pool == "cls"), dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *[TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def encode(self, tokens: Tensor) -> Tensor:
        if self.pool == "cls":
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        x = self.norm(self.blocks(self.drop(tokens + self.pos_embedding)))
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(dim=1))


class ViT(_Encoder):
    """Vision transformer (Dosovitskiy et al., 2021); see :func:`vit`."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int, num_classes: int,
                 dim: int, depth: int, heads: int, mlp_ratio: float, dropout: float,
                 pool: str) -> None:
        if image_size % patch_size != 0:
            raise ValueError(
                f"image_size ({image_size}) must be divisible by patch_size ({patch_size})"
            )
        super().__init__((image_size // patch_size) ** 2, dim, depth, heads, mlp_ratio,
                         dropout, pool, num_classes)
        # non-overlapping patches, each linearly embedded: a strided convolution
        self.patch_embedding = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(self.patch_embedding(x).flatten(2).transpose(1, 2))


class SequenceTransformer(_Encoder):
    """Transformer encoder classifier on real-valued sequences; see :func:`transformer`."""

    def __init__(self, in_features: int, seq_len: int, num_classes: int, dim: int, depth: int,
                 heads: int, mlp_ratio: float, dropout: float, pool: str) -> None:
        super().__init__(seq_len, dim, depth, heads, mlp_ratio, dropout, pool, num_classes)
        self.seq_len, self.in_features = seq_len, in_features
        self.embedding = nn.Linear(in_features, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(self.embedding(x.reshape(x.shape[0], self.seq_len, self.in_features)))


def vit(image_size: int = 32, patch_size: int = 4, in_channels: int = 3,
        num_classes: int = 10, *, dim: int = 64, depth: int = 2, heads: int = 4,
        mlp_ratio: float = 2.0, dropout: float = 0.0, pool: str = "cls") -> ViT:
    """Small vision transformer (Dosovitskiy et al., 2021).

    The image is cut into ``(image_size / patch_size)^2`` non-overlapping patches, each
    embedded linearly to ``dim``; learned position embeddings are added; ``depth``
    pre-LayerNorm encoder blocks with ``heads``-head self-attention and a GELU MLP of
    width ``mlp_ratio * dim`` follow; the final LayerNorm output is pooled by the CLS
    token (``pool="cls"``) or the token mean (``pool="mean"``) into a linear head.
    ``vit(image_size=8, patch_size=2, in_channels=1)`` fits 8x8 digits images.

    Returns:
        module mapping ``[N, in_channels, image_size, image_size]`` to ``[N, num_classes]``.
    """
    positive_ints(image_size=image_size, patch_size=patch_size, in_channels=in_channels,
                  num_classes=num_classes)
    return ViT(image_size, patch_size, in_channels, num_classes, dim, depth, heads, mlp_ratio,
               dropout, pool)


def transformer(in_features: int = 8, seq_len: int = 8, num_classes: int = 10, *,
                dim: int = 32, depth: int = 1, heads: int = 2, mlp_ratio: float = 2.0,
                dropout: float = 0.0, pool: str = "mean") -> SequenceTransformer:
    """Tiny transformer encoder classifier on sequences of feature vectors.

    Inputs ``[N, ...]`` with ``seq_len * in_features`` values per example are read as
    ``[N, seq_len, in_features]``: the defaults read an 8x8 digits image (``[N, 64]``
    or ``[N, 1, 8, 8]``) as a sequence of its 8 rows. Each element is embedded
    linearly to ``dim``, learned positions are added, then come ``depth`` encoder
    blocks (as in :func:`vit`) and CLS or mean pooling into a linear head.

    Returns:
        module mapping ``[N, seq_len, in_features]`` to ``[N, num_classes]``.
    """
    positive_ints(in_features=in_features, seq_len=seq_len, num_classes=num_classes)
    return SequenceTransformer(in_features, seq_len, num_classes, dim, depth, heads, mlp_ratio,
                               dropout, pool)
