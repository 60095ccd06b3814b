"""Margin (Coleman et al., *Selection via Proxy: Efficient Data Selection for Deep Learning*, ICLR
2020), one of DeepCore's uncertainty baselines: ``-(p_top1 - p_top2)``, the example with the
smallest gap between its two most probable classes first.

No difference from DeepCore's code is documented for this method.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


def margin(P: torch.Tensor) -> np.ndarray:
    """Margin uncertainty: ``-(p_top1 - p_top2)`` (with one class, ``p_top2 = 0``).

    Args:
        P: softmax probabilities (N, C).

    Returns:
        float64 (N,); the top has the smallest gap between its two most likely classes.
    """
    import torch

    from utils.methods import tensors as T

    P = T.f64(P)
    if P.shape[1] == 1:
        return T.as_numpy(-P[:, 0])
    top = torch.topk(P, 2, dim=1).values
    return T.as_numpy(-(top[:, 0] - top[:, 1]))


def score(f: ClassFeatures, **_: Any) -> np.ndarray:
    """The class's margin scores (:func:`margin` of its probabilities)."""
    return margin(f.probs)


METHOD = model_method("margin", ("probs",), "smallest gap between the two most probable classes (most uncertain)",
                      "top", score, paper="Coleman et al. 2020 (DeepCore)")
