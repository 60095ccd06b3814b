"""CLD, the paper's method: the correlation of an example's loss differences with its class's
validation-loss differences (Nagaraj, Ravikumar, Roy, TMLR 2025). Its arithmetic lives in
:mod:`utils.core.cld`, beneath the stages, because stage 1 also computes it (``--stop_when_stable``)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from utils.core import cld as core
from utils.methods.record import trajectory_method


def score(losses: Mapping[str, Any], **_: Any) -> np.ndarray:
    """CLD of every training column (:func:`utils.core.cld.cld`)."""
    return core.cld(losses)


METHOD = trajectory_method(
    "cld", ("tr_loss", "val_loss"), "highest CLD: loss falls when the class's validation loss falls (the paper's "
    "coreset)", "bottom", score, paper="Nagaraj, Ravikumar, Roy, TMLR 2025")
