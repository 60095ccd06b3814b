"""Score files, stage 2 -> stage 3 (docs/formats.md): this project's and the paper code's.

numpy only.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from utils.errors import UserError
from utils.files.atomic import atomic_pickle
from utils.files.losses import MAX_CLASSES, check_run_metadata
from utils.files.unpickle import load_pickle

SCORE_FORMAT = "cld-scores/1"

def save_scores(path: str, record: Mapping[str, Any], replace: bool = True) -> None:
    """Write a score file (the format of docs/formats.md) atomically; ``replace=False``: only if no
    file of that name exists when it is written (of two racing writers, one succeeds)."""
    out = dict(record)
    out["format"] = SCORE_FORMAT
    out["indices"] = {int(c): np.asarray(v, dtype=np.int64) for c, v in record["indices"].items()}
    out["scores"] = {int(c): np.asarray(v) for c, v in record["scores"].items()}
    for c, idx in out["indices"].items():
        if out["scores"].get(c) is None or out["scores"][c].shape != idx.shape:
            raise ValueError(f"scores of class {c} are not aligned with its indices")
    atomic_pickle(path, out, replace)


def load_scores(path: str) -> dict:
    """Read a score file of this project or of the paper code.

    Returns a dict with at least ``indices`` ({class: int64 array, best first}), ``scores``
    ({class: float64 array aligned with it}, or None for legacy files) and ``method``. Legacy files
    are ``{"0": indices, ...}`` or rows of ``(index, score)`` per class; their metadata (dataset,
    classes) is unknown and left as None. Class keys must be integers (decimal strings in legacy
    files), scores finite, and every name that may become part of a file name a known one (the method is
    checked against the registry by the caller: :func:`utils.methods.registry.get`).
    """
    d = load_pickle(path, "score file")
    if not isinstance(d, dict):
        raise UserError(f"score file {path} holds a {type(d).__name__}, not a dict")
    fmt = d.get("format")
    if fmt is None:
        indices = {_class_key(c, path, legacy=True): _index_column(v, path, c) for c, v in d.items()}
        return {"format": "legacy", "method": "legacy", "dataset": None, "model_arch": None,
                "num_classes": None, "indices": indices, "scores": None, "hard_end": "top", "greedy": False}
    if fmt != SCORE_FORMAT:
        raise UserError(f"{path} is a {fmt!r} file, not a score file ({SCORE_FORMAT})")
    if not isinstance(d.get("indices"), dict) or not isinstance(d.get("scores"), dict):
        raise UserError(f"score file {path} has no per-class 'indices' and 'scores'")
    out = dict(d)
    if not isinstance(d.get("method"), str):
        raise UserError(f"score file {path}: method {d.get('method')!r} is not a method name")
    check_run_metadata(out, path, "score file")
    if d.get("hard_end", "top") not in ("top", "bottom"):
        raise UserError(f"score file {path}: hard_end {d.get('hard_end')!r} is neither 'top' nor 'bottom'")
    out["indices"] = {_class_key(c, path): _index_column(v, path, c) for c, v in d["indices"].items()}
    out["scores"] = {}
    for c, v in d["scores"].items():
        key = _class_key(c, path)
        values = np.asarray(v)
        if key not in out["indices"] or values.dtype.kind not in "iuf" or values.shape != out["indices"][key].shape:
            raise UserError(f"score file {path}: the scores of class {key} are not numbers aligned with its indices")
        # A greedy order's gains may be infinite (k-center's first pick, a singular log-det step);
        # scores that are ranked by value may not, and NaN is never a score.
        if np.isnan(values).any() or (not d.get("greedy") and not np.isfinite(values).all()):
            raise UserError(f"score file {path}: class {key} holds NaN or infinite scores; rescore with "
                            "compute_cld_scores.py")
        out["scores"][key] = values.astype(np.float64)
    if set(out["scores"]) != set(out["indices"]):
        raise UserError(f"score file {path}: classes with indices and classes with scores differ")
    if d.get("weights") is not None:
        out["weights"] = _weights(d["weights"], out["indices"], path)
    if d.get("train_ids") is not None:
        out["train_ids"] = _train_ids(d["train_ids"], out["indices"], path)
    names = d.get("group_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(x, str) for x in names)
                                  and len(names) == d.get("num_classes")):
        raise UserError(f"score file {path}: group_names is not a list of one name per class")
    return out


def _train_ids(value: Any, indices: dict[int, np.ndarray], path: str) -> np.ndarray:
    """A recorded run's ids of its examples (int64 or text): ``train_ids[i]`` names ranked index i,
    so every ranked index must have one."""
    arr = np.asarray(value)
    ranked = np.concatenate([np.zeros(0, np.int64), *indices.values()])
    if arr.ndim != 1 or arr.dtype.kind not in "iuU" or (ranked.size and (ranked.min() < 0 or ranked.max() >= arr.size)):
        raise UserError(f"score file {path}: train_ids is not a list of integer or text ids naming every ranked "
                        "index; the file is corrupt")
    return arr.astype(np.int64) if arr.dtype.kind in "iu" else arr


def _weights(value: Any, indices: dict[int, np.ndarray], path: str) -> dict[str, dict[int, np.ndarray]]:
    """CRAIG's and GradMatch's per-example weights: ``{budget key: {class: weights of its first k}}``."""
    if not isinstance(value, dict):
        raise UserError(f"score file {path}: 'weights' is not a dict of budgets")
    out = {}
    for key, per_class in value.items():
        if not isinstance(key, str) or not re.fullmatch(r"k\d{1,9}|f0?\.\d{1,12}|f1", key) or \
                not isinstance(per_class, dict):
            raise UserError(f"score file {path}: weights budget {key!r} is not k<count> or f<fraction> with weights "
                            "per class")
        out[key] = {}
        for c, w in per_class.items():
            cls = _class_key(c, path)
            arr = np.asarray(w)
            if cls not in indices or arr.ndim != 1 or arr.dtype.kind not in "iuf" or arr.size > indices[cls].size \
                    or not np.isfinite(arr).all() or (arr < 0).any():
                raise UserError(f"score file {path}: the {key} weights of class {c!r} are not nonnegative numbers "
                                "aligned with the top of its ranking")
            out[key][cls] = arr.astype(np.float64)
    return out


def _class_key(key: Any, path: str, legacy: bool = False) -> int:
    """A class id: an integer (a string of digits in the paper code's files), in range."""
    if isinstance(key, str) and legacy and key.isdigit() and len(key) <= 7:
        key = int(key)
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= key < MAX_CLASSES:
        raise UserError(f"score file {path}: class key {key!r} is not a class id (an integer in "
                        f"0..{MAX_CLASSES - 1}); the file is corrupt or not a score file")
    return int(key)


def _index_column(value: Any, path: str, cls: Any) -> np.ndarray:
    """Indices of one class, from a 1-D array of indices or rows whose first column is the index."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise UserError(f"score file {path}: class {cls} is not an array") from None
    if arr.ndim == 2 and arr.shape[1] >= 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise UserError(f"score file {path}: class {cls} has shape {arr.shape}, expected a list of indices")
    if arr.size and (arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and not np.all(arr == np.round(arr)))):
        raise UserError(f"score file {path}: class {cls} holds non-integer indices")
    return arr.astype(np.int64)
