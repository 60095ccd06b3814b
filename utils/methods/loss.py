"""The mean training loss over the used epochs: the hardest examples first."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from utils.core.cld import check_finite
from utils.methods.record import trajectory_method


def score(losses: Mapping[str, Any], **_: Any) -> np.ndarray:
    """Mean training loss over the used epochs."""
    check_finite(losses, "tr_loss")
    return losses["tr_loss"].mean(axis=0, dtype=np.float64)


METHOD = trajectory_method("loss", ("tr_loss",), "highest mean training loss (hardest)", "top", score)
