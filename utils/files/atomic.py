"""Writing files so that a crash never leaves half of one: atomic replacement, folders, refusals.

Every file the project writes goes through :func:`atomic_write`: a temporary file in the same
folder, flushed and fsynced, then ``os.replace``. A writer holds a lock on its temporary file until
the rename (:mod:`utils.files.locks`), which is how a later writer tells the file of a killed
writer (stale, removed) from one still being written. numpy-free and torch-free.
"""
from __future__ import annotations

import errno
import glob
import io
import os
import pickle
import shutil
import tempfile
from typing import Any, Callable

from utils import paths
from utils.errors import UserError
from utils.files.locks import try_lock_descriptor


def atomic_write(path: str, write: Callable[[io.BufferedWriter], None], replace: bool = True) -> None:
    """Write ``path`` through ``write(fileobj)`` so that readers see the old file or the new one.

    The data goes to a temporary file ``.<name>.<random>.tmp`` in the same folder (same
    filesystem, so ``os.replace`` is atomic), is flushed and fsynced, and only then replaces
    ``path``. A crash at any moment leaves no truncated file under ``path``; a killed writer may
    leave its temporary file, which the next write of ``path`` removes (:func:`remove_stale_temps`).
    The writer holds a lock on its temporary file until it has been renamed, which is how a
    later writer tells a stale one from one still being written. The file gets the usual
    permissions (0666 less the umask), not ``mkstemp``'s private 0600. A full disk (or another
    failed write) is one user error naming the file and the free space, and leaves no partial file.

    ``replace=False`` creates ``path`` only if it does not exist at the moment of the rename (a
    hard link of the finished temporary file, which fails if the name is taken): of two writers
    racing for a new output, exactly one succeeds and the other gets a user error, nothing written.
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
            try_lock_descriptor(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if replace:
                os.replace(tmp, path)  # still locked: a concurrent cleaner never takes it for stale
            else:
                _create(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def _create(tmp: str, path: str) -> None:
    """Give the finished ``tmp`` the name ``path`` unless that name exists (then a user error)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise UserError(f"{path} was created by another process meanwhile; nothing was written: pass --overwrite "
                        "to replace it, or choose another output path") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        # No hard links here (some network and FUSE filesystems): O_EXCL claims the name, then the
        # rename fills it; a racer that claimed it first makes this one fail above.
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            raise UserError(f"{path} was created by another process meanwhile; nothing was written: pass "
                            "--overwrite to replace it, or choose another output path") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


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


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temporary files that killed writers of ``path`` left; returns their paths.

    A temporary file is stale when no process holds its lock (the writer died before renaming
    it). Where the filesystem offers no locks, nothing is removed.
    """
    removed = []
    for tmp in glob.glob(paths.temp_pattern(path)):
        try:
            with open(tmp, "rb") as f:
                if try_lock_descriptor(f.fileno()):
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
        fd, tmp = tempfile.mkstemp(prefix=paths.temp_prefix(path), suffix=".tmp", dir=probe)
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
