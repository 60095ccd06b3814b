"""GraNd (Paul et al., *Deep Learning on a Data Diet: Finding Important Examples Early in
Training*, NeurIPS 2021; DeepCore's GraNd): the norm of an example's last-layer loss gradient,
the largest (hardest) first.

``||g_i|| = ||r_i|| sqrt(1 + ||e_i||^2)`` for ``g_i = [r_i, r_i (x) e_i]``.

Differs from DeepCore: DeepCore averages the norm over several independently trained models; we
score one snapshot (the caller may average our scores over runs).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


def grand(R: torch.Tensor, E: torch.Tensor) -> np.ndarray:
    """GraNd: norm of the last-layer gradient, ``||g_i|| = ||r_i|| sqrt(1 + ||e_i||^2)``.

    (DeepCore averages it over several independently trained models; the caller may average
    our scores over runs.)

    Args:
        R: ``softmax(logits) - onehot(y)`` (N, C).
        E: embeddings (N, D).

    Returns:
        float64 (N,); the top has the largest gradient norm.
    """
    import torch

    from utils.methods import tensors as T

    R, E = T.f64(R), T.f64(E)
    T.check_rows(R, E)
    return T.as_numpy(torch.linalg.vector_norm(R, dim=1) * (1.0 + E.square().sum(1)).sqrt())


def score(f: ClassFeatures, **_: Any) -> np.ndarray:
    """The class's GraNd scores (:func:`grand` of its last-layer gradients)."""
    return grand(*f.gradients())


METHOD = model_method("grand", ("grads",), "largest last-layer gradient norm (hardest)", "top", score,
                      paper="Paul et al. 2021 (DeepCore)")
