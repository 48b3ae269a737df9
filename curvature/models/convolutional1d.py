"""A 1-D convolutional network for signals such as MNIST-1D: :func:`cnn1d`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from curvature.models.arguments import activation as make_activation
from curvature.models.arguments import int_list, positive_int, positive_ints, probability
from curvature.models.convolutional import classifier

__all__ = ["AddChannel", "cnn1d"]


class AddChannel(nn.Module):
    """``[N, L] -> [N, 1, L]``; a 3-D input ``[N, C, L]`` passes through unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            return x.unsqueeze(1)
        if x.ndim != 3:
            raise ValueError(f"cnn1d expects inputs [N, L] or [N, C, L], got shape {list(x.shape)}")
        return x


def cnn1d(
    in_channels: int = 1,
    num_classes: int = 10,
    channels: Sequence[int] = (32, 32, 32),
    input_length: int = 40,
    *,
    kernel_size: int = 5,
    hidden: Sequence[int] = (),
    activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Sequential:
    """Small 1-D convolutional network: ``[conv1d (stride 2) -> act] x len(channels)``,
    then flatten, optional dense hidden layers, dropout and a linear classifier.

    Shaped like the convolutional baseline of MNIST-1D (Greydanus & Kobak, ICML 2024):
    strided convolutions instead of pooling. Each convolution has ``kernel_size // 2``
    zero padding and stride 2, so a length ``L`` becomes ``(L - 1) // 2 + 1`` (odd
    kernel); the defaults map MNIST-1D's 40 samples to 20, 10, 5.

    Inputs are ``[N, input_length]`` (one channel, MNIST-1D's ``[N, 40]`` as the data
    specs give it, so MLPs and this network read the same tensors) or
    ``[N, in_channels, input_length]``.

    Args:
        in_channels: channels of the input signal.
        num_classes: output width.
        channels: output channels of each convolution.
        input_length: number of samples of the input signal, needed to size the classifier.
        kernel_size: odd convolution kernel size.
        hidden: widths of dense hidden layers before the classifier.
        activation: activation name (see :func:`curvature.models.mlp`).
        dropout: dropout probability before every dense layer.

    Returns:
        ``nn.Sequential`` mapping ``[N, input_length]`` or ``[N, in_channels,
        input_length]`` to ``[N, num_classes]``.
    """
    positive_ints(in_channels=in_channels, num_classes=num_classes)
    length = positive_int(input_length, "input_length")
    chans = int_list(channels, "channels")
    dense = int_list(hidden, "hidden") if hidden else []
    p = probability(dropout, "dropout")
    k = positive_int(kernel_size, "kernel_size")
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {k}")
    layers: list[nn.Module] = [AddChannel()]
    c = in_channels
    for c_out in chans:
        layers += [nn.Conv1d(c, c_out, k, stride=2, padding=k // 2), make_activation(activation)]
        c, length = c_out, (length - 1) // 2 + 1
    layers += classifier(c * length, dense, num_classes, p, activation=activation)
    return nn.Sequential(*layers)
