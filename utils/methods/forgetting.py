"""Forgetting events (Toneva et al., ICLR 2019): how often an example goes from learned to forgotten;
examples never learned rank above all."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from utils.methods.record import trajectory_method


def score(losses: Mapping[str, Any], **_: Any) -> np.ndarray:
    """Number of correct -> incorrect transitions; never-correct examples get E (> any count)."""
    correct = losses["tr_correct"]
    n_ep, n = correct.shape
    events = np.zeros(n, dtype=np.int64)
    ever = correct[0].copy()
    for t in range(n_ep - 1):  # row pairs: no (E-1, N) temporary
        events += correct[t] & ~correct[t + 1]
        ever |= correct[t + 1]
    return np.where(ever, events, n_ep).astype(np.float64)


METHOD = trajectory_method("forgetting", ("tr_correct",), "most forgetting events, never-learned first (Toneva et "
                           "al. keep these)", "top", score, paper="Toneva et al. 2019")
