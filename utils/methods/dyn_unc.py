"""Dynamic uncertainty (He et al., *Large-scale Dataset Pruning with Dynamic Uncertainty*, 2023):
how much the probability of the true class varies over sliding windows of epochs."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from utils.core.cld import check_finite, chunk_size
from utils.methods.record import trajectory_method

DEFAULT_DYN_UNC_WINDOW = 10    # He et al. 2023, J = 10


def score(losses: Mapping[str, Any], dyn_unc_window: int = DEFAULT_DYN_UNC_WINDOW, **_: Any) -> np.ndarray:
    """Dynamic uncertainty: mean over all windows of J consecutive epochs of the sample std
    (ddof=1, as the authors' torch.std) of p_t[y] = exp(-l_t). J = min(window, E)."""
    check_finite(losses, "tr_loss")
    tr = losses["tr_loss"]
    n_ep, n = tr.shape
    win = min(dyn_unc_window, n_ep)
    out = np.empty(n)
    step = chunk_size(n_ep * win)
    for s in range(0, n, step):
        cols = slice(s, min(s + step, n))
        p = np.exp(-tr[:, cols].astype(np.float64))                       # (E, c)
        windows = np.lib.stride_tricks.sliding_window_view(p, win, axis=0)  # (E-J+1, c, J)
        out[cols] = windows.std(axis=-1, ddof=1).mean(axis=0)
    return out


METHOD = trajectory_method("dyn_unc", ("tr_loss",), "highest dynamic uncertainty (He et al. keep these)", "top",
                           score, ("dyn_unc_window",), paper="He et al. 2023")
