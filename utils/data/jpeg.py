"""ImageFolder batches decoded on the device (nvJPEG on CUDA) instead of in DataLoader workers.

At ImageNet scale one H200 trains ResNet-18 faster than 16 CPU cores decode and resize JPEGs, so
with :class:`utils.data.batches.FolderBatches` the GPU waits for its input. :class:`DeviceJpegBatches`
moves the expensive part onto the device:

* DataLoader workers only read each file's compressed bytes, parse its header (PIL reads the size
  without decoding pixels) and draw the augmentation parameters;
* the main process decodes the whole batch at once with
  ``torchvision.io.decode_jpeg(list_of_byte_tensors, device=device)`` (batched nvJPEG on CUDA,
  libjpeg-turbo on the CPU), then crops, resizes, flips and normalises on the device.

What is identical to the CPU pipeline: the order of examples, the sharding, the per-example seeds
and therefore every crop box and flip (:func:`draw_crop_flip` makes exactly the calls of
``RandomResizedCrop`` + ``RandomHorizontalFlip`` after the same ``torch.manual_seed``), the
evaluation geometry (shorter side to ``round(image_size * 256 / 224)``, centre crop), labels, and
the output format (float32 NCHW in channels_last memory format, on the device).

What differs slightly: pixel values. nvJPEG's IDCT and chroma upsampling are not libjpeg's, and the
resize is ``torch.nn.functional.interpolate`` (bilinear, antialiased) in float32 instead of PIL's
8-bit fixed-point resampler, with no rounding to uint8 in between. Differences are of the order of
one grey level, far below what augmentation changes, but batches are not bit-identical to
``FolderBatches`` and a model trained on one is not bit-reproducible on the other.

When to use which: decode on the GPU (``--decode gpu``) when the CPUs cannot keep up with the
GPUs -- many GPUs per node, few cores per GPU, or a fast model; decode on the CPU (the default)
otherwise, since it keeps the device free for training and matches torchvision's reference
preprocessing exactly.

Files that nvJPEG should not see (not JPEG, e.g. the PNG saved as ``.JPEG`` in ImageNet, or CMYK
JPEGs) are decoded in the worker with the folder's usual PIL conversion to RGB and travel as
pixels; they are rare, so this costs nothing measurable.
"""
from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils.data.batches import FolderBatches, EpochSampler, eval_resize, normaliser
from utils.data.datasets import DatasetInfo
from utils.data.images import BadImage

# RandomResizedCrop's defaults, which FolderBatches uses.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
FLIP_PROBABILITY = 0.5
# PIL modes whose JPEGs nvJPEG decodes to RGB like PIL's convert("RGB") (YCbCr and greyscale).
DEVICE_MODES = ("RGB", "L")

Box = tuple[int, int, int, int]  # (top, left, height, width), as RandomResizedCrop.get_params returns it


# ----------------------------------------------------------------------------- geometry

def _size_only(width: int, height: int) -> torch.Tensor:
    """A (1, height, width) tensor that owns one byte: all ``get_params`` reads is its shape."""
    return torch.zeros(1, dtype=torch.uint8).expand(1, height, width)


def draw_crop_flip(width: int, height: int, seed: int) -> tuple[Box, bool]:
    """The crop box and flip that the CPU training transform draws for an image and a seed.

    The CPU pipeline seeds the global generator, then ``RandomResizedCrop`` calls
    ``get_params(image, scale, ratio)`` and ``RandomHorizontalFlip`` draws ``torch.rand(1) < p``;
    making the same calls in the same order gives the same numbers. ``get_params`` only looks at
    the image's dimensions, so a zero-stride tensor of the header's size stands in for the pixels.

    Args:
        width: image width in pixels (from the file's header).
        height: image height in pixels.
        seed: the example's seed for this epoch (from ``EpochSampler``).

    Returns:
        ``((top, left, crop_height, crop_width), flip)``.
    """
    from torchvision import transforms

    torch.manual_seed(seed)
    box = transforms.RandomResizedCrop.get_params(_size_only(width, height), scale=CROP_SCALE, ratio=CROP_RATIO)
    flip = bool(torch.rand(1) < FLIP_PROBABILITY)
    return tuple(int(v) for v in box), flip


def eval_geometry(height: int, width: int, image_size: int) -> tuple[int, int, int, int]:
    """Where ``Resize(round(image_size * 256 / 224))`` + ``CenterCrop(image_size)`` take an image.

    Follows torchvision's rules: the shorter side becomes ``resize`` and the longer side
    ``int(resize * long / short)`` (truncated); the crop's corner is rounded half to even.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        image_size: side of the square crop.

    Returns:
        ``(resized_height, resized_width, top, left)``: the size to resize to, then the crop's corner.
    """
    resize = eval_resize(image_size)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    return new_h, new_w, top, left


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(3, h, w) uint8 or float -> (3, height, width) float32, bilinear with antialiasing.

    Float input because CUDA's antialiased interpolation has no uint8 kernel; the result is not
    rounded to 8 bits (PIL's is), one of the small differences from the CPU pipeline.
    """
    image = image.float()
    if tuple(image.shape[-2:]) == (height, width):  # F.resize returns such an image unchanged too
        return image
    return F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def train_view(image: torch.Tensor, box: Box, image_size: int) -> torch.Tensor:
    """The ``RandomResizedCrop`` of one decoded image with given parameters (the flip comes later,
    for the whole batch at once: see :func:`flip_where`).

    Args:
        image: (3, H, W) uint8 on the device.
        box: ``(top, left, height, width)`` from :func:`draw_crop_flip`.
        image_size: output side.

    Returns:
        (3, image_size, image_size) float32 in 0..255.
    """
    top, left, h, w = box
    return _resize(image[:, top:top + h, left:left + w], image_size, image_size)


def flip_where(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip left-right the images of a batch where ``flips`` is set, after resizing as on the CPU.

    Two kernels for the whole batch instead of one per flipped image: on CUDA the per-image loop
    is bound by kernel launches, not by arithmetic.

    Args:
        images: (B, C, H, W).
        flips: (B,) bool, on any device.

    Returns:
        (B, C, H, W), a new tensor.
    """
    mask = flips.to(images.device, non_blocking=True).view(-1, 1, 1, 1)
    return torch.where(mask, images.flip(-1), images)


def eval_view(image: torch.Tensor, image_size: int) -> torch.Tensor:
    """``Resize(round(image_size * 256 / 224))`` + ``CenterCrop(image_size)`` of one decoded image.

    Args:
        image: (3, H, W) uint8 on the device.
        image_size: output side.

    Returns:
        (3, image_size, image_size) float32 in 0..255.
    """
    new_h, new_w, top, left = eval_geometry(image.shape[-2], image.shape[-1], image_size)
    return _resize(image, new_h, new_w)[:, top:top + image_size, left:left + image_size]


# ----------------------------------------------------------------------------- workers

class _Example(NamedTuple):
    """What a worker returns for one example."""
    payload: torch.Tensor  # 1-D uint8 file bytes, or (3, H, W) uint8 pixels when ``encoded`` is False
    encoded: bool
    label: int
    index: int
    box: Box
    flip: bool


class _Batch(NamedTuple):
    """One collated batch: the encoded files concatenated into one tensor (one shared-memory block
    per batch instead of one per image), plus the rare images decoded in the worker."""
    blob: torch.Tensor  # concatenated bytes of the encoded files
    lengths: list[int]  # byte count of each encoded file, in batch order among the encoded ones
    pixels: list[torch.Tensor]  # images decoded in the worker, in batch order among those
    encoded: list[bool]
    labels: torch.Tensor
    indices: torch.Tensor
    boxes: torch.Tensor  # (B, 4) int64
    flips: torch.Tensor  # (B,) bool


def _read_example(path: str) -> tuple[torch.Tensor, bool, int, int]:
    """A file's bytes, or its RGB pixels if nvJPEG should not decode it, and its (width, height).

    Returns:
        ``(payload, encoded, width, height)``.
    """
    from torchvision.io import read_file

    data = read_file(path)
    with Image.open(io.BytesIO(data.numpy())) as header:  # parses the header only
        width, height = header.size
        if header.format == "JPEG" and header.mode in DEVICE_MODES:
            return data, True, width, height
        # The folder's default loader makes exactly this conversion, so these pixels are PIL's.
        pixels = np.array(header.convert("RGB"))  # a writable copy, which torch.from_numpy wants
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), False, width, height


class _EncodedSample(torch.utils.data.Dataset):
    """An ImageFolder view that returns compressed files and augmentation parameters, not pixels.

    Items are ``(index, seed)`` pairs from :class:`utils.data.batches.EpochSampler`; a ``None`` seed
    (evaluation, or training without augmentation) draws nothing.
    """

    def __init__(self, folder):
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, item: tuple[int, int | None]) -> _Example:
        index, seed = item
        path, label = self.folder.samples[index]
        try:
            payload, encoded, width, height = _read_example(path)
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors of a damaged file
            raise BadImage(f"cannot decode image {path} ({type(exc).__name__}: {exc})") from None
        box, flip = draw_crop_flip(width, height, seed) if seed is not None else ((0, 0, height, width), False)
        return _Example(payload, encoded, int(label), int(index), box, flip)


def _collate(examples: list[_Example]) -> _Batch:
    """Pack a list of examples into one :class:`_Batch` (module level: workers pickle it)."""
    encoded = [e.payload for e in examples if e.encoded]
    blob = torch.cat(encoded) if encoded else torch.empty(0, dtype=torch.uint8)
    return _Batch(blob, [len(p) for p in encoded], [e.payload for e in examples if not e.encoded],
                  [e.encoded for e in examples],
                  torch.tensor([e.label for e in examples], dtype=torch.int64),
                  torch.tensor([e.index for e in examples], dtype=torch.int64),
                  torch.tensor([e.box for e in examples], dtype=torch.int64).view(-1, 4),
                  torch.tensor([e.flip for e in examples], dtype=torch.bool))


# ----------------------------------------------------------------------------- decoding

def decode_batch(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode JPEG files to (3, H, W) uint8 RGB on ``device``, all in one call where possible.

    Greyscale JPEGs come out with three equal channels. One refused file makes the batched call
    fail as a whole (nvJPEG rejects some rare valid files, e.g. unusual chroma subsampling), so
    then the files are decoded one by one, and any that the device still refuses are decoded on
    the CPU and copied over; a file that no decoder reads raises the CPU decoder's error.

    Args:
        files: 1-D uint8 CPU tensors, one JPEG file each.
        device: where to decode and put the images.

    Returns:
        One image per file, in order.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not files:
        return []
    try:
        return decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return [_decode_one(data, device) for data in files]


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One file on ``device``, falling back to the CPU decoder (see :func:`decode_batch`)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return decode_jpeg(data, mode=ImageReadMode.RGB).to(device)


def _batch_images(batch: _Batch, device: torch.device) -> list[torch.Tensor]:
    """The batch's images on ``device`` in batch order, decoding the encoded ones there."""
    files = list(torch.split(batch.blob, batch.lengths)) if batch.lengths else []
    decoded = iter(decode_batch(files, device))
    pixels = iter(batch.pixels)
    return [next(decoded) if encoded else next(pixels).to(device, non_blocking=True) for encoded in batch.encoded]


class DeviceJpegBatches(FolderBatches):
    """An ImageFolder dataset whose JPEGs are decoded and augmented on ``device``.

    The interface, loaders, sharding, seeding and output format are those of
    :class:`utils.data.batches.FolderBatches`; see the module docstring for what differs (pixel values,
    slightly) and when to prefer it. ``device`` is normally CUDA (nvJPEG); the CPU works too
    (libjpeg-turbo in the main process), which the tests use. The workers read files and draw
    parameters only.
    """

    def __init__(self, folder, info: DatasetInfo, device: torch.device, workers: int, image_size: int = 224):
        super().__init__(folder, info, device, workers, image_size)
        self.scale, self.shift = normaliser(info, self.device, torch.float32)

    def _dataloader(self, sampler: EpochSampler, batch_size: int, augment: bool) -> torch.utils.data.DataLoader:
        """Workers that read files and draw parameters, whatever ``augment`` (the device applies them or not)."""
        # No pinned memory: the decoder reads the bytes on the host; only labels (and rare
        # worker-decoded images) are copied to the device, too little to gain from pinning.
        return torch.utils.data.DataLoader(
            _EncodedSample(self.folder), batch_size=batch_size, sampler=sampler, num_workers=self.workers,
            collate_fn=_collate, persistent_workers=self.workers > 0)

    def _batch_indices(self, batch: _Batch) -> torch.Tensor:
        return batch.indices

    def _on_device(self, batch: _Batch, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode, crop/resize/flip (augment) or resize/centre-crop, normalise; plus labels."""
        images = _batch_images(batch, self.device)
        size = self.image_size
        if augment:
            boxes = batch.boxes.tolist()
            # Crops differ in size, so one resize per image; then batch-wide operations only.
            x = flip_where(torch.stack([train_view(image, tuple(box), size) for image, box in zip(images, boxes)]),
                           batch.flips)
        else:
            x = torch.stack([eval_view(image, size) for image in images])
        # Normalisation and the change to channels_last in one pass over the batch.
        out = torch.empty_like(x, memory_format=torch.channels_last)
        torch.addcmul(self.shift, x, self.scale, out=out)
        return out, batch.labels.to(self.device, non_blocking=True)
