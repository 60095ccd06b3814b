"""EL2N early in training (Paul et al., *Deep Learning on a Data Diet*, NeurIPS 2021): the norm of
the error vector, averaged over the first epochs; Data Diet keeps the highest."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from utils.core.cld import check_finite
from utils.methods.record import trajectory_method

DEFAULT_EL2N_EPOCHS = 20       # Data Diet scores early in training (epoch 20 of 200)


def score(losses: Mapping[str, Any], el2n_epochs: int = DEFAULT_EL2N_EPOCHS, **_: Any) -> np.ndarray:
    """Mean ||softmax - onehot||_2 over the first ``el2n_epochs`` used epochs (all if fewer)."""
    check_finite(losses, "tr_el2n", rows=el2n_epochs)
    return losses["tr_el2n"][:el2n_epochs].mean(axis=0, dtype=np.float64)


METHOD = trajectory_method("el2n", ("tr_el2n",), "highest early-training EL2N (hardest; Data Diet keeps these)",
                           "top", score, ("el2n_epochs",), paper="Paul et al. 2021")
