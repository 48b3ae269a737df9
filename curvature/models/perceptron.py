"""The fully connected network of the zoo: :func:`mlp`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from curvature.models.arguments import activation as make_activation
from curvature.models.arguments import int_list, positive_int, probability

__all__ = ["mlp"]


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
    widths = [positive_int(in_features, "in_features"), *int_list(hidden, "hidden")]
    positive_int(num_classes, "num_classes")
    p = probability(dropout, "dropout")
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:]):
        layers.append(nn.Linear(a, b, bias=bias))
        if batchnorm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(make_activation(activation))
        if p > 0:
            layers.append(nn.Dropout(p))
    layers.append(nn.Linear(widths[-1], num_classes, bias=bias))
    return nn.Sequential(*layers)
