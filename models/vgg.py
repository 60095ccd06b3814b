"""VGG-11/13/16/19, with and without batch norm, for 32x32 images.

Architecture: Simonyan and Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", ICLR 2015 (arXiv:1409.1556), configurations A, B,
D and E; batch norm after each convolution as in Ioffe and Szegedy 2015. The CIFAR
version follows the CLD paper's code (``Utils/model_archs/vgg.py``, itself from
Wei Yang's pytorch-classification): the three fully connected layers are replaced
by one ``Linear(512, num_classes)``, because five max-pools turn a 32x32 image
into a single 512-channel pixel. Initialisation follows the same code.

Module names (``features.<i>``, ``classifier``) match the paper code so that its
checkpoints load into these models.
"""

from typing import TypedDict

import torch
import torch.nn as nn

# Channels of each 3x3 convolution; "M" is a 2x2 max-pool (Simonyan & Zisserman, Table 1).
LAYOUTS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG convolution stack followed by a single linear classifier.

    Args:
        layout: a key of ``LAYOUTS``.
        batch_norm: insert ``BatchNorm2d`` after every convolution.
        num_classes: output logits.
    """

    def __init__(self, layout: str, batch_norm: bool, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in LAYOUTS[layout]:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            assert isinstance(v, int)
            layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            in_channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # As in the paper code: He et al. 2015 normal init (fan-out) for the
        # convolutions, which keeps activations scaled through up to 16 ReLU layers
        # when there is no batch norm to do it; N(0, 0.01) for the classifier.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class VGGConfig(TypedDict):
    layout: str
    batch_norm: bool


CONFIGS: dict[str, VGGConfig] = {
    "vgg11": {"layout": "A", "batch_norm": False},
    "vgg13": {"layout": "B", "batch_norm": False},
    "vgg16": {"layout": "D", "batch_norm": False},
    "vgg19": {"layout": "E", "batch_norm": False},
    "vgg11_bn": {"layout": "A", "batch_norm": True},
    "vgg13_bn": {"layout": "B", "batch_norm": True},
    "vgg16_bn": {"layout": "D", "batch_norm": True},
    "vgg19_bn": {"layout": "E", "batch_norm": True},
}


def build(name: str, num_classes: int) -> VGG:
    """Build the CIFAR VGG called ``name``.

    Args:
        name: a key of ``CONFIGS``.
        num_classes: output logits.
    """
    return VGG(num_classes=num_classes, **CONFIGS[name])
