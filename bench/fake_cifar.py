"""Fake CIFAR datasets written in torchvision's exact on-disk layout.

Shared by the tests (``tests/fakedata.py`` re-exports it) and the training benchmark, which writes
one of the real shape (50,000 training and 10,000 test images). Images carry a class-dependent
colour so that a model can learn something in a few epochs, and labels are written as Python
lists, as in the real pickles.
"""
from __future__ import annotations

import os
import pickle

import numpy as np

LAYOUT = {
    "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels", 10),
    "CIFAR100": ("cifar-100-python", ["train"], "test", "fine_labels", 100),
}

_CHUNK = 4096  # rows generated at a time: bounds the float64 temporaries (~100 MB) at full size


def fake_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 3072) rows (CIFAR's channel-major layout) with a colour per class plus noise.

    Generated in chunks; the values are those of one draw of all rows (the generator's stream
    is consumed in the same order).
    """
    base = (np.arange(num_classes)[:, None] * np.array([[37, 91, 53]]) % 256).astype(np.float64)
    out = np.empty((len(labels), 3072), dtype=np.uint8)
    for start in range(0, len(labels), _CHUNK):
        part = labels[start:start + _CHUNK]
        pixels = base[part][:, :, None] + rng.normal(0, 40, size=(len(part), 3, 1024))
        out[start:start + len(part)] = np.clip(pixels, 0, 255).astype(np.uint8).reshape(len(part), 3072)
    return out


def write_fake_cifar(data_path: str, dataset: str = "CIFAR10", per_class: int = 20, test_per_class: int = 5,
                     num_classes: int | None = None, seed: int = 0) -> dict:
    """Write a fake CIFAR under ``{data_path}/cifar/``; returns the labels written.

    Args:
        per_class / test_per_class: examples per class in the training / test parts
            (CIFAR-100's real shape: 500 / 100).
        num_classes: how many of the dataset's classes get examples (all by default).
    """
    folder, train_files, test_file, label_key, total_classes = LAYOUT[dataset]
    num_classes = num_classes or total_classes
    rng = np.random.default_rng(seed)
    root = os.path.join(data_path, "cifar", folder)
    os.makedirs(root, exist_ok=True)
    train_labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    test_labels = rng.permutation(np.repeat(np.arange(num_classes), test_per_class))
    chunks = np.array_split(np.arange(len(train_labels)), len(train_files))
    for name, chunk in zip(train_files, chunks):
        _dump(os.path.join(root, name), fake_images(train_labels[chunk], num_classes, rng), train_labels[chunk], label_key)
    _dump(os.path.join(root, test_file), fake_images(test_labels, num_classes, rng), test_labels, label_key)
    return {"train": train_labels, "test": test_labels}


def _dump(path: str, data: np.ndarray, labels: np.ndarray, label_key: str) -> None:
    with open(path, "wb") as f:
        pickle.dump({"data": data, label_key: [int(x) for x in labels]}, f, protocol=2)
