"""Per-class rankings: scores -> each class's dataset indices, highest score first (numpy only).

Every score file is made of these rankings, whichever method scored the examples: ties go to the
lower dataset index, so a ranking never depends on the column order of a file or on the sort
implementation.
"""
from __future__ import annotations

import numpy as np


def rank_per_class(scores: np.ndarray, labels: np.ndarray, indices: np.ndarray
                   ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Rank every class from the highest score down; ties by ascending dataset index.

    Args:
        scores: (N,) float scores, aligned with ``labels`` and ``indices``.
        labels: (N,) int class labels.
        indices: (N,) int64 original dataset indices.

    Returns:
        ({class: int64 dataset indices, best first}, {class: float64 scores, aligned}) for every
        class present in ``labels``, keyed by int in ascending order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    indices = np.asarray(indices, dtype=np.int64)
    # Least significant key first, each pass stable (= np.lexsort((indices, -scores, labels)), but
    # 2.5x faster at ImageNet scale: small labels go through numpy's radix sort).
    # -scores puts high first; -0.0 == 0.0 compare equal, so such ties fall back to the index.
    order = np.argsort(indices, kind="stable")
    order = order[np.argsort(-scores[order], kind="stable")]
    small = np.int16 if labels.size == 0 or (labels.min() >= 0 and labels.max() < 2**15) else labels.dtype
    order = order[np.argsort(labels[order].astype(small, copy=False), kind="stable")]
    sorted_lbl = labels[order]
    bounds = np.flatnonzero(np.diff(sorted_lbl)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [order.size]))
    ranked_idx = indices[order]
    ranked_scores = scores[order]
    ranked: dict[int, np.ndarray] = {}
    aligned: dict[int, np.ndarray] = {}
    for a, b in zip(starts, ends):
        if a == b:
            continue
        c = int(sorted_lbl[a])
        ranked[c] = ranked_idx[a:b]
        aligned[c] = ranked_scores[a:b]
    return ranked, aligned
