"""``.npz`` files: arrays and text without pickle (CLD sums, exported features, trajectory states)."""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from utils.errors import UserError, first_line
from utils.files.atomic import atomic_write

def save_npz(path: str, arrays: Mapping[str, Any]) -> None:
    """Write arrays to an ``.npz`` atomically; text metadata goes in as 0-d string arrays (no pickle)."""
    atomic_write(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def load_npz(path: str, what: str) -> dict[str, np.ndarray]:
    """Read an ``.npz`` without pickle (object arrays are refused); failures are one user error."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError, KeyError) as exc:
        raise UserError(f"{what} {path} is truncated, corrupt or not an .npz file ({first_line(exc)})") from None
