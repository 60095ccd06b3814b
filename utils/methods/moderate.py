"""Moderate-DS (Xia et al., *Moderate Coreset: A Universal Method of Data Selection for Real-world
Data-efficient Deep Learning*, ICLR 2023): the examples whose distance to the class mean of the
embeddings is closest to the class's median distance first.

Not a DeepCore method; computed from the same embeddings as DeepCore's geometry baselines.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


def moderate(E: torch.Tensor) -> np.ndarray:
    """Moderate-DS: closeness of each row's distance to the class mean to the median distance.

    ``d_i = ||e_i - mean(E)||``, score ``-|d_i - median(d)|`` with numpy's median (the average
    of the two middle values when N is even).

    Args:
        E: embeddings (N, D).

    Returns:
        float64 (N,); the top is the row whose distance is closest to the median.
    """
    import torch

    from utils.methods import tensors as T

    E = T.f64(E)
    d = torch.linalg.vector_norm(E - E.mean(0), dim=1)
    s = torch.sort(d).values
    n = s.shape[0]
    med = 0.5 * (s[(n - 1) // 2] + s[n // 2])
    return T.as_numpy(-(d - med).abs())


def score(f: ClassFeatures, **_: Any) -> np.ndarray:
    """The class's Moderate-DS scores (:func:`moderate` of its embeddings)."""
    return moderate(f.embeddings)


METHOD = model_method("moderate", ("embeddings",), "distance to the class mean closest to the class's median distance",
                      "bottom", score, paper="Xia et al. 2023 (Moderate-DS)")
