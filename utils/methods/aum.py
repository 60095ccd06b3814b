"""Area under the margin (Pleiss et al., NeurIPS 2020): the mean logit margin; the lowest are likely
mislabeled, so the hardest end is the bottom."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from utils.core.cld import check_finite
from utils.methods.record import trajectory_method


def score(losses: Mapping[str, Any], **_: Any) -> np.ndarray:
    """Area under the margin: mean of z_y - max_{c != y} z_c over the used epochs."""
    check_finite(losses, "tr_margin")
    return losses["tr_margin"].mean(axis=0, dtype=np.float64)


METHOD = trajectory_method("aum", ("tr_margin",), "highest AUM (cleanest; Pleiss et al. drop the lowest as likely "
                           "mislabeled)", "bottom", score, paper="Pleiss et al. 2020")
