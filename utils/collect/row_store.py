"""Stage 1's per-epoch records, written once each, beside the run's checkpoints.

Every epoch adds one row per array (losses of the training and validation splits, and the
baselines' signals), and a row is written once: into memory-mapped ``.npy`` files of shape
(epochs, N) in ``{checkpoint_path}/{run}_trajectories/``, flushed to disk before the checkpoint
that counts it is renamed into place. The run-state checkpoint holds only the number of rows that
are valid (its epoch), so its size -- and the bytes a run writes per epoch -- does not grow with
the epoch. A run killed between a row and its checkpoint rewrites that row on resume.

With ``--trajectories sums`` only CLD's running sums are kept (:class:`utils.core.cld.CLDSums`): the
state after epoch k is written to ``cld_sums_epoch{k}.npz`` before checkpoint k, and the older
state is removed once checkpoint k is in place, so a resume always finds the state its checkpoint
counts.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from utils.errors import UserError
from utils.files.atomic import ensure_dir, write_error
from utils.files.losses import save_losses, save_sums
from utils.files.npz import load_npz, save_npz
from utils.paths import RunFiles
from utils.core.cld import CLDSums, cld

# Per-example signals kept beside the losses for the baselines; float16 halves their size and
# is ample for averages over epochs.
SIGNAL_DTYPES = {"tr_correct": np.bool_, "tr_margin": np.float16, "tr_el2n": np.float16}


class FullTrajectories:
    """Rows of every recorded array, one ``.npy`` memory map per array.

    Args:
        files: the run's files (the folder of the maps).
        epochs: rows the run will record.
        n_train, n_val: columns of the training and validation arrays.
    """

    def __init__(self, files: RunFiles, epochs: int, n_train: int, n_val: int):
        self.files, self.epochs = files, epochs
        self.layout = {"tr_loss": (np.float32, n_train), "val_loss": (np.float32, n_val),
                       **{key: (dtype, n_train) for key, dtype in SIGNAL_DTYPES.items()}}
        self.maps: dict[str, np.memmap] = {}

    def open(self, done: int) -> None:
        """Create the maps (``done == 0``), or reopen those of a resumed run that counts ``done``
        rows, growing them when the run now asks for more epochs."""
        if done == 0:
            ensure_dir(self.files.trajectories)
            for key, (dtype, n) in self.layout.items():
                self.maps[key] = _reserved(np.lib.format.open_memmap(self.files.trajectory(key), "w+", dtype,
                                                                     (self.epochs, n)))
            return
        for key, (dtype, n) in self.layout.items():
            path = self.files.trajectory(key)
            try:
                mm = np.load(path, mmap_mode="r+", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise UserError(f"the recorded rows {path} of this run are missing or damaged ({exc}); the "
                                "checkpoint cannot be resumed without them: start over with --overwrite") from None
            if mm.dtype != dtype or mm.ndim != 2 or mm.shape[1] != n or mm.shape[0] < done:
                raise UserError(f"{path} holds {mm.shape} {mm.dtype} rows, not the {done} x {n} {np.dtype(dtype)} "
                                "rows of this run; start over with --overwrite")
            self.maps[key] = _reserved(mm) if mm.shape[0] >= self.epochs else self._grown(path, mm, done)

    def _grown(self, path: str, mm: np.memmap, done: int) -> np.memmap:
        """A copy of the first ``done`` rows in a map of ``self.epochs`` rows, swapped in atomically."""
        tmp = path + ".grow.npy"
        bigger = _reserved(np.lib.format.open_memmap(tmp, "w+", mm.dtype, (self.epochs, mm.shape[1])))
        bigger[:done] = mm[:done]
        bigger.flush()
        del mm
        os.replace(tmp, path)
        return bigger

    def record(self, epoch: int, rows: dict[str, np.ndarray]) -> None:
        for key, row in rows.items():
            self.maps[key][epoch] = row

    def flush(self, done: int) -> None:
        """Make every row up to ``done`` durable (before the checkpoint that counts them)."""
        for mm in self.maps.values():
            mm.flush()

    def arrays(self, done: int) -> dict[str, np.ndarray]:
        """The first ``done`` rows of every array (views of the maps; pickled without a copy)."""
        return {key: mm[:done].view(np.ndarray) for key, mm in self.maps.items()}

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


def _reserved(mm: np.memmap) -> np.memmap:
    """``mm`` with its whole file allocated on disk now. A memory map is a sparse file until rows are
    written into it; were the disk filled meanwhile (by another process), writing a row would fault
    the process (SIGBUS) instead of failing a write: here it is one error, before the epoch runs."""
    path = mm.filename
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    return mm


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
        return self.sums.scores()

    def save(self, path: str, record: dict[str, Any], done: int) -> None:
        """The sums file: ``record`` and the sums, which count ``done`` epochs."""
        save_sums(path, record, self.sums.state())


def device_rows(tr: dict[str, Any], val: dict[str, Any], signals: bool) -> dict[str, np.ndarray]:
    """One epoch's rows as host arrays (one device-to-host copy per array)."""
    rows = {"tr_loss": tr["loss"].cpu().numpy(), "val_loss": val["loss"].cpu().numpy()}
    if signals:
        for key, dtype in SIGNAL_DTYPES.items():
            values = tr[key[3:]].cpu().numpy()
            if dtype == np.float16:  # a diverging run's margins can leave float16's range
                values = np.clip(values, -np.finfo(np.float16).max, np.finfo(np.float16).max)
            rows[key] = values.astype(dtype)
    return rows

