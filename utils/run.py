"""The epoch loop shared by stage 1 (loss collection) and stage 3 (coreset training).

Each epoch, in the paper code's order: train one epoch with augmentation, evaluate the test set,
step the LR scheduler, then run the stage's own per-epoch work (stage 1 records per-example
losses). After every epoch the run state is checkpointed atomically (``*_last.pth``), the best
model by test accuracy is kept (``*_best.pth``, as the paper code chooses it), and the per-epoch
CSV log is rewritten from the rows held in the checkpoint, so log and checkpoint never disagree
after a crash.
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from utils import distributed
from utils.checkpoint import check_identity, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from utils.cli import UserError
from utils.formats import atomic_write, check_output_free
from utils.training import Recipe, Trainer


@dataclass(frozen=True)
class RunFiles:
    """Where one run keeps its checkpoints and log, and the file it produces when it finishes."""
    last: str
    best: str
    log: str
    output: str = ""  # stage 1: the loss file; stage 3: the run's results JSON

    @classmethod
    def named(cls, checkpoint_path: str, logpath: str, name: str, output: str) -> "RunFiles":
        """``{name}_last.pth`` / ``{name}_best.pth`` and ``{name}.csv``, as both stages name them."""
        return cls(last=os.path.join(checkpoint_path, f"{name}_last.pth"),
                   best=os.path.join(checkpoint_path, f"{name}_best.pth"),
                   log=os.path.join(logpath, f"{name}.csv"), output=output)


def claim_files(files: RunFiles, resume_path: str, overwrite: bool) -> list[str]:
    """Before a run starts (main process): refuse to replace an earlier run's files silently.

    A fresh run (no ``resume_path``) is refused when its output, its ``*_last.pth`` (hint: resume
    it) or its CSV log exists (a log without the checkpoint it came from: an earlier run whose
    checkpoint was removed); a ``*_best.pth`` alone is what a run killed during its first
    checkpoint leaves, and is removed. ``overwrite`` starts over whatever exists. A resumed run's
    files are checked against its checkpoint in :meth:`TrainingRun.resume`. Returns the notes to print.
    """
    if overwrite or resume_path:
        return []
    if files.output:
        check_output_free(files.output, overwrite)
    check_output_free(files.last, overwrite, flag=f"--resume_path {files.last} to continue it, or --overwrite")
    if os.path.exists(files.log):
        raise UserError(f"log {files.log} of an earlier run exists, but not its checkpoint {files.last}, so that "
                        "run cannot be resumed; pass --overwrite to start over (replacing the log), or choose "
                        "another --logpath")
    if os.path.exists(files.best):
        os.remove(files.best)
        return [f"note: removed {files.best}, left by an earlier run that stopped before its first checkpoint"]
    return []


class TrainingRun:
    """Owns a model's training state and runs epochs of it.

    Args:
        raw_model: the unwrapped model (what is saved).
        trainer: runs training epochs and evaluation passes (may hold a DDP/compiled wrapper).
        scheduler: the LR scheduler of ``trainer.optimizer``.
        recipe: epochs and batch sizes.
        files: checkpoint and log paths.
        identity: what a resumed run must match (dataset, model, seed, split, ...).
        config: every flag, saved for the record.
        is_main: only the main process writes files and prints.
    """

    def __init__(self, raw_model: torch.nn.Module, trainer: Trainer, scheduler, recipe: Recipe,
                 files: RunFiles, identity: dict, config: dict, is_main: bool = True):
        self.raw_model, self.trainer, self.scheduler = raw_model, trainer, scheduler
        self.recipe, self.files, self.identity, self.config = recipe, files, identity, config
        self.is_main = is_main
        self.epoch = 0  # epochs completed
        self.best_acc = 0.0
        self.rows: list[dict] = []

    # ------------------------------------------------------------------ state

    def state(self, extra: dict | None = None) -> dict:
        return {
            "identity": self.identity, "config": self.config, "epoch": self.epoch,
            "model": self.raw_model.state_dict(), "optimizer": self.trainer.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.trainer.scaler.state_dict(),
            "rng": rng_state(), "best_acc": self.best_acc, "log": self.rows, "extra": extra or {},
        }

    def resume(self, path: str, overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
        """Restore everything from a ``*_last.pth``; returns the stage's own saved extras.

        A checkpoint that holds every epoch of this run (killed after its last epoch, while its
        output was written) resumes to writing that output, unless the output exists (the run is
        complete; ``overwrite`` writes it again). Every process reads the checkpoint (each needs
        the optimizer state too); a failure on any process stops all of them.
        """
        with distributed.fail_together():
            return self._resume(path, overwrite, log)

    def _resume(self, path: str, overwrite: bool, log: Callable[[str], None]) -> dict:
        state = load_checkpoint(path, "checkpoint to resume")
        saved = state.get("identity", {})
        if "world_size" in self.identity and saved.get("world_size", self.identity["world_size"]) != self.identity["world_size"]:
            # Each process's share of every batch depends on the number of processes, so another
            # number would continue a different run.
            was, now = int(saved["world_size"]), int(self.identity["world_size"])
            raise UserError(f"checkpoint {path} was written by a job of {was} process{'es' if was != 1 else ''} "
                            f"(world size {was}) but this job has {now} (world size {now}); resume it with "
                            f"{was} process{'es' if was != 1 else ''} (torchrun: nodes x nproc_per_node = {was}"
                            f"{'; or without torchrun' if was == 1 else ''}), or start a new run")
        check_identity(saved, self.identity, path)
        done, output = int(state["epoch"]), self.files.output
        if done > self.recipe.epochs:
            raise UserError(f"checkpoint {path} already holds {done} epochs (this run asks for "
                            f"{self.recipe.epochs}); raise --epochs to continue training")
        exists = self.is_main and bool(output) and os.path.exists(output)
        if done == self.recipe.epochs and exists and not overwrite:
            raise UserError(f"checkpoint {path} holds all {done} epochs and {output} exists: the run is "
                            "complete; raise --epochs to continue training, or pass --overwrite to write "
                            "its output again")
        if exists:
            log(f"note: {output} is replaced when this run finishes")
        self.raw_model.load_state_dict(state["model"])
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.trainer.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch, self.best_acc, self.rows = int(state["epoch"]), float(state["best_acc"]), list(state["log"])
        if self.is_main:  # a kill between checkpoint and log leaves the log an epoch behind
            write_csv(self.files.log, self.rows)
        return state.get("extra", {})

    # ------------------------------------------------------------------ loop

    def fit(self, train_batches: Callable[[int], Iterator], test_eval: Callable[[], tuple[float, float]],
            after_epoch: Callable[[int], dict] | None = None,
            extra_state: Callable[[], dict] | None = None, log: Callable[[str], None] = print) -> None:
        """Run the remaining epochs.

        Args:
            train_batches: epoch -> batches of that epoch.
            test_eval: () -> (test loss, test accuracy %).
            after_epoch: epoch -> extra CSV columns (stage 1 records losses here).
            extra_state: () -> what the stage adds to the checkpoint (stage 1: trajectories).
            log: prints the one-line epoch summary.
        """
        for epoch in range(self.epoch, self.recipe.epochs):
            lr = self.trainer.optimizer.param_groups[0]["lr"]
            t0 = time.perf_counter()
            train_loss, train_acc = self.trainer.train_epoch(train_batches(epoch))
            t1 = time.perf_counter()
            test_loss, test_acc = test_eval()
            t2 = time.perf_counter()
            self.scheduler.step()
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                   "test_loss": test_loss, "test_acc": test_acc}
            if after_epoch is not None:
                row.update(after_epoch(epoch))
            t3 = time.perf_counter()
            bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                kept = f"the last good checkpoint is {self.files.last}" if self.epoch else "no checkpoint was written"
                raise UserError(f"{', '.join(bad)} became {row[bad[0]]} in epoch {epoch + 1}; training "
                                f"diverged ({kept}); lower --learning_rate or use --precision fp32")
            row.update(seconds_train=t1 - t0, seconds_test=t2 - t1, seconds_collect=t3 - t2)
            self.rows.append(row)
            self.epoch = epoch + 1
            improved = test_acc > self.best_acc
            self.best_acc = max(self.best_acc, test_acc)
            with distributed.fail_together():  # a failed write (disk full) stops every process
                if self.is_main:
                    self._write_epoch(improved, test_acc, extra_state)
            if self.is_main:
                log(f"epoch {epoch + 1}/{self.recipe.epochs}  lr {lr:.4g}  train loss {train_loss:.4f} "
                    f"acc {train_acc:.2f}%  test loss {test_loss:.4f} acc {test_acc:.2f}%  "
                    f"({t1 - t0:.1f}s train, {t2 - t1:.1f}s test, {t3 - t2:.1f}s collect)")

    def _write_epoch(self, improved: bool, test_acc: float, extra_state: Callable[[], dict] | None) -> None:
        """The main process's files after an epoch: best model, run state, CSV log."""
        if improved:
            save_checkpoint(self.files.best, {"identity": self.identity, "config": self.config,
                                              "epoch": self.epoch, "model": self.raw_model.state_dict(),
                                              "acc": test_acc, "best_acc": self.best_acc})
        save_checkpoint(self.files.last, self.state(extra_state() if extra_state else None))
        write_csv(self.files.log, self.rows)


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    """Rewrite the whole per-epoch log atomically (it is small; a crash never leaves half a row)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["epoch"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))
