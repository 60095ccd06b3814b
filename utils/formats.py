"""Files passed between the stages: loss files, score files, split files (docs/formats.md).

One module reads and writes all of them, including the paper repository's legacy pickles.
Every write is atomic (temporary file in the same folder, then ``os.replace``), and every read
goes through :class:`SafeUnpickler`, which admits containers, numbers, strings and numpy
arrays/scalars only, so that a pickle from someone else can never run code on load.

This module imports numpy only (no torch): stage 2 runs without torch.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import io
import json
import os
import pickle
import shutil
import sys
import tempfile
from codecs import encode as codecs_encode
from typing import Any, Callable, Mapping

import numpy as np

from utils import paths
from utils.cli import UserError

LOSS_FORMAT = "cld-losses/1"
SCORE_FORMAT = "cld-scores/1"
SPLIT_FORMAT = "cld-split/1"
SUMS_FORMAT = "cld-sums/1"

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
    permissions (0666 less the umask), not ``mkstemp``'s private 0600. A full disk (or another
    failed write) is one user error naming the file and the free space, and leaves no partial file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    ensure_dir(folder)
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; it cannot be replaced by a file")
    remove_stale_temps(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=paths.temp_prefix(path), suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            _try_lock(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # still locked: a concurrent cleaner never takes it for stale
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type's name if the
    message is empty: library errors can be long, span several lines, or say nothing."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def write_error(path: str, exc: OSError) -> UserError:
    """The user error for a failed write of ``path``: a full disk names the space left."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        folder = os.path.dirname(os.path.abspath(path))
        try:
            free = shutil.disk_usage(folder).free
            space = f"{free / 2**20:.1f} MB free"
        except OSError:
            space = "free space unknown"
        return UserError(f"no space left to write {path} ({space} in {folder}); nothing was written: free some "
                         "space or choose another folder, then run the same command again")
    return UserError(f"cannot write {path} ({exc.strerror or exc}); nothing was written")


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
    for tmp in glob.glob(paths.temp_pattern(path)):
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
    """Refuse to replace an existing result unless the user asked for it (a folder never)."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; choose a file name for the output")
    if os.path.exists(path) and not overwrite:
        raise UserError(f"{path} already exists; pass {flag} to replace it, or choose another output path")


# ----------------------------------------------------------------------------- safe reading

# What a pickle may build: containers, numbers, strings and numpy arrays, dtypes and scalars.
# Every callable it may call is a wrapper that checks its arguments, so that no call allocates
# more than the file's bytes account for (``bytearray(2**31)`` is 30 bytes of pickle).
_ARRAY_KINDS = "biufcSU"  # numeric, bool, bytes and text; never object ('O') or raw ('V') data
_MAX_ITEMSIZE = 4096


def _dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype:
    dtype = np.dtype(obj, align, copy)
    if dtype.kind not in _ARRAY_KINDS or dtype.itemsize > _MAX_ITEMSIZE or dtype.fields or dtype.subdtype:
        raise pickle.UnpicklingError(f"refusing to load an array of dtype {dtype}")
    return dtype


class _NdarrayMark:
    """Stands for numpy.ndarray in a pickle: an argument of _reconstruct, never called itself."""

    def __new__(cls, *args: Any, **kwargs: Any):
        raise pickle.UnpicklingError("refusing to build a numpy.ndarray of a size given in the pickle")


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if subtype is not _NdarrayMark or tuple(shape) != (0,):
        raise pickle.UnpicklingError("refusing to load numpy._reconstruct with unusual arguments")
    return np.empty((0,), np.uint8)  # the data arrives through __setstate__, checked by numpy


def _scalar(dtype: Any, data: Any = None) -> Any:
    if isinstance(data, str):  # Python 2 pickles, read with encoding='latin1'
        data = data.encode("latin1")
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("refusing to load numpy.scalar with unusual arguments")
    return np.frombuffer(data, dtype)[0]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if not isinstance(dtype, np.dtype) or len(memoryview(buf).cast("B")) != count * dtype.itemsize:
        raise pickle.UnpicklingError("refusing to load numpy._frombuffer whose shape does not match its data")
    return np.frombuffer(buf, dtype).reshape(shape, order=order)


def _no_sizes(kind: type) -> Callable[..., Any]:
    """A builtin constructor that may not be given a bare integer (``bytes(10**9)``)."""
    def build(*args: Any) -> Any:
        if any(isinstance(a, int) for a in args):
            raise pickle.UnpicklingError(f"refusing to call {kind.__name__} with a size")
        return kind(*args)
    return build


_CALLABLES = {
    **{("builtins", k.__name__): _no_sizes(k) for k in (list, tuple, set, frozenset, dict, bytes)},
    **{("builtins", k.__name__): k for k in (int, float, complex, str, bool, slice)},
    ("collections", "OrderedDict"): dict,
    ("_codecs", "encode"): codecs_encode,
    ("numpy", "ndarray"): _NdarrayMark,
    ("numpy", "dtype"): _dtype,
    **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain containers, numbers, strings and numpy data, and only
    through calls whose arguments it has checked."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # Python 2 pickles
            module = "builtins"
        found = _CALLABLES.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return found


def _check_expansion(obj: Any, limit: int, path: str, what: str) -> None:
    """Refuse an object graph that visits more items than the file could hold without sharing:
    a few hundred bytes of shared references can stand for billions of items."""
    seen, stack = 0, [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = list(item)
        else:
            continue
        seen += len(children)
        if seen > limit:
            raise UserError(f"{what} {path} declares more data than its {os.path.getsize(path)} bytes hold "
                            "(shared references); it was not loaded")
        stack.extend(children)


def load_pickle(path: str, what: str, encoding: str = "ASCII") -> Any:
    """Load a pickle safely; every failure becomes one user error naming the file.

    The file is read whole first (a corrupt length field then cannot make the reader allocate more
    than the file), only data classes can be built, and an object graph larger than the file
    could hold is refused before anything walks it.

    Args:
        path: the file.
        what: what the file should be, for messages ("loss file", "score file", ...).
        encoding: how to decode Python 2 strings ("latin1" for CIFAR's own pickles).
    """
    if not path:
        raise UserError(f"no {what} given")
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} not found" if not os.path.isdir(path) else f"{what} {path} is a folder")
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:4] == ZIP_MAGIC:
            raise UserError(f"{what} {path} is a zip archive (a PyTorch checkpoint or .npz?), not a pickle")
        with _quiet_excepthook():
            obj = SafeUnpickler(io.BytesIO(data), encoding=encoding).load()
    except pickle.UnpicklingError as exc:
        if "refusing to" in str(exc):
            raise UserError(f"{what} {path} holds Python objects other than data ({exc}); "
                            "it was not loaded, since loading it could run code or exhaust memory") from None
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
    _check_expansion(obj, 2 * len(data) + 10_000, path, what)
    return obj


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
    """Write a loss file (the format of docs/formats.md) atomically after checking its shapes."""
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
    check_run_metadata(out, path, "loss file")
    check_labels_and_indices(out, path)
    return out


MAX_CLASSES = 1_000_000  # far above any dataset; a larger label is corruption, not data


def check_run_metadata(d: dict, path: str, what: str) -> None:
    """The dataset, model, seed and class count a file of this project records: names that may
    become part of file names, and numbers of the right kind (legacy files record none)."""
    from utils.flags import check_safe_name

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
    """Write a score file (the format of docs/formats.md) atomically."""
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

    Returns a dict with at least ``indices`` ({class: int64 array, best first}), ``scores``
    ({class: float64 array aligned with it}, or None for legacy files) and ``method``. Legacy files
    are ``{"0": indices, ...}`` or rows of ``(index, score)`` per class; their metadata (dataset,
    classes) is unknown and left as None. Class keys must be integers (decimal strings in legacy
    files), scores finite, and every name that may become part of a file name a known one.
    """
    from utils import methods

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
    out["method"] = methods.get(d.get("method") if isinstance(d.get("method"), str) else repr(d.get("method"))).name
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


# ----------------------------------------------------------------------------- npz files

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


# ----------------------------------------------------------------------------- CLD sums files

_SUMS_META = ("dataset", "model_arch", "manual_seed", "num_classes", "collect_precision", "data_path")


def save_sums(path: str, record: Mapping[str, Any], state: Mapping[str, np.ndarray]) -> None:
    """Write a sums file (``--trajectories sums``): the run's metadata and split as in a loss file,
    and CLD's running sums (``sums_*``), in an ``.npz`` that loads without pickle."""
    arrays = {"format": SUMS_FORMAT, "config": json.dumps(record["config"], sort_keys=True),
              **{key: record[key] for key in _SUMS_META},
              **{key: record[key] for key in ("epoch", "tr_lbl", "val_lbl", "train_indices", "val_indices")},
              **{f"sums_{key}": value for key, value in state.items()}}
    save_npz(path, arrays)


def load_sums(path: str) -> dict:
    """Read a sums file; returns its metadata, split and ``sums`` (the state of ``CLDSums``)."""
    data = load_npz(path, "sums file")
    if str(data.get("format", "")) != SUMS_FORMAT:
        raise UserError(f"{path} is not a sums file of stage 1 (no '{SUMS_FORMAT}' format tag)")
    try:
        out = {key: data[key].item() for key in _SUMS_META}
        out["config"] = json.loads(str(data["config"]))
        for key, dtype in (("epoch", np.int64), ("tr_lbl", np.int64), ("val_lbl", np.int64),
                           ("train_indices", np.int64), ("val_indices", np.int64)):
            out[key] = _as_array(data[key], dtype, path, key, 1)
        out["sums"] = {key[5:]: value for key, value in data.items() if key.startswith("sums_")}
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"sums file {path} lacks or garbles {exc}; it is corrupt") from None
    check_run_metadata(out, path, "sums file")
    if out["tr_lbl"].shape != out["train_indices"].shape or out["val_lbl"].shape != out["val_indices"].shape:
        raise UserError(f"sums file {path}: labels and indices are not aligned; it is corrupt")
    check_labels_and_indices(out, path)
    return out
