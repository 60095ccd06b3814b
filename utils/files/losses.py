"""The files of stage 1: loss files, split files and CLD sums files (docs/formats.md).

One module reads and writes them, the paper repository's legacy loss and split pickles included.
Every read is validated (keys, dtypes, shapes, label ranges, indices) before anything is sized by
it. numpy only (stage 2 runs without torch).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from cld_recorder import (LOSS_FORMAT, RECORDED_KEYS, SIGNAL_KEYS, SUMS_FORMAT, SUMS_META as _SUMS_META,
                          SUMS_SPLIT as _SUMS_SPLIT, SUMS_STATE, write_loss_file, write_sums_file)
from utils.errors import UserError
from utils.files.atomic import atomic_pickle, write_error
from utils.files.npz import load_npz
from utils.files.unpickle import load_pickle
from utils.paths import check_safe_name

SPLIT_FORMAT = "cld-split/1"
# The loss and sums formats, their writers and the optional per-example signals (stage 1 ->
# baselines) are defined in cld_recorder.py, which writes these files from a user's own loop too.

def _as_array(value: Any, dtype: Any, path: str, key: str, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise UserError(f"loss file {path}: {key!r} is not an array") from None
    if arr.ndim != ndim:
        raise UserError(f"loss file {path}: {key!r} has {arr.ndim} dimensions, expected {ndim}")
    if dtype is not None:
        if np.dtype(dtype).kind in "iu" and arr.size and arr.dtype.kind not in "iub":
            raise UserError(f"loss file {path}: {key!r} must hold integers, found {arr.dtype}")
        try:
            arr = arr.astype(dtype, copy=False)
        except (ValueError, TypeError):
            raise UserError(f"loss file {path}: {key!r} holds {arr.dtype} values, not numbers") from None
    return arr


def save_losses(path: str, losses: Mapping[str, Any]) -> None:
    """Write a loss file (the format of docs/formats.md) atomically after checking its shapes."""
    record = dict(losses)
    record["format"] = LOSS_FORMAT
    validate_losses(record, path)
    try:
        write_loss_file(path, record)
    except OSError as exc:
        raise write_error(path, exc) from None


def validate_losses(d: Mapping[str, Any], path: str) -> dict:
    """Check the keys, dtypes and shapes of a loss dict; return it with arrays normalised."""
    required = ("epoch", "tr_loss", "val_loss", "tr_lbl", "val_lbl", "train_indices", "val_indices")
    missing = [k for k in required if k not in d]
    if missing:
        raise UserError(f"loss file {path} lacks {', '.join(missing)}; is it a loss file of stage 1?")
    out = dict(d)
    out["epoch"] = _as_array(d["epoch"], np.int64, path, "epoch", 1)
    out["tr_loss"] = _as_array(d["tr_loss"], np.float32, path, "tr_loss", 2)
    out["val_loss"] = _as_array(d["val_loss"], np.float32, path, "val_loss", 2)
    for key in ("tr_lbl", "val_lbl", "train_indices", "val_indices"):
        out[key] = _as_array(d[key], np.int64, path, key, 1)
    n_epochs, n_train = out["tr_loss"].shape
    checks = [
        (out["epoch"].shape == (n_epochs,), "epoch", f"({n_epochs},)"),
        (out["val_loss"].shape[0] == n_epochs, "val_loss", f"({n_epochs}, N_val)"),
        (out["tr_lbl"].shape == (n_train,), "tr_lbl", f"({n_train},)"),
        (out["train_indices"].shape == (n_train,), "train_indices", f"({n_train},)"),
        (out["val_lbl"].shape == (out["val_loss"].shape[1],), "val_lbl", f"({out['val_loss'].shape[1]},)"),
        (out["val_indices"].shape == out["val_lbl"].shape, "val_indices", f"{out['val_lbl'].shape}"),
    ]
    for ok, key, expected in checks:
        if not ok:
            raise UserError(f"loss file {path}: {key!r} has shape {np.shape(out[key])}, expected {expected}")
    for key in SIGNAL_KEYS:
        if key in d and d[key] is not None:
            arr = _as_array(d[key], bool if key == "tr_correct" else None, path, key, 2)
            if arr.shape != (n_epochs, n_train):
                raise UserError(f"loss file {path}: {key!r} has shape {arr.shape}, expected {(n_epochs, n_train)}")
            out[key] = arr
    check_run_metadata(out, path, "loss file")
    check_labels_and_indices(out, path)
    check_run_records(out, path, "loss file")
    return out


def check_run_records(d: dict, path: str, what: str) -> None:
    """The types of what a file of stage 1 records about its run (read by stage 2 before use): the
    flags (``config``, a dict by name; their values are checked by the stages against the flags'
    kinds), its weights (``checkpoints``: ``last`` and ``snapshots`` by epoch), its data folder and
    collection precision."""
    if d.get("config") is not None and not (isinstance(d["config"], dict) and all(isinstance(k, str) for k in d["config"])):
        raise UserError(f"{what} {path}: 'config' is not a dict of flags by name; the file is corrupt")
    for key in ("data_path", "collect_precision"):
        if d.get(key) is not None and not isinstance(d[key], str):
            raise UserError(f"{what} {path}: {key!r} is not text; the file is corrupt")
    stopped = d.get("stopped")
    if stopped is not None and not (isinstance(stopped, dict) and isinstance(stopped.get("epoch"), (int, np.integer))):
        raise UserError(f"{what} {path}: 'stopped' is not a record of the epoch the run stopped at; the file is corrupt")
    checkpoints = d.get("checkpoints")
    if checkpoints is None:
        return
    snapshots = checkpoints.get("snapshots") if isinstance(checkpoints, dict) else None
    if not isinstance(checkpoints, dict) or not isinstance(checkpoints.get("last"), str) or not isinstance(snapshots, dict):
        raise UserError(f"{what} {path}: 'checkpoints' is not {{'last': path, 'snapshots': {{epoch: path}}}}; the file "
                        "is corrupt")
    for epoch, file in snapshots.items():
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 1 or not isinstance(file, str):
            raise UserError(f"{what} {path}: checkpoints.snapshots has the entry {epoch!r}: {file!r}, not an epoch and "
                            "its weights file; the file is corrupt")


MAX_CLASSES = 1_000_000  # far above any dataset; a larger label is corruption, not data


def check_run_metadata(d: dict, path: str, what: str) -> None:
    """The dataset, model, seed and class count a file of this project records: names that may
    become part of file names, and numbers of the right kind (legacy files record none)."""
    for key in ("dataset", "model_arch"):
        if d.get(key) is not None:
            check_safe_name(d[key], f"{what} {path}: {key}")
    seed, n_cls = d.get("manual_seed"), d.get("num_classes")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise UserError(f"{what} {path}: manual_seed {seed!r} is not a non-negative integer")
    if n_cls is not None and (isinstance(n_cls, bool) or not isinstance(n_cls, (int, np.integer))
                              or not 0 < n_cls <= MAX_CLASSES):
        raise UserError(f"{what} {path}: num_classes {n_cls!r} is not an integer in 1..{MAX_CLASSES}")


def check_labels_and_indices(d: dict, path: str) -> None:
    """Labels in [0, num_classes) (before anything sized by them is allocated), and dataset indices
    non-negative and listed once over the training and validation splits."""
    n_cls = int(d.get("num_classes") or MAX_CLASSES)
    for key in ("tr_lbl", "val_lbl"):
        lbl = d[key]
        if lbl.size and (lbl.min() < 0 or lbl.max() >= n_cls):
            bad = int(lbl.min()) if lbl.min() < 0 else int(lbl.max())
            raise UserError(f"loss file {path}: {key!r} holds class {bad}, outside 0..{n_cls - 1}")
    if d["tr_lbl"].size == 0:
        raise UserError(f"loss file {path} has no training examples")
    both = np.concatenate([d["train_indices"], d["val_indices"]])
    if both.size and both.min() < 0:
        raise UserError(f"loss file {path}: a dataset index is negative ({int(both.min())})")
    ordered = np.sort(both)
    twice = ordered[1:][ordered[1:] == ordered[:-1]]
    if twice.size:
        raise UserError(f"loss file {path}: dataset index {int(twice[0])} is listed twice in train_indices / "
                        "val_indices; the file is corrupt")


def load_losses(path: str, split_path: str = "") -> dict:
    """Read a loss file of this project, or the paper repository's legacy loss pickle.

    A legacy file stores per-epoch lists of numpy scalars whose order is the order of the train
    split, i.e. *positions*, not dataset indices. ``split_path`` (the split file written beside it)
    maps them back; without it the file is refused, because a coreset built from positions would
    silently contain the wrong images (docs/differences.md).
    """
    d = load_pickle(path, "loss file")
    if not isinstance(d, dict):
        raise UserError(f"loss file {path} holds a {type(d).__name__}, not a loss dict")
    fmt = d.get("format")
    if fmt == LOSS_FORMAT:
        return validate_losses(d, path)
    if fmt is not None:
        raise UserError(f"{path} is a {fmt!r} file, not a loss file ({LOSS_FORMAT})")
    if "tr_loss" not in d:
        raise UserError(f"{path} is not a loss file: it has no 'tr_loss'")
    return _legacy_losses(d, path, split_path)


def _stack_epochs(value: Any, path: str, key: str, dtype: Any) -> np.ndarray:
    try:
        return np.asarray([np.asarray(row, dtype=dtype) for row in value])
    except (ValueError, TypeError):
        raise UserError(f"loss file {path}: {key!r} is not a list of equally long per-epoch rows") from None


def _legacy_losses(d: dict, path: str, split_path: str) -> dict:
    if not split_path:
        raise UserError(
            f"{path} is a legacy loss file of the paper's code: its columns are positions inside the "
            "train split, not dataset indices. Pass --split_path with its split file "
            "(Splits/<dataset>_<arch>_seed<seed>_split.pkl) so that scores name the right images")
    split = load_split(split_path)
    tr_loss = _stack_epochs(d["tr_loss"], path, "tr_loss", np.float32)
    val_loss = _stack_epochs(d.get("val_loss", []), path, "val_loss", np.float32)
    tr_lbl = _stack_epochs(d.get("tr_lbl", []), path, "tr_lbl", np.int64)
    val_lbl = _stack_epochs(d.get("val_lbl", []), path, "val_lbl", np.int64)
    if tr_loss.ndim != 2 or val_loss.ndim != 2 or tr_lbl.ndim != 2 or val_lbl.ndim != 2:
        raise UserError(f"loss file {path}: per-epoch lists are empty or ragged")
    for name, idx, n in (("train", split["train_indices"], tr_loss.shape[1]),
                         ("validation", split["val_indices"], val_loss.shape[1])):
        if len(idx) != n:
            raise UserError(f"split file {split_path} lists {len(idx)} {name} indices but the loss file "
                            f"{path} has {n} {name} columns; they belong to different runs")
    epochs = d.get("epoch")
    if epochs is None or len(epochs) == 0:  # not `or`: a numpy array has no truth value
        epochs = list(range(tr_loss.shape[0]))
    converted = {
        "dataset": split.get("dataset", d.get("dataset")),
        "model_arch": split.get("model_arch", d.get("model_arch")),
        "manual_seed": split.get("manual_seed", d.get("manual_seed")),
        "epoch": np.asarray(epochs, dtype=np.int64),
        "tr_loss": tr_loss, "val_loss": val_loss,
        # Labels were re-stored every epoch in the same order; the first row is the labelling.
        "tr_lbl": tr_lbl[0], "val_lbl": val_lbl[0],
        "train_indices": split["train_indices"], "val_indices": split["val_indices"],
        "legacy": True,
    }
    return validate_losses(converted, path)


def save_split(path: str, split: Mapping[str, Any]) -> None:
    """Write a split file; its keys are a superset of the paper code's split pickle."""
    record = dict(split)
    record["format"] = SPLIT_FORMAT
    record["train_indices"] = np.asarray(split["train_indices"], dtype=np.int64)
    record["val_indices"] = np.asarray(split["val_indices"], dtype=np.int64)
    atomic_pickle(path, record)


def load_split(path: str) -> dict:
    """Read a split file of this project or of the paper code (lists of indices)."""
    d = load_pickle(path, "split file")
    if not isinstance(d, dict) or "train_indices" not in d or "val_indices" not in d:
        raise UserError(f"{path} is not a split file: it lacks 'train_indices'/'val_indices'")
    out = dict(d)
    for key in ("train_indices", "val_indices"):
        arr = np.asarray(d[key])
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise UserError(f"split file {path}: {key!r} is not a list of integer indices")
        out[key] = arr.astype(np.int64)
    return out


# CLD's running sums (cld_recorder.CLDSums keeps SUMS_STATE): a sums file holds each as sums_<name>.
SUMS_MEMBERS = ("format", "config", *_SUMS_META, *_SUMS_SPLIT, *(f"sums_{k}" for k in SUMS_STATE), *RECORDED_KEYS)


def save_sums(path: str, record: Mapping[str, Any], state: Mapping[str, np.ndarray]) -> None:
    """Write a sums file (``--trajectories sums``): the run's metadata and split as in a loss file,
    and CLD's running sums (``sums_*``), in an ``.npz`` that loads without pickle."""
    try:
        write_sums_file(path, record, state, _SUMS_META, _SUMS_SPLIT)
    except OSError as exc:
        raise write_error(path, exc) from None


def load_sums(path: str) -> dict:
    """Read a sums file; returns its metadata, split and ``sums`` (the state of ``CLDSums``)."""
    data = load_npz(path, "sums file", SUMS_MEMBERS)
    if str(data.get("format", "")) != SUMS_FORMAT:
        raise UserError(f"{path} is not a sums file of stage 1 (no '{SUMS_FORMAT}' format tag)")
    try:
        out = {key: data[key].item() for key in _SUMS_META}
        out["config"] = json.loads(str(data["config"]))
        for key, dtype in (("epoch", np.int64), ("tr_lbl", np.int64), ("val_lbl", np.int64),
                           ("train_indices", np.int64), ("val_indices", np.int64)):
            out[key] = _as_array(data[key], dtype, path, key, 1)
        out["sums"] = {key[5:]: value for key, value in data.items() if key.startswith("sums_")}
        if "source" in data:  # a run recorded from a user's own loop (cld_recorder.py)
            out["source"] = str(data["source"])
            out["train_ids"], out["val_ids"] = data["train_ids"], data["val_ids"]
            out["group_names"] = json.loads(str(data["group_names"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"sums file {path} lacks or garbles {exc}; it is corrupt") from None
    check_run_metadata(out, path, "sums file")
    if out["tr_lbl"].shape != out["train_indices"].shape or out["val_lbl"].shape != out["val_indices"].shape:
        raise UserError(f"sums file {path}: labels and indices are not aligned; it is corrupt")
    check_labels_and_indices(out, path)
    return out
