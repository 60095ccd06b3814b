"""The exclusive lock a run (or a stage-2 output) holds while it is produced.

Kept apart from :mod:`utils.run` so that the grid can take and test locks without importing torch.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket

from utils.cli import UserError


class RunLock:
    """An exclusive ``flock`` on a run's lock file, held while the run lives.

    The kernel drops the lock when its process dies, so the lock of a killed run is taken over by
    the next process; the file keeps the holder's PID and host for the message a second process
    gets.
    """

    def __init__(self, path: str, what: str):
        self.path = path
        self._file = open(path, "a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise RunBusy(f"{what} is running in {holder} (it holds {path}); wait for it to finish, or give "
                              "this run another name or folder") from None
            raise UserError(f"cannot lock {path} ({exc.strerror})") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()


class RunBusy(UserError):
    """The run (or output) is being produced by another live process right now."""
