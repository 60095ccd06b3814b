"""Contrastive Active Learning (Margatina et al., *Active Learning by Acquiring Contrastive
Examples*, EMNLP 2021; DeepCore's Cal): the mean divergence of an example's prediction from its
nearest neighbours' predictions, the most contrastive example first.

Neighbours: the ``--cal_neighbors`` nearest *other* rows of the class in Euclidean distance of
the embeddings (ties to the lower row). Divergence: DeepCore's symmetric KL (as contextual
diversity's, same clamp).

Differs from DeepCore: DeepCore computes the neighbours with a separate ImageNet-pretrained
model; here they come from the snapshot's own embeddings. DeepCore sorts this score ascending
and so keeps the *lowest*; Margatina et al. select the highest (the contrastive examples), which
is our top.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


def _gram(x: torch.Tensor) -> torch.Tensor:
    """``x @ x.T``, exactly symmetric, with bitwise-equal rows/columns for equal rows of ``x``."""
    from utils.methods import tensors as T

    u, inv = T.unique_rows(x)
    g = (u @ u.T)[inv][:, inv]
    return 0.5 * (g + g.T)


def cal(E: torch.Tensor, P: torch.Tensor, neighbors: int = 10) -> np.ndarray:
    """Contrastive Active Learning: mean divergence of a row's prediction from its neighbours'.

    Neighbours: the ``neighbors`` nearest *other* rows of the class in Euclidean distance of
    ``E`` (ties to the lower row; all ``N - 1`` when fewer). Divergence: DeepCore's symmetric KL
    (see :func:`utils.methods.contextual_diversity.contextual_diversity`, same clamp). DeepCore
    computes the neighbours with a separate ImageNet-pretrained model; here they come from
    whatever ``E`` the caller passes. DeepCore sorts this score ascending and so keeps the
    *lowest*; Margatina et al. select the highest (the contrastive examples), which is our top.

    Args:
        E: embeddings (N, D) for the neighbourhoods.
        P: softmax probabilities (N, C).
        neighbors: number of neighbours (>= 1).

    Returns:
        float64 (N,); N == 1 gives 0.
    """
    import torch

    from utils.methods import tensors as T

    if neighbors < 1:
        raise ValueError(f"neighbors must be >= 1, got {neighbors}")
    E = T.f64(E)
    p, logp = T.clamped_probs(P)
    n = T.check_rows(E, p)
    if n == 1:
        return np.zeros(1)
    d2 = T.squared_distances(_gram(E)).fill_diagonal_(np.inf)  # squared: same order
    nbr = torch.sort(d2, dim=1, stable=True).indices[:, :min(neighbors, n - 1)]
    kl = 0.5 * ((p[:, None, :] - p[nbr]) * (logp[:, None, :] - logp[nbr])).sum(2)
    return T.as_numpy(kl.mean(1))


def score(f: ClassFeatures, cal_neighbors: int, **_: Any) -> np.ndarray:
    """The class's CAL scores (:func:`cal` of its embeddings and probabilities)."""
    return cal(f.embeddings, f.probs, cal_neighbors)


METHOD = model_method("cal", ("embeddings", "probs"), "highest mean divergence from its nearest neighbours' "
                      "predictions", "top", score, ("cal_neighbors",), paper="Margatina et al. 2021 (DeepCore)")
