"""A small model zoo for demos, tests and experiments.

Every model is built by a plain function whose keyword arguments are JSON values
(numbers, strings, booleans, lists), so that a checkpoint can record
``"curvature.models:mlp"`` plus its keyword arguments and rebuild the model
(:func:`build_model`, :mod:`curvature.checkpoint`).

==============  ====================================  ==========================
short name      factory                               input shape
==============  ====================================  ==========================
``mlp``         :func:`mlp`                           ``[N, in_features]`` (or any
                                                      ``[N, ...]``, flattened)
``cnn``         :func:`cnn`                           ``[N, C, S, S]``
``resnet20``    :func:`resnet20` (:func:`resnet`)     ``[N, C, S, S]``
``vgg``         :func:`vgg`                           ``[N, C, S, S]``
``vit``         :func:`vit`                           ``[N, C, S, S]``
``transformer`` :func:`transformer`                   ``[N, seq_len, in_features]``
==============  ====================================  ==========================

All models return logits ``[N, num_classes]`` (for regression, ``num_classes`` is
the number of outputs).

Initialisation uses PyTorch's global random generator: seeding is the caller's
business, e.g. ``torch.manual_seed(0); model = mlp()`` builds the same weights every
time. Attention is written out with matrix products and ``softmax`` (no fused
kernels), so every model supports double backward and forward-over-reverse
Hessian-vector products.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from curvature.errors import ModelFactoryError

__all__ = [
    "MODELS",
    "ModelFactoryError",
    "build_model",
    "cnn",
    "count_parameters",
    "default_kwargs",
    "is_model_factory",
    "mlp",
    "resnet",
    "resnet20",
    "resolve_factory",
    "transformer",
    "vgg",
    "vit",
]


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _int_list(name: str, value: Any, *, allow_empty: bool = True) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{name} must be a list of positive integers, got {value!r}")
    out = [_positive_int(f"{name}[{i}]", v) for i, v in enumerate(value)]
    if not out and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return out


def _probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------- MLP


def mlp(
    in_features: int = 64,
    hidden: Sequence[int] = (32,),
    num_classes: int = 10,
    activation: str = "tanh",
    *,
    bias: bool = True,
    dropout: float = 0.0,
    batchnorm: bool = False,
) -> nn.Sequential:
    """Fully connected network ``in_features -> hidden[0] -> ... -> num_classes``.

    Args:
        in_features: input width; inputs ``[N, ...]`` are flattened to ``[N, in_features]``.
        hidden: widths of the hidden layers (an empty list gives a linear model).
        num_classes: output width (classes, or regression outputs).
        activation: one of ``tanh, relu, gelu, silu, elu, softplus, sigmoid,
            leaky_relu, identity``. Smooth activations (tanh, gelu, silu, softplus)
            give a Hessian without kinks.
        bias: use biases in the linear layers.
        dropout: dropout probability after every hidden activation.
        batchnorm: ``BatchNorm1d`` after every hidden linear layer.

    Returns:
        ``nn.Sequential`` mapping ``[N, in_features]`` to logits ``[N, num_classes]``.
    """
    widths = [_positive_int("in_features", in_features), *_int_list("hidden", hidden)]
    _positive_int("num_classes", num_classes)
    p = _probability("dropout", dropout)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:]):
        layers.append(nn.Linear(a, b, bias=bias))
        if batchnorm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(_activation(activation))
        if p > 0:
            layers.append(nn.Dropout(p))
    layers.append(nn.Linear(widths[-1], num_classes, bias=bias))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- CNN


def cnn(
    in_channels: int = 1,
    num_classes: int = 10,
    channels: Sequence[int] = (16, 32),
    input_size: int = 8,
    *,
    kernel_size: int = 3,
    hidden: Sequence[int] = (),
    activation: str = "relu",
    batchnorm: bool = False,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Small convolutional network: ``[conv -> (BN) -> act -> maxpool2] x len(channels)``,
    then flatten, optional dense hidden layers, dropout and a linear classifier.

    The defaults fit 8x8 digits images (``[N, 1, 8, 8]``, 2 blocks leave 2x2 maps);
    ``cnn(in_channels=3, input_size=32)`` fits CIFAR-10 (``[N, 3, 32, 32]``).

    Args:
        in_channels: channels of the input images.
        num_classes: output width.
        channels: output channels of each convolution block (``same`` padding,
            each block halves the spatial size with a 2x2 max pool).
        input_size: height = width of the input images, needed to size the classifier.
        kernel_size: odd convolution kernel size.
        hidden: widths of dense hidden layers before the classifier.
        activation: activation name (see :func:`mlp`).
        batchnorm: ``BatchNorm2d`` after every convolution (``BatchNorm1d`` after
            every dense hidden layer).
        dropout: dropout probability before every dense layer.

    Returns:
        ``nn.Sequential`` mapping ``[N, in_channels, input_size, input_size]`` to
        ``[N, num_classes]``.
    """
    _positive_int("in_channels", in_channels)
    _positive_int("num_classes", num_classes)
    chans = _int_list("channels", channels)
    size = _positive_int("input_size", input_size)
    k = _positive_int("kernel_size", kernel_size)
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {k}")
    dense = _int_list("hidden", hidden)
    p = _probability("dropout", dropout)
    if size >> len(chans) < 1:
        raise ValueError(
            f"input_size {size} is too small for {len(chans)} pooling blocks "
            f"(each halves it); use fewer channels entries or larger inputs"
        )
    layers: list[nn.Module] = []
    c = in_channels
    for c_out in chans:
        layers.append(nn.Conv2d(c, c_out, k, padding=k // 2, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [_activation(activation), nn.MaxPool2d(2)]
        c, size = c_out, size // 2
    layers.append(nn.Flatten())
    width = c * size * size
    for h in dense:
        if p > 0:
            layers.append(nn.Dropout(p))
        layers.append(nn.Linear(width, h, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(_activation(activation))
        width = h
    if p > 0:
        layers.append(nn.Dropout(p))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# -------------------------------------------------------------------------- ResNet


class _Shortcut(nn.Module):
    """Option-A shortcut of He et al. (2016) for CIFAR: subsample by ``stride`` and
    zero-pad the new channels (parameter free)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, c_out - c_in

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` with 3x3 convolutions."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str, batchnorm: bool):
        super().__init__()
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d if batchnorm else _identity
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batchnorm)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not batchnorm)
        self.bn2 = norm(c_out)
        self.act = nn.ReLU()
        if stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _Shortcut(c_in, c_out, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=not batchnorm), norm(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


def _identity(_: int) -> nn.Module:
    return nn.Identity()


def resnet(
    depth: int = 20,
    num_classes: int = 10,
    width: int = 16,
    in_channels: int = 3,
    *,
    shortcut: str = "A",
    batchnorm: bool = True,
) -> nn.Sequential:
    """CIFAR-style ResNet of He et al. (2016, Sec. 4.2): a 3x3 stem, three stages of
    ``(depth - 2) / 6`` basic blocks with ``width, 2 width, 4 width`` channels (the
    2nd and 3rd stage halve the spatial size), global average pooling and a linear
    classifier. ``depth=20, width=16`` is the 0.27M-parameter ResNet-20; a smaller
    ``width`` (e.g. 4) gives a model small enough for dense Hessians.

    Args:
        depth: ``6 n + 2`` for ``n >= 1`` (8, 14, 20, 32, 44, 56, 110).
        num_classes: output width.
        width: channels of the first stage.
        in_channels: channels of the input images (any spatial size works).
        shortcut: ``"A"`` (subsample + zero padding, parameter free, as in the paper
            for CIFAR) or ``"B"`` (1x1 convolution projection) where shapes change.
        batchnorm: use ``BatchNorm2d`` after every convolution (else no normalisation
            and biased convolutions).

    Returns:
        ``nn.Sequential`` mapping ``[N, in_channels, H, W]`` to ``[N, num_classes]``.
    """
    _positive_int("depth", depth)
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
    _positive_int("num_classes", num_classes)
    _positive_int("width", width)
    _positive_int("in_channels", in_channels)
    if shortcut not in ("A", "B"):
        raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
    n = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=not batchnorm)]
    layers += [nn.BatchNorm2d(width) if batchnorm else nn.Identity(), nn.ReLU()]
    c = width
    for stage, c_out in enumerate((width, 2 * width, 4 * width)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(BasicBlock(c, c_out, stride, shortcut, batchnorm))
            c = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def resnet20(
    num_classes: int = 10,
    width: int = 16,
    in_channels: int = 3,
    *,
    shortcut: str = "A",
    batchnorm: bool = True,
) -> nn.Sequential:
    """ResNet-20 for CIFAR (:func:`resnet` with ``depth=20``); ``width=16`` is the
    original 0.27M-parameter network, smaller widths give proportionally smaller ones."""
    return resnet(20, num_classes, width, in_channels, shortcut=shortcut, batchnorm=batchnorm)


# ----------------------------------------------------------------------------- VGG


def vgg(
    cfg: Sequence[int | str] = (16, "M", 32, "M", 64, 64, "M"),
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
    *,
    hidden: Sequence[int] = (64,),
    batchnorm: bool = True,
    dropout: float = 0.0,
) -> nn.Sequential:
    """VGG-style network (Simonyan & Zisserman, 2015), scaled down.

    Args:
        cfg: the feature extractor: an integer is a 3x3 convolution with that many
            output channels followed by (BN and) ReLU, ``"M"`` is a 2x2 max pool.
        in_channels: channels of the input images.
        num_classes: output width.
        input_size: height = width of the input images, needed to size the classifier.
        hidden: widths of the dense layers of the classifier.
        batchnorm: ``BatchNorm2d`` after every convolution.
        dropout: dropout probability before every dense layer.

    Returns:
        ``nn.Sequential`` mapping ``[N, in_channels, input_size, input_size]`` to
        ``[N, num_classes]``.
    """
    _positive_int("in_channels", in_channels)
    _positive_int("num_classes", num_classes)
    size = _positive_int("input_size", input_size)
    dense = _int_list("hidden", hidden)
    p = _probability("dropout", dropout)
    if isinstance(cfg, str) or not isinstance(cfg, Sequence):
        raise ValueError(f"cfg must be a list of channel counts and 'M', got {cfg!r}")
    layers: list[nn.Module] = []
    c = in_channels
    for i, item in enumerate(cfg):
        if item == "M":
            if size < 2:
                raise ValueError(f"cfg[{i}]: cannot max-pool a {size}x{size} feature map")
            layers.append(nn.MaxPool2d(2))
            size //= 2
        else:
            c_out = _positive_int(f"cfg[{i}] (channels or 'M')", item)
            layers.append(nn.Conv2d(c, c_out, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU())
            c = c_out
    layers.append(nn.Flatten())
    width = c * size * size
    for h in dense:
        if p > 0:
            layers.append(nn.Dropout(p))
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    if p > 0:
        layers.append(nn.Dropout(p))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------- Transformers


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


class _Encoder(nn.Module):
    """Tokens ``[N, T, dim]`` (+ learned positions, optional CLS token) -> blocks ->
    LayerNorm -> pooled ``[N, dim]`` -> linear head."""

    def __init__(self, tokens: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                 dropout: float, pool: str, num_classes: int) -> None:
        super().__init__()
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


def _check_transformer_args(dim: Any, depth: Any, heads: Any, mlp_ratio: Any, dropout: Any):
    _positive_int("dim", dim)
    _positive_int("heads", heads)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be a non-negative integer, got {depth!r}")
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
    return float(mlp_ratio), _probability("dropout", dropout)


def vit(
    image_size: int = 32,
    patch_size: int = 4,
    in_channels: int = 3,
    num_classes: int = 10,
    *,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    dropout: float = 0.0,
    pool: str = "cls",
) -> ViT:
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
    _positive_int("image_size", image_size)
    _positive_int("patch_size", patch_size)
    _positive_int("in_channels", in_channels)
    _positive_int("num_classes", num_classes)
    ratio, p = _check_transformer_args(dim, depth, heads, mlp_ratio, dropout)
    return ViT(image_size, patch_size, in_channels, num_classes, dim, depth, heads, ratio, p,
               pool)


def transformer(
    in_features: int = 8,
    seq_len: int = 8,
    num_classes: int = 10,
    *,
    dim: int = 32,
    depth: int = 1,
    heads: int = 2,
    mlp_ratio: float = 2.0,
    dropout: float = 0.0,
    pool: str = "mean",
) -> SequenceTransformer:
    """Tiny transformer encoder classifier on sequences of feature vectors.

    Inputs ``[N, ...]`` with ``seq_len * in_features`` values per example are read as
    ``[N, seq_len, in_features]``: the defaults read an 8x8 digits image (``[N, 64]``
    or ``[N, 1, 8, 8]``) as a sequence of its 8 rows. Each element is embedded
    linearly to ``dim``, learned positions are added, then come ``depth`` encoder
    blocks (as in :func:`vit`) and CLS or mean pooling into a linear head.

    Returns:
        module mapping ``[N, seq_len, in_features]`` to ``[N, num_classes]``.
    """
    _positive_int("in_features", in_features)
    _positive_int("seq_len", seq_len)
    _positive_int("num_classes", num_classes)
    ratio, p = _check_transformer_args(dim, depth, heads, mlp_ratio, dropout)
    return SequenceTransformer(in_features, seq_len, num_classes, dim, depth, heads, ratio, p,
                               pool)


# ------------------------------------------------------------------------ registry

MODELS: dict[str, str] = {
    "mlp": "curvature.models:mlp",
    "cnn": "curvature.models:cnn",
    "resnet20": "curvature.models:resnet20",
    "resnet": "curvature.models:resnet",
    "vgg": "curvature.models:vgg",
    "vit": "curvature.models:vit",
    "transformer": "curvature.models:transformer",
}
"""Short model names accepted by :func:`build_model` and the CLI, and their factories."""


def resolve_factory(factory: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"`` (or a short name in :data:`MODELS`).

    The module is imported with :func:`importlib.import_module` and the attribute
    (a dotted path such as ``"Class.method"`` is allowed) is looked up with
    ``getattr``; nothing else is evaluated.

    Raises:
        ModelFactoryError: malformed string, missing module or attribute, or not callable.
    """
    if not isinstance(factory, str) or not factory.strip():
        raise ModelFactoryError(
            f"model factory must be a non-empty string 'package.module:function' or one of "
            f"{sorted(MODELS)}, got {factory!r}"
        )
    spec = MODELS.get(factory, factory)
    if spec.count(":") != 1:
        raise ModelFactoryError(
            f"model factory {factory!r} is neither a known model ({', '.join(sorted(MODELS))}) "
            f"nor of the form 'package.module:function'"
        )
    module_name, attr = spec.split(":")
    if not module_name or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise ModelFactoryError(
            f"model factory {factory!r} must be of the form 'package.module:function'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelFactoryError(
            f"model factory {factory!r}: cannot import module {module_name!r} ({e})"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelFactoryError(
                f"model factory {factory!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise ModelFactoryError(
            f"model factory {factory!r} names a {type(obj).__name__}, which is not callable"
        )
    return obj


def is_model_factory(obj: Any) -> bool:
    """Whether ``obj`` declares that it builds models: an ``nn.Module`` subclass, or a
    function whose return annotation is one (as every factory in this module)."""
    if inspect.isclass(obj):
        return issubclass(obj, nn.Module)
    try:
        ret = inspect.signature(obj, eval_str=True).return_annotation
    except (TypeError, ValueError, NameError, SyntaxError, AttributeError):
        return False
    return inspect.isclass(ret) and issubclass(ret, nn.Module)


def build_model(factory: str, **kwargs: Any) -> nn.Module:
    """Build a model from a factory string and keyword arguments.

    Args:
        factory: ``"package.module:function"`` (e.g. ``"curvature.models:mlp"``) or a
            short name from :data:`MODELS` (e.g. ``"mlp"``).
        **kwargs: keyword arguments of the factory.

    Returns:
        the ``nn.Module`` the factory returns. Weights are drawn from PyTorch's global
        generator: call ``torch.manual_seed`` first for reproducible weights.

    Raises:
        ModelFactoryError: the factory cannot be resolved, rejects the arguments, or
            does not return an ``nn.Module``.
    """
    fn = resolve_factory(factory)
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise ModelFactoryError(
            f"model factory {factory!r} does not accept the arguments {kwargs}: {e}"
        ) from None
    except ValueError:  # builtins without a signature: let the call decide
        pass
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelFactoryError(
            f"model factory {factory!r} returned a {type(model).__name__}, not an nn.Module"
        )
    return model


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of scalar parameters (those with ``requires_grad`` unless
    ``trainable_only=False``); shared parameters are counted once."""
    return sum(
        p.numel() for p in model.parameters() if p.requires_grad or not trainable_only
    )


def default_kwargs(
    name: str, input_shape: Sequence[int], num_outputs: int
) -> dict[str, Any]:
    """Keyword arguments that fit the zoo model ``name`` to a data shape.

    Args:
        name: a short name from :data:`MODELS`.
        input_shape: shape of one example, without the batch dimension
            (``[64]``, ``[1, 8, 8]``, ``[3, 32, 32]``, ``[T, F]``).
        num_outputs: number of classes (or regression outputs).

    Returns:
        e.g. ``{"in_features": 64, "num_classes": 10}`` for ``"mlp"``; the caller may
        add or override any other argument.
    """
    shape = [int(s) for s in input_shape]
    numel = math.prod(shape)
    kw: dict[str, Any] = {"num_classes": int(num_outputs)}
    if name == "mlp":
        return {"in_features": numel, **kw}
    if name == "transformer":
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) == 2:
            return {"seq_len": shape[0], "in_features": shape[1], **kw}
        side = math.isqrt(numel)
        if side * side == numel:
            return {"seq_len": side, "in_features": side, **kw}
        return {"seq_len": 1, "in_features": numel, **kw}
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(
            f"model {name!r} needs square images [C, S, S], got input shape {list(input_shape)}"
        )
    c, s = shape[0], shape[1]
    if name in ("resnet", "resnet20"):
        return {"in_channels": c, **kw}
    if name in ("cnn", "vgg"):
        return {"in_channels": c, "input_size": s, **kw}
    patch = next(p for p in (4, 2, 1) if s % p == 0 and s // p >= 2 or p == 1)
    return {"image_size": s, "patch_size": patch, "in_channels": c, **kw}
