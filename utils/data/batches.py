"""Batch sources for training and per-example evaluation.

Two sources share one interface:

* :class:`TensorBatches` keeps a small dataset (CIFAR, digits) resident on the device as uint8 and
  does random-crop (zero padding 4) + horizontal flip and normalisation there, as
  KellerJordan/cifar10-airbench does: no worker processes, no host-to-device copy per step.
  The crop/flip distribution is torchvision's ``RandomCrop(32, padding=4)`` +
  ``RandomHorizontalFlip()``: offsets uniform in 0..8 per axis, flip with probability 1/2 (no flip
  where the dataset forbids it: the digits).
* :class:`FolderBatches` reads an ImageFolder (ImageNet) through a DataLoader with workers,
  pinned memory and persistent workers.

Both draw an epoch's randomness from a generator seeded by ``(seed, epoch)`` alone, so epoch k of
a resumed run sees exactly the batches of an uninterrupted run. Both shard an epoch for
DistributedDataParallel as ``DistributedSampler`` does (pad by wrapping around, then every
``world``-th example), and evaluation batches carry the *slots* (positions in the evaluated index
list) that their results belong to, so that results can be gathered by example.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from utils.data.datasets import ArrayDataset, DatasetInfo
from utils.data.images import BadImage
from utils.errors import UserError

CROP_PADDING = 4


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffle and augmentation: a function of (seed, epoch) only."""
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))


def shard_positions(n: int, rank: int, world: int) -> np.ndarray:
    """Positions 0..n-1 that rank ``rank`` of ``world`` handles, as DistributedSampler pads them.

    The list is padded by wrapping around to a multiple of ``world`` so that every rank gets the
    same number of examples; the duplicates are resolved when results are gathered.
    """
    if world == 1:
        return np.arange(n)
    total = -(-n // world) * world
    padded = np.resize(np.arange(n), total)  # np.resize repeats from the start
    return padded[rank::world]


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int = CROP_PADDING) -> torch.Tensor:
    """Random-crop with zero padding and horizontal flip of a batch, in one gather.

    Args:
        images: (B, H, W, C) uint8 (NHWC, the layout the data is stored in).
        offsets: (B, 2) int top/left corner of the crop in the padded image, each in 0..2*padding.
        flips: (B,) bool, flip the crop left-right.

    Returns:
        (B, H, W, C) uint8: ``hflip(crop(pad(image, padding), top, left, H, W))`` where flipped.
    """
    b, h, w, _ = images.shape
    padded = F.pad(images, (0, 0, padding, padding, padding, padding))
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = offsets[:, :1] + ar_h
    cols = offsets[:, 1:] + torch.where(flips[:, None], (w - 1) - ar_w, ar_w)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def normaliser(info: DatasetInfo, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``x * scale + shift == (x / 255 - mean) / std`` for pixels ``x`` in 0..255.

    Normalisation as one fused multiply-add: a third of the passes over the batch.

    Args:
        info: the dataset's mean and std.
        device: where the two tensors go.
        dtype: the precision they are computed in before rounding to float32; each batch source
            keeps its own, so that its normalised values do not change.

    Returns:
        Two (1, 3, 1, 1) float32 tensors on ``device``.
    """
    mean = torch.tensor(info.mean, device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(info.std, device=device, dtype=dtype).view(1, 3, 1, 1)
    return (1.0 / (255.0 * std)).float(), (-mean / std).float()


def eval_resize(image_size: int) -> int:
    """The shorter side that evaluation resizes an image to before its centre crop of ``image_size``
    (256 for 224, the ImageNet convention)."""
    return int(round(image_size * 256 / 224))


class TensorBatches:
    """An in-memory dataset resident on ``device`` as uint8 NHWC.

    Batches come out as float NCHW tensors in channels_last memory format, normalised with the
    dataset's own mean/std.
    """

    def __init__(self, data: ArrayDataset, info: DatasetInfo, device: torch.device):
        self.device = device
        self.labels = np.asarray(data.labels, dtype=np.int64)
        self.images = torch.from_numpy(np.ascontiguousarray(data.images)).to(device)
        self.targets = torch.from_numpy(self.labels).to(device)
        self.scale, self.shift = normaliser(info, device, torch.float64)
        self.flip = info.flip

    def __len__(self) -> int:
        return len(self.labels)

    def _normalise(self, nhwc: torch.Tensor) -> torch.Tensor:
        # permute gives an NCHW view of NHWC storage, i.e. channels_last, with no copy.
        return torch.addcmul(self.shift, nhwc.permute(0, 3, 1, 2).float(), self.scale)

    def train_epoch(self, indices: np.ndarray, batch_size: int, seed: int, epoch: int,
                    rank: int = 0, world: int = 1, augment: bool = True,
                    weights: np.ndarray | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """Shuffled, augmented batches ``(x, y)`` of the examples ``indices`` for one epoch (last batch
        partial); ``(x, y, w)`` with the examples' ``weights`` (aligned with ``indices``)."""
        g = epoch_generator(seed, epoch)
        n = len(indices)
        perm = torch.randperm(n, generator=g)
        offsets = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=g)
        flips = (torch.rand(n, generator=g) < 0.5) & self.flip  # drawn either way: same offsets
        mine = torch.from_numpy(shard_positions(n, rank, world))
        order = torch.as_tensor(np.asarray(indices, dtype=np.int64))[perm[mine]].to(self.device)
        offsets, flips = offsets[mine].to(self.device), flips[mine].to(self.device)
        w = None if weights is None else torch.as_tensor(np.asarray(weights, np.float32))[perm[mine]].to(self.device)
        for start in range(0, len(order), batch_size):
            sel = order[start:start + batch_size]
            images = self.images[sel]
            if augment:
                images = crop_flip(images, offsets[start:start + batch_size], flips[start:start + batch_size])
            if w is None:
                yield self._normalise(images), self.targets[sel]
            else:
                yield self._normalise(images), self.targets[sel], w[start:start + batch_size]

    def eval_batches(self, indices: np.ndarray, batch_size: int, rank: int = 0,
                     world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Unaugmented batches of ``indices`` in order, with the slots (positions in ``indices``)."""
        slots = torch.from_numpy(shard_positions(len(indices), rank, world)).to(self.device)
        order = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.device)[slots]
        for start in range(0, len(order), batch_size):
            sel = order[start:start + batch_size]
            yield self._normalise(self.images[sel]), self.targets[sel], slots[start:start + batch_size]


class _SeededSample(torch.utils.data.Dataset):
    """An ImageFolder view whose random transform is seeded per (epoch seed, example).

    The sampler yields ``(index, seed)`` pairs; seeding the transform from them makes augmentation
    independent of worker count and scheduling, so resumed epochs are the same epochs.
    """

    def __init__(self, folder, transform):
        self.folder = folder
        self.transform = transform

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, item):
        index, seed = item
        path, label = self.folder.samples[index]
        try:
            image = self.folder.loader(path)
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors of a damaged file
            raise BadImage(f"cannot decode image {path} ({type(exc).__name__}: {exc})") from None
        if seed is not None:
            torch.manual_seed(seed)
        return self.transform(image), label, index


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(dataset index, per-example seed)`` for the epoch set by :meth:`set_epoch`."""

    def __init__(self, indices: np.ndarray, seed: int, rank: int, world: int, shuffle: bool):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.seed, self.rank, self.world, self.shuffle = seed, rank, world, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(shard_positions(len(self.indices), self.rank, self.world))

    def __iter__(self):
        n = len(self.indices)
        mine = shard_positions(n, self.rank, self.world)
        if not self.shuffle:
            return iter([(int(self.indices[p]), None) for p in mine])
        g = epoch_generator(self.seed, self.epoch)
        perm = torch.randperm(n, generator=g).numpy()
        seeds = torch.randint(0, 2**62, (n,), generator=g).numpy()
        return iter([(int(self.indices[perm[p]]), int(seeds[p])) for p in mine])


class FolderBatches:
    """An ImageFolder dataset read through DataLoaders (one per index list, workers kept alive).

    The workers decode, augment and normalise with PIL and torchvision's transforms.
    :class:`utils.data.jpeg.DeviceJpegBatches` keeps the loaders, sharding and seeding and changes only
    what the workers return (:meth:`_dataloader`) and how a loaded batch becomes the device's
    tensors (:meth:`_on_device`).
    """

    def __init__(self, folder, info: DatasetInfo, device: torch.device, workers: int, image_size: int = 224):
        """
        Args:
            folder: a ``torchvision.datasets.ImageFolder`` (its ``samples`` and ``targets`` are read).
            info: the dataset's mean/std, for normalisation.
            device: where batches are delivered.
            workers: DataLoader worker processes.
            image_size: side of the square training and evaluation crops.
        """
        self.folder, self.info, self.device, self.workers = folder, info, torch.device(device), workers
        self.image_size = image_size
        self.labels = np.asarray(folder.targets, dtype=np.int64)
        self._loaders: dict = {}

    def __len__(self) -> int:
        return len(self.labels)

    def _loader(self, key, indices: np.ndarray, batch_size: int, seed: int, rank: int, world: int, shuffle: bool,
                augment: bool) -> torch.utils.data.DataLoader:
        """One DataLoader per index list, mode, seed and shard, kept with its workers.

        The key also holds the seed and ``(rank, world)``: the sampler fixes them when it is built.
        """
        if key not in self._loaders:
            sampler = EpochSampler(indices, seed, rank, world, shuffle=shuffle)
            self._loaders[key] = self._dataloader(sampler, batch_size, augment)
        return self._loaders[key]

    def _dataloader(self, sampler: EpochSampler, batch_size: int, augment: bool) -> torch.utils.data.DataLoader:
        """Workers that decode and transform each image, into pinned memory when bound for a GPU."""
        from torchvision import transforms

        size = self.image_size
        if augment:
            steps = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
        else:
            steps = [transforms.Resize(eval_resize(size)), transforms.CenterCrop(size)]
        transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(self.info.mean,
                                                                                            self.info.std)])
        return torch.utils.data.DataLoader(
            _SeededSample(self.folder, transform), batch_size=batch_size, sampler=sampler, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0)

    def _on_device(self, batch, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """A loaded batch as ``(images, labels)`` on the device, the images in channels_last."""
        x, y, _ = batch
        return (x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last),
                y.to(self.device, non_blocking=True))

    def train_epoch(self, indices: np.ndarray, batch_size: int, seed: int, epoch: int, rank: int = 0,
                    world: int = 1, augment: bool = True,
                    weights: np.ndarray | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """This rank's batches of ``indices`` for one epoch.

        The order is shuffled; with ``augment`` each example is cropped and flipped from its
        per-(seed, epoch) seed, without it each is the evaluation view (resize, centre crop).

        Yields:
            ``(x, y)``: (B, 3, S, S) float32 channels_last and (B,) int64 labels, on the device;
            ``(x, y, w)`` with the examples' ``weights`` (aligned with ``indices``).
        """
        key = ("train", _fingerprint(indices), batch_size, augment, seed, rank, world)
        loader = self._loader(key, indices, batch_size, seed, rank, world, shuffle=True, augment=augment)
        loader.sampler.set_epoch(epoch)
        lookup = None
        if weights is not None:  # by dataset index: the loader's batches carry the indices
            lookup = torch.zeros(len(self.labels), dtype=torch.float32)
            lookup[torch.as_tensor(np.asarray(indices, np.int64))] = torch.as_tensor(np.asarray(weights, np.float32))
        for batch in _named_failures(loader):
            x, y = self._on_device(batch, augment)
            if lookup is None:
                yield x, y
            else:
                yield x, y, lookup[self._batch_indices(batch)].to(self.device, non_blocking=True)

    def _batch_indices(self, batch) -> torch.Tensor:
        """The dataset indices of a loaded batch."""
        return batch[2]

    def eval_batches(self, indices: np.ndarray, batch_size: int, rank: int = 0,
                     world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This rank's unaugmented batches of ``indices`` in order.

        Yields:
            ``(x, y, slots)``: images, labels and the positions in ``indices`` they belong to.
        """
        key = ("eval", _fingerprint(indices), batch_size, rank, world)
        loader = self._loader(key, indices, batch_size, 0, rank, world, shuffle=False, augment=False)
        slots = torch.from_numpy(shard_positions(len(indices), rank, world))
        start = 0
        for batch in _named_failures(loader):
            x, y = self._on_device(batch, augment=False)
            yield x, y, slots[start:start + len(y)].to(self.device)
            start += len(y)


def _named_failures(loader) -> Iterator:
    """The loader's batches; a file a worker could not decode stops the run with one line naming it
    (the worker's traceback, which the DataLoader appends, is dropped)."""
    try:
        yield from loader
    except BadImage as exc:
        raise UserError(str(exc).rsplit("BadImage: ", 1)[-1].strip().splitlines()[0]) from None


def _fingerprint(indices: np.ndarray) -> tuple[int, int]:
    """A key for an index list, so that each list keeps its own loader (and workers)."""
    arr = np.ascontiguousarray(indices, dtype=np.int64)
    return len(arr), hash(arr.tobytes())
