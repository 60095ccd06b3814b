"""Files passed between the stages: loss files, score files, split files (DESIGN.md).

One module reads and writes all of them, including the paper repository's legacy pickles.
Every write is atomic (temporary file in the same folder, then ``os.replace``), and every read
goes through :class:`SafeUnpickler`, which admits containers, numbers, strings and numpy
arrays/scalars only, so that a pickle from someone else can never run code on load.

This module imports numpy only (no torch): stage 2 runs without torch.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import os
import pickle
import sys
import tempfile
from typing import Any, Callable, Mapping

import numpy as np

from utils.cli import UserError

LOSS_FORMAT = "cld-losses/1"
SCORE_FORMAT = "cld-scores/1"
SPLIT_FORMAT = "cld-split/1"

# Optional per-example signals recorded beside the losses (stage 1 -> baselines).
SIGNAL_KEYS = ("tr_correct", "tr_margin", "tr_el2n")

ZIP_MAGIC = b"PK\x03\x04"  # how a torch.save checkpoint (a zip archive) begins


# ----------------------------------------------------------------------------- writing

def atomic_write(path: str, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through ``write(fileobj)`` so that readers see the old file or the new one.

    The data goes to a temporary file ``.<name>.<random>.tmp`` in the same folder (same
    filesystem, so ``os.replace`` is atomic), is flushed and fsynced, and only then replaces
    ``path``. A crash at any moment leaves no truncated file under ``path``; a killed writer may
    leave its temporary file, which the next write of ``path`` removes (:func:`remove_stale_temps`).
    The writer holds an ``flock`` on its temporary file until it has been renamed, which is how a
    later writer tells a stale one from one still being written. The file gets the usual
    permissions (0666 less the umask), not ``mkstemp``'s private 0600.
    """
    folder = os.path.dirname(os.path.abspath(path))
    ensure_dir(folder)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            _try_lock(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # still locked: a concurrent cleaner never takes it for stale
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _temp_prefix(path: str) -> str:
    return "." + os.path.basename(path) + "."


def _try_lock(fd: int) -> bool:
    """Take an exclusive flock without waiting; False if it is held elsewhere or unsupported."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temporary files that killed writers of ``path`` left; returns their paths.

    A temporary file is stale when no process holds its lock (the writer died before renaming
    it). Where the filesystem offers no locks, nothing is removed.
    """
    removed = []
    pattern = os.path.join(glob.escape(os.path.dirname(os.path.abspath(path))),
                           glob.escape(_temp_prefix(path)) + "*.tmp")
    for tmp in glob.glob(pattern):
        try:
            with open(tmp, "rb") as f:
                if _try_lock(f.fileno()):
                    os.unlink(tmp)
                    removed.append(tmp)
        except OSError:
            continue  # gone meanwhile, or not ours to read: leave it
    return removed


_UMASK: list[int] = []


def _umask() -> int:
    if not _UMASK:
        mask = os.umask(0o022)
        os.umask(mask)
        _UMASK.append(mask)
    return _UMASK[0]


def atomic_pickle(path: str, obj: Any) -> None:
    """Pickle ``obj`` to ``path`` atomically."""
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def ensure_dir(folder: str) -> None:
    """Create ``folder`` (and parents) or fail with a user error naming it."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create folder {folder!r} ({exc.strerror}); choose a writable location") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"folder {folder!r} is not writable; choose a writable location")


def check_output_free(path: str, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse to replace an existing result unless the user asked for it."""
    if os.path.exists(path) and not overwrite:
        raise UserError(f"{path} already exists; pass {flag} to replace it, or choose another output path")


# ----------------------------------------------------------------------------- safe reading

_ALLOWED_GLOBALS = {
    ("builtins", name) for name in
    ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes",
     "bytearray", "bool", "slice", "range")
} | {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol-2 pickles of numpy arrays encode their bytes with it
} | {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    (module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")
} | {
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only plain containers, numbers, strings and numpy data."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_pickle(path: str, what: str, encoding: str = "ASCII") -> Any:
    """Load a pickle safely; every failure becomes one user error naming the file.

    Args:
        path: the file.
        what: what the file should be, for messages ("loss file", "score file", ...).
        encoding: how to decode Python 2 strings ("latin1" for CIFAR's own pickles).
    """
    if not path:
        raise UserError(f"no {what} given")
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} not found")
    try:
        with open(path, "rb") as f:
            if f.read(4) == ZIP_MAGIC:
                raise UserError(f"{what} {path} is a zip archive (a PyTorch checkpoint?), not a pickle")
            f.seek(0)
            with _quiet_excepthook():
                return SafeUnpickler(f, encoding=encoding).load()
    except pickle.UnpicklingError as exc:
        if "refusing to load" in str(exc):
            raise UserError(f"{what} {path} holds Python objects other than data ({exc}); "
                            "it was not loaded, since loading it could run code") from None
        raise UserError(f"{what} {path} is truncated, corrupt or not a pickle ({exc})") from None
    except MemoryError:
        raise UserError(f"{what} {path} is truncated or corrupt (a length field asks for more memory "
                        "than there is)") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, OverflowError) as exc:
        raise UserError(f"{what} {path} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path} ({exc.strerror or exc})") from None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt bytes reach odd parsers (e.g. SyntaxError from
        # a damaged protocol-0 integer); only data classes can be built, so any failure is corruption
        raise UserError(f"{what} {path} is truncated or corrupt ({type(exc).__name__}: {exc})") from None


@contextlib.contextmanager
def _quiet_excepthook():
    """Silence CPython's stray ``SystemError: deallocated bytearray object has exported buffers``.

    When a corrupt length field makes the unpickler's bytearray allocation fail, CPython prints
    that line through ``sys.excepthook`` before raising MemoryError (which becomes a user error).
    """
    hook = sys.excepthook
    sys.excepthook = lambda *args: None
    try:
        yield
    finally:
        sys.excepthook = hook


# ----------------------------------------------------------------------------- loss files

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
    """Write a loss file (DESIGN.md format) atomically after checking its shapes."""
    record = dict(losses)
    record["format"] = LOSS_FORMAT
    validate_losses(record, path)
    atomic_pickle(path, record)


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
    return out


def load_losses(path: str, split_path: str = "") -> dict:
    """Read a loss file of this project, or the paper repository's legacy loss pickle.

    A legacy file stores per-epoch lists of numpy scalars whose order is the order of the train
    split, i.e. *positions*, not dataset indices. ``split_path`` (the split file written beside it)
    maps them back; without it the file is refused, because a coreset built from positions would
    silently contain the wrong images (UPSTREAM.md defect 1).
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


# ----------------------------------------------------------------------------- split files

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


# ----------------------------------------------------------------------------- score files

def save_scores(path: str, record: Mapping[str, Any]) -> None:
    """Write a score file (DESIGN.md format) atomically."""
    out = dict(record)
    out["format"] = SCORE_FORMAT
    out["indices"] = {int(c): np.asarray(v, dtype=np.int64) for c, v in record["indices"].items()}
    out["scores"] = {int(c): np.asarray(v) for c, v in record["scores"].items()}
    for c, idx in out["indices"].items():
        if out["scores"].get(c) is None or out["scores"][c].shape != idx.shape:
            raise ValueError(f"scores of class {c} are not aligned with its indices")
    atomic_pickle(path, out)


def load_scores(path: str) -> dict:
    """Read a score file of this project or of the paper code.

    Returns a dict with at least ``indices`` ({class: int64 array, best first}) and ``method``.
    Legacy files are ``{"0": indices, ...}`` or rows of ``(index, score)`` per class; their
    metadata (dataset, classes) is unknown and left as None.
    """
    d = load_pickle(path, "score file")
    if not isinstance(d, dict):
        raise UserError(f"score file {path} holds a {type(d).__name__}, not a dict")
    fmt = d.get("format")
    if fmt == SCORE_FORMAT:
        if not isinstance(d.get("indices"), dict):
            raise UserError(f"score file {path} has no per-class 'indices'")
        out = dict(d)
        out["indices"] = {int(c): _index_column(v, path, c) for c, v in d["indices"].items()}
        return out
    if fmt is not None:
        raise UserError(f"{path} is a {fmt!r} file, not a score file ({SCORE_FORMAT})")
    try:
        indices = {int(c): _index_column(v, path, c) for c, v in d.items()}
    except (ValueError, TypeError):
        raise UserError(f"{path} is not a score file: its keys are not class ids") from None
    return {"format": "legacy", "method": "legacy", "dataset": None, "model_arch": None,
            "num_classes": None, "indices": indices, "scores": None}


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
