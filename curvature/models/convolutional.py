"""The plain convolutional networks of the zoo: :func:`cnn` and :func:`vgg`.

Both are a convolutional feature extractor followed by the same dense classifier
(:func:`classifier`): flatten, optional hidden layers, dropout, a linear output layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from curvature.models.arguments import activation as make_activation
from curvature.models.arguments import int_list, positive_int, positive_ints, probability

__all__ = ["classifier", "cnn", "conv_layer", "vgg"]


def conv_layer(c_in: int, c_out: int, kernel_size: int, activation: str,
               batchnorm: bool) -> list[nn.Module]:
    """``conv -> (BatchNorm2d) -> activation`` with ``same`` padding (odd kernel); the
    convolution has a bias only without batch norm."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=not batchnorm)
    ]
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    return [*layers, make_activation(activation)]


def classifier(width: int, hidden: Sequence[int], num_classes: int, dropout: float, *,
               activation: str = "relu", batchnorm: bool = False) -> list[nn.Module]:
    """``flatten -> [dropout -> linear -> (BatchNorm1d) -> activation] per hidden width ->
    dropout -> linear``, mapping features of ``width`` values to ``[N, num_classes]``
    (dropout only where ``dropout > 0``; hidden layers have a bias only without batch
    norm)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, h, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(make_activation(activation))
        width = h
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return layers


def _head_arguments(in_channels: int, num_classes: int, input_size: int, hidden: Sequence[int],
                    dropout: float) -> tuple[int, list[int], float]:
    """Check the arguments :func:`cnn` and :func:`vgg` share; ``(input_size, hidden,
    dropout)`` as checked values."""
    positive_ints(in_channels=in_channels, num_classes=num_classes)
    return (positive_int(input_size, "input_size"), int_list(hidden, "hidden"),
            probability(dropout, "dropout"))


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
        activation: activation name (see :func:`curvature.models.mlp`).
        batchnorm: ``BatchNorm2d`` after every convolution (``BatchNorm1d`` after
            every dense hidden layer).
        dropout: dropout probability before every dense layer.

    Returns:
        ``nn.Sequential`` mapping ``[N, in_channels, input_size, input_size]`` to
        ``[N, num_classes]``.
    """
    size, dense, p = _head_arguments(in_channels, num_classes, input_size, hidden, dropout)
    chans = int_list(channels, "channels")
    k = positive_int(kernel_size, "kernel_size")
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {k}")
    if size >> len(chans) < 1:
        raise ValueError(
            f"input_size {size} is too small for {len(chans)} pooling blocks "
            f"(each halves it); use fewer channels entries or larger inputs"
        )
    layers: list[nn.Module] = []
    c = in_channels
    for c_out in chans:
        layers += [*conv_layer(c, c_out, k, activation, batchnorm), nn.MaxPool2d(2)]
        c, size = c_out, size // 2
    layers += classifier(c * size * size, dense, num_classes, p, activation=activation,
                         batchnorm=batchnorm)
    return nn.Sequential(*layers)


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
        hidden: widths of the dense layers of the classifier (ReLU, no batch norm).
        batchnorm: ``BatchNorm2d`` after every convolution.
        dropout: dropout probability before every dense layer.

    Returns:
        ``nn.Sequential``, images ``[N, in_channels, input_size, input_size]`` to logits
        ``[N, num_classes]``.
    """
    size, dense, p = _head_arguments(in_channels, num_classes, input_size, hidden, dropout)
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
            c_out = positive_int(item, f"cfg[{i}] (channels or 'M')")
            layers += conv_layer(c, c_out, 3, "relu", batchnorm)
            c = c_out
    layers += classifier(c * size * size, dense, num_classes, p)
    return nn.Sequential(*layers)
