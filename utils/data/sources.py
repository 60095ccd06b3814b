"""The batch source of one part of a dataset: resident tensors, DataLoader workers, or device JPEG decoding.

The one place that chooses between :class:`~utils.data.batches.TensorBatches`,
:class:`~utils.data.batches.FolderBatches` and :class:`~utils.data.jpeg.DeviceJpegBatches`.
"""
from __future__ import annotations

import torch

from utils.data.batches import FolderBatches, TensorBatches
from utils.data.datasets import ArrayDataset, DatasetInfo
from utils.data.jpeg import DeviceJpegBatches
from utils.errors import UserError


# Where a stage's batches come from: an in-memory dataset on the device, or an image folder read by
# DataLoader workers (DeviceJpegBatches, a FolderBatches, decodes on the GPU).
BatchSource = TensorBatches | FolderBatches


def make_batches(part, info: DatasetInfo, device: torch.device, workers: int = 4, decode: str = "cpu") -> BatchSource:
    """The batch source for one part (train or test) of a loaded dataset; ``decode`` says where an
    ImageFolder's JPEGs are decoded (in-memory datasets are decoded already)."""
    if isinstance(part, ArrayDataset):
        return TensorBatches(part, info, device)
    if decode == "gpu":
        if torch.device(device).type != "cuda":
            raise UserError("--decode gpu needs a CUDA device (nvJPEG); use --decode cpu")
        return DeviceJpegBatches(part, info, device, workers)
    return FolderBatches(part, info, device, workers)
