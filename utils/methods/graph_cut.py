"""Graph cut (Iyer et al., *Submodular Combinatorial Information Measures with Applications in
Machine Learning*, ALT 2021; DeepCore's Submodular method with its GraphCut function): greedy
``f(A) = lam sum_{i in V, j in A} s_ij - sum_{i, j in A} s_ij`` with DeepCore's cosine kernel on
the last-layer gradients (``lam = 1``).

Differs from DeepCore: the exact marginal gain of x is ``lam colsum_x - 2 sum_{a in A} s_ax -
s_xx``; DeepCore drops the constant ``s_xx``, which changes no argmax when the diagonal is
constant (zero gradients have ``s_xx = 0.5`` here). Plain greedy with a full sweep per step
(same order as lazy greedy).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


def graph_cut(R: torch.Tensor, E: torch.Tensor, lam: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Graph cut ``f(A) = lam sum_{i in V, j in A} s_ij - sum_{i, j in A} s_ij`` (cosine kernel).

    Exact marginal gain of x: ``lam colsum_x - 2 sum_{a in A} s_ax - s_xx``. DeepCore drops the
    constant ``s_xx``, which changes no argmax when the diagonal is constant (zero gradients
    have ``s_xx = 0.5`` here, see :func:`utils.methods.tensors.cosine_kernel`). Plain greedy
    with a full sweep per step (same order as lazy greedy).

    Args:
        R: ``softmax(logits) - onehot(y)`` (N, C).
        E: embeddings (N, D).
        lam: weight of the coverage term.

    Returns:
        ``(order, gains)``; gains are exact marginal gains.
    """
    import torch

    from utils.methods import tensors as T

    S = T.cosine_kernel(R, E)
    n = S.shape[0]
    base = lam * S.sum(1) - S.diagonal()       # symmetric: row sums are column sums
    scale = (lam + 2.0) * n * float(S.abs().max())  # the magnitude of the sums a gain is made of
    acc = torch.zeros_like(base)                # sum_{a in A} s_ax
    taken = torch.zeros(n, dtype=torch.bool, device=S.device)
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n, dtype=np.float64)
    for t in range(n):
        gain = (base - 2.0 * acc).masked_fill_(taken, -np.inf)
        p = T.first_max(gain, scale)
        order[t], gains[t] = p, float(gain[p])
        acc += S[p]
        taken[p] = True
    return order, gains


def score(f: ClassFeatures, **_: Any) -> tuple[np.ndarray, np.ndarray]:
    """The class's graph-cut order and gains (:func:`graph_cut` of its gradients)."""
    return graph_cut(*f.gradients())


METHOD = model_method("graph_cut", ("grads",), "graph-cut greedy order (cosine similarity of gradients)", "top", score,
                      greedy=True, paper="Iyer et al. 2021 (DeepCore's Submodular)")
