"""Reading pickles without running code and without unbounded memory.

:class:`SafeUnpickler` admits containers, numbers, strings and numpy arrays/scalars only, each
through a wrapper that checks its arguments, so that a pickle from someone else can never run
code on load. numpy only.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import sys
from typing import Any, Callable

import numpy as np

from utils.errors import UserError

ZIP_MAGIC = b"PK\x03\x04"  # how a torch.save checkpoint or an .npz (a zip archive) begins

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


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles call to rebuild bytes (``_codecs.encode(text, 'latin1')``): one byte per
    character, so the result is no larger than the file's own text. Any other codec is refused: a
    hex encoding doubles its input, and 29 of them nested make a 400-byte pickle ask for gigabytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"refusing to call _codecs.encode with {encoding!r}")
    return text.encode("latin1")


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
    ("_codecs", "encode"): _latin1_encode,
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
