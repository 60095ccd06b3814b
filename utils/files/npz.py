"""``.npz`` files: arrays and text without pickle (CLD sums, exported features, trajectory states).

Reading is bounded: a zip archive's members are checked before any is inflated (what they declare
and what they are), so a small file cannot stand for gigabytes (:func:`check_members`; checkpoints,
also zip archives, go through it too).
"""
from __future__ import annotations

import os
import zipfile
from typing import Any, Iterable, Mapping

import numpy as np

from utils.errors import UserError, first_line
from utils.files.atomic import atomic_write

def save_npz(path: str, arrays: Mapping[str, Any]) -> None:
    """Write arrays to an ``.npz`` atomically; text metadata goes in as 0-d string arrays (no pickle)."""
    atomic_write(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


# A deflated member may expand this many times (numpy and torch write their members stored, as they
# are, so this only admits other writers' compression; a 1 GiB member of zeros deflates 1000-fold).
MAX_EXPANSION = 20


def check_members(archive: zipfile.ZipFile, path: str, what: str, expected: Iterable[str] | None = None) -> None:
    """Refuse a zip archive whose members would inflate beyond their bound, before any is read.

    Every member must declare an uncompressed size of at most :data:`MAX_EXPANSION` times its
    compressed size (equal sizes when stored), and together at most that many times the file; with
    ``expected``, only members of those names (``key.npy``) may be present. zipfile checks each
    member's actual size against the declared one as it reads.
    """
    allowed = None if expected is None else {f"{name}.npy" for name in expected}
    total = 0
    for info in archive.infolist():
        if allowed is not None and info.filename not in allowed:
            raise UserError(f"{what} {path} holds an unexpected member {info.filename!r}; it was not loaded")
        limit = info.compress_size if info.compress_type == zipfile.ZIP_STORED else MAX_EXPANSION * info.compress_size
        if info.file_size > limit:
            raise UserError(f"{what} {path}: member {info.filename!r} declares {info.file_size} bytes from "
                            f"{info.compress_size} compressed; the file is corrupt or crafted, and was not loaded")
        total += info.file_size
    if total > MAX_EXPANSION * max(os.path.getsize(path), 1):
        raise UserError(f"{what} {path} declares more data than its size allows; it was not loaded")


def load_npz(path: str, what: str, expected: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read an ``.npz`` without pickle (object arrays are refused; with ``expected``, only those
    members), bounded by :func:`check_members`; failures are one user error."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} not found")
    try:
        with zipfile.ZipFile(path) as archive:
            check_members(archive, path, what, expected)
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"{what} {path} is truncated, corrupt or not an .npz file ({first_line(exc)})") from None
