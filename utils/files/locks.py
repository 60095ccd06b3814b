"""Every lock of the project, from the ``filelock`` library (``flock`` on Unix), in one place.

* :class:`RunLock`: held by a run (stage 1 or 3) for its whole life, by the grid around a stage-2
  output, and named in the message a second process gets. The kernel drops the lock when its
  process dies, so the lock of a killed run is taken over by the next process.
* :func:`exclusive`: a short critical section (rewriting ``results.csv``).
* :func:`busy` and :func:`wait_for`: whether a lock is held now, and waiting until it is not.
* :func:`try_lock_descriptor`: a lock on an open file without waiting, the same ``flock`` that
  ``cld_recorder.atomic_write`` holds on its temporary file until the rename (so that a later
  writer tells a stale temporary file from one being written).

A lock file exists only while it is held: its holder removes it on release, while still holding
it, so a clean exit leaves no ``.lock`` file (a killed process leaves its file, unlocked; the next
process to take or probe that lock removes it). The lock is the file the path names: whoever locks
a file the path no longer names (removed by the holder it waited for) lets it go and tries again,
so a waiter holding an old, removed file never runs beside a newcomer holding the new one.
``filelock`` takes the lock (and already drops a file removed before it locked it); the check that
the path still names the locked file, and the removal on release, are this module's. A lock
file that cannot be removed while open (Windows; ``filelock``'s Windows lock removes its file
after release itself) stays, harmless. Every lock here is a real ``flock`` (an ``on_acquired``
callback rules out ``filelock``'s soft, marker-file fallback): on a filesystem without ``flock``
a lock fails with a user error naming its file.

Lock files are opened without following symlinks: a symlink planted at a lock's place is refused,
never written through. Nothing here imports torch, so the grid can take and test locks cheaply.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import Callable, Iterator

import filelock

from utils.errors import UserError

# Tries of a lock taken without waiting that found its file just removed or replaced by a releasing
# holder (each such try means the lock changed hands meanwhile; one more is nearly always enough).
_RETRIES = 100


class RunBusy(UserError):
    """The run (or output) is being produced by another live process right now."""


class _Replaced(Exception):
    """The file just locked is no longer the one the lock's path names (its holder removed it)."""


def _lock_error(path: str, exc: OSError) -> UserError:
    if exc.errno == errno.ELOOP:
        return UserError(f"{path} is a symbolic link; a lock file is never written through one: remove it")
    return UserError(f"cannot lock {path} ({exc.strerror or exc})")


def _names(path: str, fd: int) -> bool:
    """Whether ``path`` names the file open as ``fd`` now (the same inode; not through a link)."""
    try:
        return os.path.samestat(os.stat(path, follow_symlinks=False), os.fstat(fd))
    except FileNotFoundError:
        return False


def _remove_held(path: str, fd: int) -> None:
    """Remove the lock file ``path`` while ``fd`` still holds its lock, if the path still names it.
    Where a file cannot be removed while open (Windows), or the folder forbids it, it stays: a lock
    file left behind is harmless, only untidy (the next holder takes it over)."""
    try:
        if _names(path, fd):
            os.unlink(path)
    except OSError:
        pass


def _write_holder(fd: int) -> None:
    """Record who holds the lock, for the message a second process gets."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)


class _Held:
    """The lock ``path`` taken (``filelock``'s ``flock``, waiting ``timeout`` seconds, -1: for ever),
    checked to be the file the path names, removed on :meth:`release`.

    ``filelock`` already drops a file removed before it locked it; the check here also covers a file
    with another name (a hard link), and runs ``then(fd)`` only on the file that is the lock."""

    def __init__(self, path: str, timeout: float, then: Callable[[int], None] | None = None):
        self.path, self._fd = path, None
        self._lock = filelock.FileLock(path, on_acquired=self._acquired(then), thread_local=False)
        tries = 0
        while True:
            try:
                self._lock.acquire(timeout=timeout)
                return
            except _Replaced:
                pass
            except filelock.Timeout:
                if timeout != 0 or busy(path):
                    raise
                # Not held now: the file this try locked was removed by a holder releasing it.
            tries += 1
            if timeout == 0 and tries >= _RETRIES:  # a waiting lock tries as long as it waits
                raise filelock.Timeout(path)

    def _acquired(self, then: Callable[[int], None] | None) -> Callable[[int], None]:
        def acquired(fd: int) -> None:
            if not _names(self.path, fd):
                raise _Replaced(self.path)  # filelock lets the file go; the caller tries again
            if then is not None:
                then(fd)
            self._fd = fd
        return acquired

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        try:
            if self._fd is not None:
                _remove_held(self.path, self._fd)
        finally:
            self._fd = None
            self._lock.release()


def _take(path: str, timeout: float, then: Callable[[int], None] | None = None) -> _Held:
    """:class:`_Held`, its failures other than a held lock as one user error."""
    try:
        return _Held(path, timeout, then)
    except filelock.Timeout:  # an OSError too (TimeoutError), but the one a caller handles
        raise
    except OSError as exc:
        raise _lock_error(path, exc) from None


class RunLock:
    """An exclusive lock on ``path``, taken at once or refused with :class:`RunBusy`.

    Args:
        path: the lock file (created if missing; its content names the holder; removed on release).
        what: what holds it, for the message (``run X``, ``stage 2 for Y``).
    """

    def __init__(self, path: str, what: str):
        self.path = path
        try:
            self._held = _take(path, 0, _write_holder)
        except filelock.Timeout:
            raise RunBusy(f"{what} is running in {_holder(path)} (it holds {path}); wait for it to finish, or give "
                          "this run another name or folder") from None

    def release(self) -> None:
        self._held.release()


def _holder(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read(200).strip() or "another process"
    except OSError:
        return "another process"


def _open_existing(path: str) -> int | None:
    """The lock file ``path`` opened for locking, never created (None: there is none)."""
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)  # RDWR: NFS locks need it
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _lock_error(path, exc) from None


def busy(path: str) -> bool:
    """Whether a live process holds the lock ``path`` now (a missing file: no). Creates no file; a
    file no process holds (left by a killed one) is removed."""
    fd = _open_existing(path)
    if fd is None:
        return False
    try:
        if not filelock.lock_descriptor(fd, blocking=False):
            return True
        _remove_held(path, fd)
        return False
    except OSError as exc:
        raise _lock_error(path, exc) from None
    finally:
        os.close(fd)  # drops the lock this probe took, if any


def wait_for(path: str) -> None:
    """Block until the process holding ``path`` is done (or gone); returns at once if none holds it."""
    with exclusive(path) if os.path.lexists(path) else contextlib.nullcontext():
        pass


@contextlib.contextmanager
def exclusive(path: str) -> Iterator[None]:
    """Hold the lock ``path`` for the block, waiting for it as long as it takes (the file is removed after)."""
    held = _take(path, -1)
    try:
        yield
    finally:
        held.release()


def try_lock_descriptor(fd: int) -> bool:
    """Lock an open file without waiting; False if another process holds it, or locks are unsupported."""
    try:
        return filelock.lock_descriptor(fd, blocking=False)
    except OSError:
        return False
