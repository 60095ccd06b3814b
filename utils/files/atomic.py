"""Writing files so that a crash never leaves half of one: atomic replacement, folders, refusals.

Every file the project writes goes through :func:`atomic_write`, which turns the failures of
``cld_recorder.atomic_write`` (the one atomic writer, shared with a user's own training loop) into
one-line user errors. torch-free.
"""
from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
import tempfile
from typing import Any, Callable

from cld_recorder import atomic_write as recorder_atomic_write, temp_prefix
from utils.errors import UserError


def atomic_write(path: str, write: Callable[[io.BufferedWriter], None], replace: bool = True) -> None:
    """Write ``path`` through ``write(fileobj)`` so that readers see the old file or the new one
    (:func:`cld_recorder.atomic_write`: a locked temporary file in the same folder, fsynced, then
    renamed; stale temporary files of killed writers removed first).

    The failures a user can act on are one user error: a folder in the file's place, a full disk
    (naming the free space), any other failed write; none leaves a partial file. ``replace=False``
    creates ``path`` only if it does not exist at the moment of naming it: of two writers racing
    for a new output, exactly one succeeds and the other gets a user error, nothing written.
    """
    ensure_dir(os.path.dirname(os.path.abspath(path)))
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; it cannot be replaced by a file")
    try:
        recorder_atomic_write(path, write, replace)
    except FileExistsError:
        raise UserError(f"{path} was created by another process meanwhile; nothing was written: pass --overwrite "
                        "to replace it, or choose another output path") from None
    except OSError as exc:
        raise write_error(path, exc) from None


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


def atomic_pickle(path: str, obj: Any, replace: bool = True) -> None:
    """Pickle ``obj`` to ``path`` atomically (``replace=False``: only as a new file, :func:`atomic_write`)."""
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL), replace)


def ensure_dir(folder: str) -> None:
    """Create ``folder`` (and parents) or fail with a user error naming it."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create folder {folder!r} ({exc.strerror}); choose a writable location") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"folder {folder!r} is not writable; choose a writable location")


def refuse_link(path: str) -> None:
    """A run's own file must not be a symbolic link: written (or read as its own) through one, it would
    change or report a file elsewhere."""
    if path and os.path.islink(path):
        raise UserError(f"{path} is a symbolic link; a run never writes through one: remove it, or choose other "
                        "folders")


def check_new_output(path: str, overwrite: bool, what: str) -> None:
    """Refuse, before any work, an output that cannot be written: one that exists (unless
    ``overwrite``), a folder in its place, a file where a folder of its path would be, or a folder
    this process may not write in. ``what`` names it (the flag, usually)."""
    check_output_free(path, overwrite)
    probe = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{what} {path}: {probe} is a file, so no folder of that path can be made; nothing was "
                        "written")
    try:  # a real file, not os.access: root passes access() where the filesystem refuses (/proc)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UserError(f"{what} {path}: the folder {probe} is not writable ({exc.strerror or exc}); nothing was "
                        "written") from None


def check_output_free(path: str, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse to replace an existing result unless the user asked for it (a folder never)."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; choose a file name for the output")
    if os.path.exists(path) and not overwrite:
        raise UserError(f"{path} already exists; pass {flag} to replace it, or choose another output path")
