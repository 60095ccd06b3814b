"""CRAIG (Mirzasoleiman et al., *Coresets for Data-efficient Training of Machine Learning Models*,
ICML 2020; DeepCore's Craig): greedy facility location on the distances between last-layer
gradients; a selection is trained weighted, each selected example by the number of examples of
its class closest to it.

Similarity: ``s_ij = max(d) - d_ij + 1e-3`` with ``d_ij = ||g_i - g_j||`` (DeepCore negates the
distances and subtracts their minimum minus 1e-3: the same matrix).

Differs from DeepCore: its weights (``deepcore/methods/craig.py``, ``calc_weights``) add 1 to
every count (they sum to the class size plus the budget) and come in ascending index order beside
a selection in greedy order; ours count the examples only (they sum to the class size) and stand
beside their own examples.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures

# DeepCore's CRAIG shift, so that every similarity is strictly positive.
CRAIG_SHIFT = 1e-3


def craig(R: torch.Tensor, E: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """CRAIG: facility location on gradient embeddings with DeepCore's distance similarity.

    ``d_ij = ||g_i - g_j||`` (from the Gram matrix, clamped at 0), ``s_ij = max(d) - d_ij + 1e-3``
    (DeepCore negates the distances and subtracts their minimum minus 1e-3), then greedy
    facility location (:func:`utils.methods.facility_location.facility_location`). The
    per-medoid weights of a selection are :func:`craig_weights`.

    Args:
        R: ``softmax(logits) - onehot(y)`` (N, C).
        E: embeddings (N, D).

    Returns:
        ``(order, gains)``; gains are the marginal gains of facility location (non-increasing).
    """
    from utils.methods import tensors as T

    d = T.squared_distances(T.gradient_gram(R, E)).clamp_(min=0.0).sqrt_()
    return T.facility_greedy(d.max() - d + CRAIG_SHIFT)


def craig_weights(R: torch.Tensor, E: torch.Tensor, selected: np.ndarray) -> np.ndarray:
    """CRAIG's per-example weights of a selection: how many examples of the class are closest to
    each selected one (gradient distance; ties to the lower row), so they sum to the class size.

    DeepCore (``deepcore/methods/craig.py``, ``calc_weights``) adds 1 to every count (its weights
    sum to the class size plus the budget) and returns them in ascending index order beside a
    selection in greedy order; here each weight stands beside its own example.

    Args:
        R, E: the class's gradient factors (N, C), (N, D).
        selected: rows of the selection (any order).

    Returns:
        float64 weights aligned with ``selected``.
    """
    import torch

    from utils.methods import tensors as T

    selected = np.asarray(selected, dtype=np.int64)
    d2 = T.squared_distances(T.gradient_gram(T.f64(R), T.f64(E)))
    rows = np.sort(selected)  # argmin takes the first minimum: ties go to the lower row
    nearest = torch.argmin(d2[:, torch.as_tensor(rows, device=d2.device)], dim=1).cpu().numpy()
    counts = np.bincount(nearest, minlength=rows.size).astype(np.float64)
    return counts[np.searchsorted(rows, selected)]


def score(f: ClassFeatures, **_: Any) -> tuple[np.ndarray, np.ndarray]:
    """The class's CRAIG order and gains (:func:`craig` of its last-layer gradients)."""
    return craig(*f.gradients())


def weights(f: ClassFeatures, selected: np.ndarray, **_: Any) -> np.ndarray:
    """The weights of the class's selection ``selected`` (rows; :func:`craig_weights`)."""
    return craig_weights(*f.gradients(), selected)


METHOD = model_method("craig", ("grads",), "facility-location greedy order on gradient distances", "top", score,
                      greedy=True, paper="Mirzasoleiman et al. 2020 (DeepCore)", weights=weights)
