"""DenseNet-BC for 32x32 images: DenseNet-BC-100 (k=12) and a CIFAR DenseNet-121.

Architecture: Huang, Liu, van der Maaten, Weinberger, "Densely Connected
Convolutional Networks", CVPR 2017 (arXiv:1608.06993). "BC" = bottleneck layers
(BN-ReLU-1x1 conv to 4k channels, BN-ReLU-3x3 conv to k channels) and compression
(transitions keep a fraction theta = 0.5 of the channels, then 2x2 average-pool).

* ``densenet_bc100`` (alias ``densenet``, the name the CLD paper's code uses) is the
  paper's CIFAR model: depth 100, growth rate 12, three dense blocks of
  (100 - 4) / 6 = 16 bottleneck layers, a 3x3 stem of 2k channels. The CLD code
  builds it with Wei Yang's pytorch-classification ``densenet(depth=100,
  growthRate=12, compressionRate=2, dropRate=0)``; ``compressionRate=2`` is
  theta = 0.5 and dropout is off, so there is none here.
* ``densenet121`` keeps ImageNet DenseNet-121's growth rate 32 and blocks
  6/12/24/16 but, like the CIFAR ResNets, replaces the 7x7/2 stem and max-pool by a
  3x3 stride-1 convolution so that the last block still sees 4x4 maps.

Module names for the three-block model (``conv1``, ``dense1``, ``trans1``, ...,
``bn``, ``fc``) match pytorch-classification so that the paper's checkpoints load.
"""

import math
from collections import OrderedDict
from typing import TypedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    """BN-ReLU-1x1 conv (4k) - BN-ReLU-3x3 conv (k), concatenated to the input.

    Args:
        in_planes: input channels; the layer outputs ``in_planes + growth_rate``.
        growth_rate: ``k``, channels each layer adds.
    """

    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        inner = 4 * growth_rate  # the paper's 4k bottleneck width
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, inner, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat((x, out), 1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (compression) and 2x2 average-pool between dense blocks.

    Args:
        in_planes: input channels.
        out_planes: output channels.
    """

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class DenseNet(nn.Sequential):
    """DenseNet-BC for 32x32 images.

    A ``Sequential`` with named children, so that the state-dict keys are the
    flat ``conv1`` / ``dense<i>`` / ``trans<i>`` / ``bn`` / ``fc`` of the paper code.

    Args:
        growth_rate: ``k``, channels added by each bottleneck layer.
        block_layers: bottleneck layers in each dense block.
        compression: ``theta``, the fraction of channels a transition keeps.
        num_classes: output logits.
    """

    def __init__(
        self, growth_rate: int, block_layers: tuple[int, ...], compression: float, num_classes: int
    ) -> None:
        planes = 2 * growth_rate  # the paper's stem width for DenseNet-BC
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv1"] = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        for i, n in enumerate(block_layers, start=1):
            block = []
            for _ in range(n):
                block.append(Bottleneck(planes, growth_rate))
                planes += growth_rate
            layers[f"dense{i}"] = nn.Sequential(*block)
            if i < len(block_layers):
                out_planes = int(math.floor(planes * compression))
                layers[f"trans{i}"] = Transition(planes, out_planes)
                planes = out_planes
        layers["bn"] = nn.BatchNorm2d(planes)
        layers["relu"] = nn.ReLU(inplace=True)
        # Global average pooling: the paper code's AvgPool2d(8) on 32x32 inputs.
        layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten(1)
        layers["fc"] = nn.Linear(planes, num_classes)
        super().__init__(layers)
        # As in the paper code: He et al. 2015 normal init (fan-out) for the
        # convolutions; BN and the classifier keep PyTorch's defaults.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class DenseNetConfig(TypedDict):
    growth_rate: int
    block_layers: tuple[int, ...]
    compression: float


_BC100: DenseNetConfig = {"growth_rate": 12, "block_layers": (16, 16, 16), "compression": 0.5}

CONFIGS: dict[str, DenseNetConfig] = {
    "densenet": _BC100,  # the CLD paper code's name for DenseNet-BC-100
    "densenet_bc100": _BC100,
    "densenet121": {"growth_rate": 32, "block_layers": (6, 12, 24, 16), "compression": 0.5},
}


def build(name: str, num_classes: int) -> DenseNet:
    """Build the CIFAR DenseNet called ``name``.

    Args:
        name: a key of ``CONFIGS``.
        num_classes: output logits.
    """
    return DenseNet(num_classes=num_classes, **CONFIGS[name])
