"""Every lock of the project, from the ``filelock`` library (``flock`` on Unix), in one place.

* :class:`RunLock`: held by a run (stage 1 or 3) for its whole life, by the grid around a stage-2
  output, and named in the message a second process gets. The kernel drops the lock when its
  process dies, so the lock of a killed run is taken over by the next process.
* :func:`exclusive`: a short critical section (rewriting ``results.csv``).
* :func:`try_lock_descriptor`: a lock on an open file without waiting, the same ``flock`` that
  ``cld_recorder.atomic_write`` holds on its temporary file until the rename (so that a later
  writer tells a stale temporary file from one being written).

Lock files are opened without following symlinks: a symlink planted at a lock's place is refused,
never written through. Nothing here imports torch, so the grid can take and test locks cheaply.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import Iterator

import filelock

from utils.errors import UserError


class RunBusy(UserError):
    """The run (or output) is being produced by another live process right now."""


def _lock_error(path: str, exc: OSError) -> UserError:
    if exc.errno == errno.ELOOP:
        return UserError(f"{path} is a symbolic link; a lock file is never written through one: remove it")
    return UserError(f"cannot lock {path} ({exc.strerror or exc})")


def _write_holder(fd: int) -> None:
    """Record who holds the lock, for the message a second process gets."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)


class RunLock:
    """An exclusive lock on ``path``, taken at once or refused with :class:`RunBusy`.

    Args:
        path: the lock file (created if missing; its content names the holder).
        what: what holds it, for the message (``run X``, ``stage 2 for Y``).
    """

    def __init__(self, path: str, what: str):
        self.path = path
        self._lock = filelock.FileLock(path, on_acquired=_write_holder, thread_local=False)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise RunBusy(f"{what} is running in {_holder(path)} (it holds {path}); wait for it to finish, or give "
                          "this run another name or folder") from None
        except OSError as exc:
            raise _lock_error(path, exc) from None

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()


def _holder(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read(200).strip() or "another process"
    except OSError:
        return "another process"


def busy(path: str) -> bool:
    """Whether a live process holds the lock ``path`` now (a missing file: no)."""
    if not os.path.exists(path):
        return False
    lock = filelock.FileLock(path, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    except OSError as exc:
        raise _lock_error(path, exc) from None
    lock.release()
    return False


def wait_for(path: str) -> None:
    """Block until the process holding ``path`` is done (or gone)."""
    with exclusive(path):
        pass


@contextlib.contextmanager
def exclusive(path: str) -> Iterator[None]:
    """Hold the lock ``path`` for the block, waiting for it as long as it takes."""
    lock = filelock.FileLock(path, thread_local=False)
    try:
        lock.acquire()
    except OSError as exc:
        raise _lock_error(path, exc) from None
    try:
        yield
    finally:
        lock.release()


def try_lock_descriptor(fd: int) -> bool:
    """Lock an open file without waiting; False if another process holds it, or locks are unsupported."""
    try:
        return filelock.lock_descriptor(fd, blocking=False)
    except OSError:
        return False
