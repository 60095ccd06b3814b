"""The random baseline: a uniform order within each class (DeepCore calls it ``uniform``)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from utils.methods.record import trajectory_method


def score(losses: Mapping[str, Any], seed: int = 0, **_: Any) -> np.ndarray:
    """Uniform scores, drawn in ascending dataset-index order so that the draw of an example does
    not depend on the column order of the file."""
    idx = losses["train_indices"]
    out = np.empty(idx.shape[0])
    out[np.argsort(idx, kind="stable")] = np.random.default_rng(seed).random(idx.shape[0])
    return out


METHOD = trajectory_method("random", (), "a uniformly random order within each class", "top", score, ("seed",))
