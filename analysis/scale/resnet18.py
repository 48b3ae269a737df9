"""ResNet-18 for CIFAR-shaped inputs, written the way a user writes a model factory for
``curvature analyze --model analysis.scale.resnet18:resnet18_cifar`` (no torchvision).

The CIFAR variant of He et al. (2016), "Deep Residual Learning for Image Recognition":
ImageNet ResNet-18's four stages of two :class:`BasicBlock` each (64, 128, 256, 512
channels, strides 1, 2, 2, 2) with a 3x3 stride-1 stem and no max-pool, projection
shortcuts (1x1 convolution + batch norm) where the shape changes, global average
pooling and a linear classifier. At ``width=1`` and 10 classes it has 11,173,962
parameters. ``width`` scales every channel count (``round(64 * width)`` in the stem), for
the cost-against-size sweep of :mod:`analysis.scale`.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet18", "resnet18_cifar"]


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, 3x3 convolutions."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out))
        return (out + self.shortcut(x)).relu()


class ResNet18(nn.Module):
    """Stem, ``layer1`` .. ``layer4`` (two blocks each), average pool, ``fc``.

    Input ``Tensor[B, 3, H, W]`` (CIFAR: 32 x 32), output logits ``Tensor[B, classes]``.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, channels: int = 3) -> None:
        super().__init__()
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, c_in = [], widths[0]
        for i, c in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, c, stride), BasicBlock(c, c, 1)))
            c_in = c
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(out.mean(dim=(2, 3)))


def resnet18_cifar(num_classes: int = 10, width: float = 1.0, seed: int = 0) -> ResNet18:
    """A freshly initialised CIFAR ResNet-18 (PyTorch's default initialisation under
    ``torch.manual_seed(seed)``); ``width`` scales the channels (1.0: 11.17M parameters)."""
    import torch

    if not (isinstance(width, (int, float)) and width > 0):
        raise ValueError(f"width must be a positive number, got {width!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ResNet18(num_classes=num_classes, width=float(width))
