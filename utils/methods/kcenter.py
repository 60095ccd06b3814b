"""k-Center Greedy (Sener and Savarese, *Active Learning for Convolutional Neural Networks: A
Core-Set Approach*, ICLR 2018; DeepCore's kCenterGreedy): the farthest-first traversal of the
embeddings in Euclidean distance, the most uncovered row first.

The first center is a row drawn uniformly with the run's seed, one draw per class
(:meth:`utils.methods.features.ClassFeatures.first_center`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


def kcenter(E: torch.Tensor, first: int) -> tuple[np.ndarray, np.ndarray]:
    """k-Center Greedy (farthest-first traversal) in Euclidean distance.

    Args:
        E: embeddings (N, D).
        first: the first center (a row position; the caller draws it with a seeded RNG).

    Returns:
        ``(order, gains)``; ``order[0] = first`` with ``gains[0] = +inf``; then ``gains[t]`` is
        the distance of the picked row to its nearest earlier center (non-increasing).
    """
    import torch

    from utils.methods import tensors as T

    E = T.f64(E)
    n = T.check_rows(E)
    return T.farthest_first(n, T.check_first(first, n),
                            lambda p: torch.linalg.vector_norm(E - E[p], dim=1))


def score(f: ClassFeatures, seed: int, **_: Any) -> tuple[np.ndarray, np.ndarray]:
    """The class's k-center order from its seeded first center (:func:`kcenter` of its embeddings)."""
    return kcenter(f.embeddings, f.first_center(seed))


METHOD = model_method("kcenter", ("embeddings",), "k-center greedy order over the embeddings (most uncovered first)",
                      "top", score, ("seed",), greedy=True, paper="Sener and Savarese 2018 (DeepCore)")
