"""Datasets: CIFAR-10/100 (torchvision's on-disk layout), ImageNet/ImageFolder, embedded digits.

Every constant that describes a dataset (classes, mean/std, default validation ratio) lives once
in :data:`DATASETS`; the paper code normalised with CIFAR-10 statistics in one stage and CIFAR-100
statistics in another (docs/differences.md), which this table makes impossible.

CIFAR is read from the pickles torchvision downloads (``{data_path}/cifar/cifar-10-batches-py``,
``{data_path}/cifar/cifar-100-python``) and validated by shape and label range rather than by
checksum, so that test fixtures in the same layout load the same way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from utils import paths
from utils.errors import UserError
from utils.files.unpickle import load_pickle


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one dataset; the single source of these constants."""
    name: str
    num_classes: int | None  # None: read from the folder (ImageFolder)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    val_split_ratio: float  # the paper code's default share of each class held out for validation
    in_memory: bool  # small 32x32 images that fit on the device as uint8
    flip: bool = True  # horizontal flips are label-preserving (not for handwritten digits: 2 vs 5)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetInfo] = {
    # Per-channel statistics of each training set (pixels scaled to [0, 1]). CIFAR-100's are the
    # paper code's constants exactly (they differ from a recomputation in the fourth decimal), so
    # that stage 1 sees the inputs the paper's stage 1 saw.
    "CIFAR10": DatasetInfo("CIFAR10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 0.1, True),
    "CIFAR100": DatasetInfo("CIFAR100", 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 0.1, True),
    "digits": DatasetInfo("digits", 10, (0.3051, 0.3051, 0.3051), (0.3757, 0.3757, 0.3757), 0.1, True, flip=False),
    "ImageNet": DatasetInfo("ImageNet", None, IMAGENET_MEAN, IMAGENET_STD, 0.01, False),
}

_CIFAR_FILES = {
    "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "CIFAR100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}

DIGITS_TEST_SHARE = 0.2  # fixed per-class hold-out of the embedded digits, seed DIGITS_SEED
DIGITS_SEED = 0


def dataset_info(name: str) -> DatasetInfo:
    """Look a dataset up by name, case-insensitively; unknown names are a user error."""
    for key, info in DATASETS.items():
        if key.lower() == str(name).lower():
            return info
    raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


@dataclass
class ArrayDataset:
    """Images as uint8 (N, H, W, 3) and labels as int64 (N,): a split of an in-memory dataset."""
    images: np.ndarray
    labels: np.ndarray


@dataclass
class LoadedDataset:
    """A dataset's training and test parts plus its facts.

    ``train``/``test`` are :class:`ArrayDataset` for in-memory datasets and
    ``torchvision.datasets.ImageFolder`` otherwise.
    """
    info: DatasetInfo
    num_classes: int
    train: Any
    test: Any

    @property
    def train_labels(self) -> np.ndarray:
        if isinstance(self.train, ArrayDataset):
            return self.train.labels
        return np.asarray(self.train.targets, dtype=np.int64)


def load_dataset(name: str, data_path: str, download: bool = True) -> LoadedDataset:
    """Load a dataset by name (CIFAR10, CIFAR100, ImageNet, digits)."""
    info = dataset_info(name)
    if info.name in _CIFAR_FILES:
        train, test = _load_cifar(info, data_path, download)
        return LoadedDataset(info, info.num_classes, train, test)
    if info.name == "digits":
        train, test = load_digits()
        return LoadedDataset(info, info.num_classes, train, test)
    return _load_image_folder(info, data_path)


# ----------------------------------------------------------------------------- CIFAR

def _load_cifar(info: DatasetInfo, data_path: str, download: bool) -> tuple[ArrayDataset, ArrayDataset]:
    root = paths.cifar_root(data_path)
    folder, train_files, test_files, label_key = _CIFAR_FILES[info.name]
    expected = paths.cifar_files(data_path, folder, train_files + test_files)
    if not all(os.path.isfile(p) for p in expected):
        _download_cifar(info, root, download, expected)
    train = _read_cifar_batches(expected[:len(train_files)], label_key, info)
    test = _read_cifar_batches(expected[len(train_files):], label_key, info)
    n_train = {"CIFAR10": 50000, "CIFAR100": 50000}[info.name]
    if len(train.labels) > n_train:
        raise UserError(f"{root}: {len(train.labels)} training images, more than {info.name}'s {n_train}")
    return train, test


def _download_cifar(info: DatasetInfo, root: str, download: bool, expected: list[str]) -> None:
    missing = ", ".join(os.path.relpath(p, root) for p in expected if not os.path.isfile(p))
    hint = (f"{info.name} is expected in torchvision's layout under {root}/ (missing: {missing}); "
            "download it there, or run with network access so that torchvision can")
    if not download:
        raise UserError(hint)
    import torchvision  # only needed to download

    cls = {"CIFAR10": torchvision.datasets.CIFAR10, "CIFAR100": torchvision.datasets.CIFAR100}[info.name]
    try:
        for train in (True, False):
            cls(root=root, train=train, download=True)
    except Exception as exc:  # network, disk or checksum trouble: the same advice applies
        raise UserError(f"{hint} (download failed: {type(exc).__name__}: {exc})") from None


def _read_cifar_batches(paths: list[str], label_key: str, info: DatasetInfo) -> ArrayDataset:
    images, labels = [], []
    for path in paths:
        batch = load_pickle(path, f"{info.name} file", encoding="latin1")
        if not isinstance(batch, dict):
            raise UserError(f"{info.name} file {path} is not a CIFAR batch (a dict)")
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        if "data" not in batch or label_key not in batch:
            raise UserError(f"{info.name} file {path} lacks 'data' or {label_key!r}; is it the right CIFAR?")
        try:
            data = np.asarray(batch["data"])
            lbl = np.asarray(batch[label_key])
        except (ValueError, TypeError) as exc:
            raise UserError(f"{info.name} file {path}: its data or labels are not arrays ({exc})") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(lbl) != len(data):
            raise UserError(f"{info.name} file {path}: data of shape {data.shape} ({data.dtype}) with "
                            f"{len(lbl)} labels; expected uint8 (N, 3072) and N labels")
        if lbl.ndim != 1 or (lbl.size and lbl.dtype.kind not in "iu"):
            raise UserError(f"{info.name} file {path}: {label_key!r} holds {lbl.dtype} values of shape {lbl.shape}, "
                            "not one integer label per image; is it the right CIFAR?")
        if lbl.size and (lbl.min() < 0 or lbl.max() >= info.num_classes):
            raise UserError(f"{info.name} file {path}: labels outside 0..{info.num_classes - 1}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lbl.astype(np.int64))
    return ArrayDataset(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


# ----------------------------------------------------------------------------- digits

def load_digits() -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's 1,797 handwritten digits as 32x32 RGB uint8, with a fixed per-class test split.

    Each 8x8 image (values 0..16) is scaled to 0..255 and enlarged 4x by pixel repetition, so the
    CIFAR models and augmentation apply unchanged. The test split is fixed (seed 0, 20 % of every
    class) so that every stage and every run sees the same test set.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    small = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    big = np.kron(small, np.ones((1, 4, 4), dtype=np.uint8))
    images = np.repeat(big[..., None], 3, axis=3)
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(DIGITS_SEED)
    test_mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_test = int(round(len(members) * DIGITS_TEST_SHARE))
        test_mask[rng.choice(members, size=n_test, replace=False)] = True
    return (ArrayDataset(np.ascontiguousarray(images[~test_mask]), labels[~test_mask]),
            ArrayDataset(np.ascontiguousarray(images[test_mask]), labels[test_mask]))


# ----------------------------------------------------------------------------- ImageFolder

def _load_image_folder(info: DatasetInfo, data_path: str) -> LoadedDataset:
    from torchvision import datasets

    root = paths.image_folder(data_path)
    parts = {}
    for part in ("train", "val"):
        folder = paths.image_folder(data_path, part)
        if not os.path.isdir(folder):
            raise UserError(f"{info.name} folder {folder} not found; expected {root}/{{train,val}}/<class>/<image>")
        try:
            parts[part] = datasets.ImageFolder(folder)
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserError(f"{info.name} folder {folder}: {exc}") from None
    if parts["train"].classes != parts["val"].classes:
        raise UserError(f"{root}/train and {root}/val have different class folders")
    return LoadedDataset(info, len(parts["train"].classes), parts["train"], parts["val"])
