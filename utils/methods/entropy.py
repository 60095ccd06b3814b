"""Entropy (Coleman et al., *Selection via Proxy: Efficient Data Selection for Deep Learning*,
ICLR 2020), one of DeepCore's uncertainty baselines: the predictive entropy ``-sum_c P log P``,
the most uncertain example first.

Differs from DeepCore: DeepCore adds 1e-6 inside the logarithm; we use the exact entropy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


def entropy(P: torch.Tensor) -> np.ndarray:
    """Predictive entropy ``-sum_c P log P`` with ``0 log 0 = 0``.

    DeepCore adds 1e-6 inside the logarithm; we use the exact entropy.

    Args:
        P: softmax probabilities (N, C).

    Returns:
        float64 (N,); the top has the highest entropy.
    """
    import torch

    from utils.methods import tensors as T

    P = T.f64(P)
    return T.as_numpy(-torch.special.xlogy(P, P).sum(1))


def score(f: ClassFeatures, **_: Any) -> np.ndarray:
    """The class's entropy scores (:func:`entropy` of its probabilities)."""
    return entropy(f.probs)


METHOD = model_method("entropy", ("probs",), "highest predictive entropy (most uncertain)", "top", score,
                      paper="Coleman et al. 2020 (DeepCore)")
