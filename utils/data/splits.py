"""Stratified per-class train/validation split, as the paper code draws it (but honouring the ratio).

The paper code shuffles each class with one ``torch.Generator`` seeded by ``manual_seed``, walks
the classes in order, and keeps the first ``int(n * (1 - ratio))`` of every class for training.
We draw exactly the same permutations, so a given seed gives the paper's split; unlike the paper
code, ``val_split_ratio`` is honoured (docs/differences.md) and a class of two or more examples
always keeps at least one example on each side (a class with no validation example would get no
CLD score at all).
"""
from __future__ import annotations

import numpy as np
import torch

from utils.errors import UserError


def stratified_split(labels: np.ndarray, val_ratio: float, seed: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Split dataset indices per class into training and validation parts.

    Args:
        labels: int labels of the whole training set, (N,).
        val_ratio: share of every class held out for validation, in (0, 1).
        seed: the run's manual_seed.
        num_classes: classes are walked 0..num_classes-1 in order (the order fixes the draws).

    Returns:
        ``(train_indices, val_indices)``, int64 original dataset indices, class by class.
    """
    if not 0.0 < val_ratio < 1.0:
        raise UserError(f"val_split_ratio must lie strictly between 0 and 1, got {val_ratio}")
    targets = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    generator = torch.Generator().manual_seed(int(seed))
    train_parts, val_parts = [], []
    for c in range(num_classes):
        members = torch.nonzero(targets == c, as_tuple=False).squeeze(1)
        if len(members) == 0:
            continue
        perm = members[torch.randperm(len(members), generator=generator)]
        n_train = int(len(perm) * (1.0 - val_ratio))
        if len(perm) >= 2:
            n_train = min(max(n_train, 1), len(perm) - 1)
        train_parts.append(perm[:n_train].numpy())
        val_parts.append(perm[n_train:].numpy())
    return (np.concatenate(train_parts).astype(np.int64) if train_parts else np.zeros(0, np.int64),
            np.concatenate(val_parts).astype(np.int64) if val_parts else np.zeros(0, np.int64))
