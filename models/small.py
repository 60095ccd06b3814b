"""A small CNN for the embedded 8x8 handwritten digits (made 32x32 by repeating each pixel 4x4).

The demo trains hundreds of coreset models on a CPU in minutes, so its model must converge in a
few hundred SGD steps and cost little per step: the 32x32 input is averaged back to its 8x8
pixels (exactly, since each was repeated 4x4), then three 3x3 convolutions with batch norm (16
and 32 channels on 8x8, a 2x2 max-pool, 64 channels on 4x4), global average pooling and a
linear classifier: 24,000 parameters, about 2 ms per SGD step of 20 images on one CPU thread.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU x 2, max-pool, Conv-BN-ReLU on the 8x8 pixels, then a linear classifier.

    Args:
        num_classes: output logits.
        width: channels of the first convolution (doubled by each of the next two).
    """

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.linear = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 32:  # undo the 4x4 pixel repetition of the embedded digits
            x = F.avg_pool2d(x, 4)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.max_pool2d(F.relu(self.bn2(self.conv2(out))), 2)
        out = F.relu(self.bn3(self.conv3(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def build(name: str, num_classes: int) -> nn.Module:
    """Build the small model called ``name``."""
    return CONFIGS[name](num_classes)


CONFIGS = {"digits_cnn": DigitsCNN}
