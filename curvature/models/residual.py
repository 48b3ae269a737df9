"""The residual networks of the zoo: CIFAR-style :func:`resnet` and :func:`resnet20`
(He et al., 2016, "Deep Residual Learning for Image Recognition", Sec. 4.2)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from curvature.models.arguments import positive_int, positive_ints

__all__ = ["BasicBlock", "resnet", "resnet20"]


class _Shortcut(nn.Module):
    """Option-A shortcut of He et al. (2016) for CIFAR: subsample by ``stride`` and
    zero-pad the new channels (parameter free)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, c_out - c_in

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra))


def _identity(_: int) -> nn.Module:
    return nn.Identity()


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
    positive_int(depth, "depth")
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
    positive_ints(num_classes=num_classes, width=width, in_channels=in_channels)
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


def resnet20(num_classes: int = 10, width: int = 16, in_channels: int = 3, *,
             shortcut: str = "A", batchnorm: bool = True) -> nn.Sequential:
    """ResNet-20 for CIFAR (:func:`resnet` with ``depth=20``); ``width=16`` is the
    original 0.27M-parameter network, smaller widths give proportionally smaller ones."""
    return resnet(20, num_classes, width, in_channels, shortcut=shortcut, batchnorm=batchnorm)
