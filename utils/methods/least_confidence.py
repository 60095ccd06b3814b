"""Least confidence (Coleman et al., *Selection via Proxy: Efficient Data Selection for Deep
Learning*, ICLR 2020), one of DeepCore's uncertainty baselines: ``1 - max_c P``, the least
confident example first.

Differs from DeepCore: DeepCore scores the maximum *logit*; we use the maximum probability, as
Coleman et al. define it (the two rank differently when logit scales differ between examples).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


def least_confidence(P: torch.Tensor) -> np.ndarray:
    """Least-confidence uncertainty: ``1 - max_c P``.

    DeepCore scores the maximum *logit*; we use the maximum probability, as Coleman et al.
    define it (the two rank differently when logit scales differ between examples).

    Args:
        P: softmax probabilities (N, C).

    Returns:
        float64 (N,); the top is the least confident example.
    """
    from utils.methods import tensors as T

    return T.as_numpy(1.0 - T.f64(P).max(dim=1).values)


def score(f: ClassFeatures, **_: Any) -> np.ndarray:
    """The class's least-confidence scores (:func:`least_confidence` of its probabilities)."""
    return least_confidence(f.probs)


METHOD = model_method("least_confidence", ("probs",), "lowest top-class probability (most uncertain)", "top", score,
                      paper="Coleman et al. 2020 (DeepCore)")
