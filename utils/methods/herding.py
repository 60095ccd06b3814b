"""Herding (Welling, *Herding Dynamical Weights to Learn*, ICML 2009; DeepCore's Herding): a
greedy order over the embeddings in which each step adds the row that brings the selected mean
closest to the class mean.

Differs from DeepCore: DeepCore's code takes the ``argmax`` of the distance ``||t mu - S - x||``;
we minimise it, as herding (Welling 2009) and DeepCore's paper define it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


def _first_min(x: torch.Tensor) -> int:
    from utils.methods import tensors as T

    return T.first_max(-x)


def herding(E: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Herding: each step adds the row that brings the selected mean closest to the class mean.

    With ``mu`` the class mean and ``S`` the sum of the ``t - 1`` rows already picked, step t
    picks ``argmin_x ||t mu - S - x||`` over unselected rows (so the first pick is the row
    nearest the mean). DeepCore's code takes the ``argmax`` of this distance; we minimise, as
    herding (Welling 2009) and DeepCore's paper define it. O(N^2 D).

    Args:
        E: embeddings (N, D).

    Returns:
        ``(order, gains)``; ``gains[t]`` is the minimal distance ``||t mu - S - x||`` at step t.
    """
    import torch

    from utils.methods import tensors as T

    E = T.f64(E)
    n = T.check_rows(E)
    mu = E.mean(0)
    acc = torch.zeros_like(mu)
    taken = torch.zeros(n, dtype=torch.bool, device=E.device)
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n, dtype=np.float64)
    for t in range(n):
        # Direct differences (not the Gram expansion): exact for identical rows, no cancellation.
        d2 = (E - ((t + 1) * mu - acc)).square().sum(1).masked_fill(taken, np.inf)
        p = _first_min(d2)
        order[t], gains[t] = p, float(d2[p].sqrt())
        acc += E[p]
        taken[p] = True
    return order, gains


def score(f: ClassFeatures, **_: Any) -> tuple[np.ndarray, np.ndarray]:
    """The class's herding order and gains (:func:`herding` of its embeddings)."""
    return herding(f.embeddings)


METHOD = model_method("herding", ("embeddings",), "greedy order keeping the selected embeddings' mean closest to the "
                      "class mean", "bottom", score, greedy=True, paper="Welling 2009 (DeepCore)")
