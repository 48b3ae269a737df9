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
``cnn1d``       :func:`cnn1d`                         ``[N, L]`` or ``[N, C, L]``
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

Rooms: :mod:`~curvature.models.perceptron` (``mlp``),
:mod:`~curvature.models.convolutional` (``cnn``, ``vgg``),
:mod:`~curvature.models.convolutional1d` (``cnn1d``),
:mod:`~curvature.models.residual` (``resnet``, ``resnet20``),
:mod:`~curvature.models.attention` (``vit``, ``transformer``),
:mod:`~curvature.models.arguments` (checks of the factories' arguments),
:mod:`~curvature.models.factory` (names and ``"package.module:function"`` strings to
models), :mod:`~curvature.models.sizing` (fitting a zoo model to a data shape, counting
parameters). The factories are named here, so ``"curvature.models:mlp"`` is the
recorded name of each.
"""

from __future__ import annotations

from curvature.errors import ModelFactoryError
from curvature.models.attention import (
    MultiHeadSelfAttention,
    SequenceTransformer,
    TransformerBlock,
    ViT,
    transformer,
    vit,
)
from curvature.models.convolutional import cnn, vgg
from curvature.models.convolutional1d import cnn1d
from curvature.models.factory import MODELS, build_model, is_model_factory, resolve_factory
from curvature.models.perceptron import mlp
from curvature.models.residual import BasicBlock, resnet, resnet20
from curvature.models.sizing import count_parameters, default_kwargs

__all__ = [
    "MODELS",
    "BasicBlock",
    "ModelFactoryError",
    "MultiHeadSelfAttention",
    "SequenceTransformer",
    "TransformerBlock",
    "ViT",
    "build_model",
    "cnn",
    "cnn1d",
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
