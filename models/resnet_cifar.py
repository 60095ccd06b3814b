"""The CIFAR ResNets of He et al. 2016: ResNet-20/32/44/56/110.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv:1512.03385), Section 4.2: a 3x3 conv with 16 filters, then three stages of
``n`` basic blocks with 16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps, global
average pooling and a linear classifier; depth ``6n + 2``.

Shortcuts use option A of the paper (identity; when the shape changes, subsample
by 2 and zero-pad the new channels), which is what the paper used for its CIFAR
results: it adds no parameters, so these models are the ones with the published
parameter counts (0.27M for ResNet-20, 1.7M for ResNet-110).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .resnet import BasicBlock


class PadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling and zero channels, no parameters.

    Args:
        in_planes: input channels.
        out_planes: output channels (``>= in_planes``); the extra ones are zeros,
            split evenly before and after the existing ones.
        stride: spatial subsampling factor.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad's tuple runs from the last dimension backwards: (W, W, H, H, C, C).
        return F.pad(x, (0, 0, 0, 0, self.pad[0], self.pad[1]))


def option_a_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when shapes agree, else the parameter-free :class:`PadShortcut` (option A)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return PadShortcut(in_planes, out_planes, stride)


class CifarResNet(nn.Module):
    """ResNet of depth ``6 * blocks_per_stage + 2`` for 32x32 images.

    Args:
        blocks_per_stage: ``n`` in the paper (3 for ResNet-20, 18 for ResNet-110).
        num_classes: output logits.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stage = []
            for s in [stride] + [1] * (blocks_per_stage - 1):
                stage.append(BasicBlock(in_planes, planes, s, shortcut=option_a_shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        # The paper initialises as in He et al. 2015 ("Delving deep into
        # rectifiers"): N(0, 2 / fan_in) for the convolutions.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.pool(out), 1))


# Blocks per stage n, depth 6n + 2 (He et al. 2016, Section 4.2).
CONFIGS: dict[str, int] = {
    "resnet20": 3,
    "resnet32": 5,
    "resnet44": 7,
    "resnet56": 9,
    "resnet110": 18,
}


def build(name: str, num_classes: int) -> CifarResNet:
    """Build the He et al. CIFAR ResNet called ``name``.

    Args:
        name: a key of ``CONFIGS``.
        num_classes: output logits.
    """
    return CifarResNet(CONFIGS[name], num_classes)
