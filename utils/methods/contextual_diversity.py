"""Contextual Diversity (Agarwal et al., *Contextual Diversity for Active Learning*, ECCV 2020;
DeepCore's ContextualDiversity): k-Center Greedy over the probability vectors with DeepCore's
symmetric KL divergence, the most uncovered row first.

``d(a, b) = sum_c 0.5 a log(a / b) + 0.5 b log(b / a)``. Probabilities are clamped to
``>= 1e-12`` first (not renormalised) so that zeros give finite distances. The first center is
drawn as k-center's (:mod:`utils.methods.kcenter`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


def _sym_kl_to(logp: torch.Tensor, p: torch.Tensor, a: int) -> torch.Tensor:
    """Symmetric KL between row ``a`` and every row: sum_c 0.5 (p_a - p)(log p_a - log p).

    Equal to 0.5 KL(a||b) + 0.5 KL(b||a) (DeepCore's contextual-diversity distance), and exactly
    symmetric in floating point.
    """
    return 0.5 * ((p[a] - p) * (logp[a] - logp)).sum(1)


def contextual_diversity(P: torch.Tensor, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Contextual diversity: k-Center Greedy over probability vectors with the symmetric KL.

    ``d(a, b) = sum_c 0.5 a log(a / b) + 0.5 b log(b / a)``, probabilities clamped to
    ``>= 1e-12`` first (not renormalised) so that zeros give finite distances.

    Args:
        P: softmax probabilities (N, C).
        first: the first center (row position, drawn by the caller).

    Returns:
        ``(order, gains)`` as :func:`utils.methods.kcenter.kcenter` (``gains[0] = +inf``),
        distances in nats.
    """
    from utils.methods import tensors as T

    p, logp = T.clamped_probs(P)
    n = T.check_rows(p)
    return T.farthest_first(n, T.check_first(first, n), lambda a: _sym_kl_to(logp, p, a))


def score(f: ClassFeatures, seed: int, **_: Any) -> tuple[np.ndarray, np.ndarray]:
    """The class's order from its seeded first center (:func:`contextual_diversity` of its probabilities)."""
    return contextual_diversity(f.probs, f.first_center(seed))


METHOD = model_method("contextual_diversity", ("probs",), "k-center greedy order over the probabilities (symmetric "
                      "KL)", "top", score, ("seed",), greedy=True, paper="Agarwal et al. 2020 (DeepCore)")
