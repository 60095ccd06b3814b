"""AlexNet for 32x32 images, as in the CLD paper's code.

Architecture: Krizhevsky, "One weird trick for parallelizing convolutional neural
networks", arXiv:1404.5997 (the single-GPU AlexNet of 64-192-384-256-256 filters).
The CIFAR version follows the CLD paper's ``Utils/model_archs/alexnet.py`` (from
Wei Yang's pytorch-classification): paddings adjusted so that a 32x32 image leaves
the five convolutions and three max-pools as one 256-channel pixel (32 -> 8 -> 4
-> 2 -> 1), and the fully connected layers replaced by one ``Linear(256, C)``. No
batch norm (the paper code's note: start with learning rate 0.01).

Module names (``features.<i>``, ``classifier``) match the paper code.
"""

import torch
import torch.nn as nn


class AlexNet(nn.Module):
    """CIFAR AlexNet: five convolutions, three max-pools, one linear classifier.

    Args:
        num_classes: output logits.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))

