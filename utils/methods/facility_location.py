"""Facility location (Iyer et al., *Submodular Combinatorial Information Measures with
Applications in Machine Learning*, ALT 2021; DeepCore's Submodular method with its
FacilityLocation function): greedy ``F(A) = sum_i max_{j in A} s_ij`` with DeepCore's default
cosine kernel ``s = 0.5 + 0.5 cos(g_i, g_j)`` on the last-layer gradients.

Plain greedy with every marginal gain recomputed each step gives the same order as DeepCore's
lazy greedy (up to its tie handling).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


def facility_location(R: torch.Tensor, E: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Facility location ``F(A) = sum_i max_{j in A} s_ij`` with ``s = 0.5 + 0.5 cos(g_i, g_j)``.

    DeepCore's Submodular method with its default cosine kernel on gradient embeddings. Plain
    greedy with every marginal gain recomputed each step gives the same order as lazy greedy.

    Args:
        R: ``softmax(logits) - onehot(y)`` (N, C).
        E: embeddings (N, D).

    Returns:
        ``(order, gains)``; gains are exact marginal gains (non-increasing, submodularity).
    """
    from utils.methods import tensors as T

    return T.facility_greedy(T.cosine_kernel(R, E))


def score(f: ClassFeatures, **_: Any) -> tuple[np.ndarray, np.ndarray]:
    """The class's facility-location order and gains (:func:`facility_location` of its gradients)."""
    return facility_location(*f.gradients())


METHOD = model_method("facility_location", ("grads",), "facility-location greedy order (cosine similarity of "
                      "gradients)", "top", score, greedy=True, paper="Iyer et al. 2021 (DeepCore's Submodular)")
