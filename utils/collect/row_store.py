"""Stage 1's per-epoch records, written once each, beside the run's checkpoints.

Every epoch adds one row per array (losses of the training and validation splits, and the
baselines' signals), and a row is written once: into memory-mapped ``.npy`` files of shape
(epochs, N) in ``{checkpoint_path}/{run}_trajectories/``, flushed to disk before the checkpoint
that counts it is renamed into place. The run-state checkpoint holds only the number of rows that
are valid (its epoch), so its size -- and the bytes a run writes per epoch -- does not grow with
the epoch. A run killed between a row and its checkpoint rewrites that row on resume.

With ``--trajectories sums`` only CLD's running sums are kept (:class:`cld_recorder.CLDSums`): the
state after epoch k is written to ``cld_sums_epoch{k}.npz`` before checkpoint k, and the older
state is removed once checkpoint k is in place, so a resume always finds the state its checkpoint
counts.

The rows and the sums are those of ``cld_recorder.py`` (:class:`cld_recorder.RowStore`,
:class:`cld_recorder.CLDSums`), with which users record from their own training loops: one
implementation of both. What differs is who counts the complete rows (here the checkpoint).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import numpy as np

from cld_recorder import SIGNAL_DTYPES, CLDSums, RecordError, RowStore, signal_row
from utils.errors import UserError
from utils.files.atomic import ensure_dir, write_error
from utils.files.losses import save_losses, save_sums
from utils.files.npz import load_npz, save_npz
from utils.paths import RunFiles
from utils.core.cld import cld


@contextlib.contextmanager
def _as_user_errors() -> Iterator[None]:
    """The row store's errors as stage 1's one-line user errors (a failed write names the file)."""
    try:
        yield
    except RecordError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise write_error(getattr(exc, "filename", None) or "the trajectory rows", exc) from None


class FullTrajectories:
    """Rows of every recorded array, one ``.npy`` memory map per array (:class:`cld_recorder.RowStore`).

    Args:
        files: the run's files (the folder of the maps).
        epochs: rows the run will record.
        n_train, n_val: columns of the training and validation arrays.
    """

    def __init__(self, files: RunFiles, epochs: int, n_train: int, n_val: int):
        self.files, self.epochs = files, epochs
        layout = {"tr_loss": (np.float32, n_train), "val_loss": (np.float32, n_val),
                  **{key: (dtype, n_train) for key, dtype in SIGNAL_DTYPES.items()}}
        self.rows = RowStore(files.trajectories, epochs, layout, remedy="start over with --overwrite")

    def open(self, done: int) -> None:
        """Create the maps (``done == 0``), or reopen those of a resumed run that counts ``done``
        rows, growing them when the run now asks for more epochs."""
        if done == 0:
            ensure_dir(self.files.trajectories)
        with _as_user_errors():
            self.rows.open(done)

    def record(self, epoch: int, rows: dict[str, np.ndarray]) -> None:
        self.rows.record(epoch, rows)

    def flush(self, done: int) -> None:
        """Make every row up to ``done`` durable (before the checkpoint that counts them)."""
        self.rows.flush()

    def arrays(self, done: int) -> dict[str, np.ndarray]:
        """The first ``done`` rows of every array (views of the maps; pickled without a copy)."""
        return self.rows.arrays(done)

    def forget_before(self, done: int) -> None:
        """Nothing to do: every row stays in the maps until the loss file is written; unlike
        :class:`SumsTrajectories`, no older state is kept beside the current one."""

    def cld_scores(self, done: int, split: dict[str, np.ndarray]) -> np.ndarray:
        """CLD from the first ``done`` rows (``split``: the labels and indices of both splits)."""
        rows = self.arrays(done)
        return cld({"epoch": np.arange(done), "tr_loss": rows["tr_loss"], "val_loss": rows["val_loss"], **split})

    def save(self, path: str, record: dict[str, Any], done: int) -> None:
        """The loss file: ``record`` and the first ``done`` rows of every array."""
        save_losses(path, {**record, **self.arrays(done)})


class SumsTrajectories:
    """CLD's running sums instead of rows (``--trajectories sums``); the same interface."""

    def __init__(self, files: RunFiles, tr_lbl: np.ndarray, val_lbl: np.ndarray, n_cls: int):
        self.files = files
        self.sums = CLDSums(tr_lbl, val_lbl, n_cls)

    def open(self, done: int) -> None:
        ensure_dir(self.files.trajectories)
        if done:
            path = self.files.sums_state(done)
            if not os.path.exists(path):
                raise UserError(f"{path}, CLD's running sums after epoch {done}, is missing; the checkpoint cannot "
                                "be resumed without it: start over with --overwrite")
            with _as_user_errors():
                self.sums.restore(load_npz(path, "CLD sums", CLDSums.STATE))
            if self.sums.epochs != done:
                raise UserError(f"{path} holds the sums of {self.sums.epochs} epochs, not {done}; start over with "
                                "--overwrite")

    def record(self, epoch: int, rows: dict[str, np.ndarray]) -> None:
        self.sums.update(rows["tr_loss"], rows["val_loss"])

    def flush(self, done: int) -> None:
        save_npz(self.files.sums_state(done), self.sums.state())

    def forget_before(self, done: int) -> None:
        """Once checkpoint ``done`` is in place, the older states are not needed."""
        for k in range(done - 1, 0, -1):
            path = self.files.sums_state(k)
            if not os.path.exists(path):
                break
            os.remove(path)

    def cld_scores(self, done: int, split: dict[str, np.ndarray]) -> np.ndarray:
        """CLD from the sums so far (they already count ``done`` epochs of ``split``)."""
        with _as_user_errors():
            return self.sums.scores()

    def save(self, path: str, record: dict[str, Any], done: int) -> None:
        """The sums file: ``record`` and the sums, which count ``done`` epochs."""
        save_sums(path, record, self.sums.state())


def device_rows(tr: dict[str, Any], val: dict[str, Any], signals: bool) -> dict[str, np.ndarray]:
    """One epoch's rows as host arrays (one device-to-host copy per array)."""
    rows = {"tr_loss": tr["loss"].cpu().numpy(), "val_loss": val["loss"].cpu().numpy()}
    if signals:
        for key in SIGNAL_DTYPES:
            rows[key] = signal_row(key, tr[key[3:]].cpu().numpy())
    return rows

