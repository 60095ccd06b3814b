"""CIFAR-size ResNet-18/34/50/101/152, the backbones used by the CLD paper.

Architecture: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016 (arXiv:1512.03385), adapted to 32x32 inputs the way the CLD paper's code
(``Utils/model_archs/resnet_K.py`` of manishnagaraj/CLD_Coresets_from_Trajectories)
does: a 3x3 stride-1 stem and no max-pool, so the four stages see 32, 16, 8 and 4
pixels. Shortcuts are projections (1x1 conv + BN) whenever the shape changes.

Module names (``conv1``, ``bn1``, ``layer1``..``layer4``, ``shortcut``, ``linear``)
match the paper code so that its checkpoints load into these models.
"""

from typing import Callable, TypedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    Args:
        in_planes: input channels.
        planes: channels of the convolutions; the block outputs ``planes * expansion``.
        stride: stride of the first convolution (2 halves the resolution).
        shortcut: builds the residual path from (in_planes, out_planes, stride); default the
            paper code's identity-or-1x1-projection (option B).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 shortcut: Callable[[int, int, int], nn.Module] | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (shortcut or _shortcut)(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection (ResNet-50/101/152).

    Args:
        in_planes: input channels.
        planes: channels of the inner convolutions; the block outputs ``planes * 4``.
        stride: stride of the 3x3 convolution, as in the paper code (and torchvision).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity when shapes agree, else a 1x1 projection (the paper's option B).

    An empty ``nn.Sequential`` is the identity and keeps the paper code's
    ``shortcut.0`` / ``shortcut.1`` state-dict keys for the projection case.
    """
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ResNet(nn.Module):
    """ResNet for 32x32 images: 3x3 stem, four stages of 64/128/256/512 planes.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in each of the four stages.
        num_classes: output logits.
    """

    def __init__(
        self, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int, int], num_classes: int
    ) -> None:
        super().__init__()
        # A 7x7/2 stem and a max-pool would leave 1x1 maps at the last stage on
        # 32x32 inputs; the CIFAR variant keeps full resolution in the first stage.
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            stage = []
            for s in [stride] + [1] * (blocks - 1):
                stage.append(block(in_planes, planes, s))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # Global average pooling; on 32x32 inputs this is the paper's avg_pool2d(4).
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))


class ResNetConfig(TypedDict):
    block: type[BasicBlock | Bottleneck]
    layers: tuple[int, int, int, int]


# Stage depths from He et al. 2016, Table 1.
CONFIGS: dict[str, ResNetConfig] = {
    "resnet18": {"block": BasicBlock, "layers": (2, 2, 2, 2)},
    "resnet34": {"block": BasicBlock, "layers": (3, 4, 6, 3)},
    "resnet50": {"block": Bottleneck, "layers": (3, 4, 6, 3)},
    "resnet101": {"block": Bottleneck, "layers": (3, 4, 23, 3)},
    "resnet152": {"block": Bottleneck, "layers": (3, 8, 36, 3)},
}


def build(name: str, num_classes: int) -> ResNet:
    """Build the CIFAR ResNet called ``name``.

    Args:
        name: a key of ``CONFIGS``.
        num_classes: output logits.
    """
    return ResNet(num_classes=num_classes, **CONFIGS[name])
