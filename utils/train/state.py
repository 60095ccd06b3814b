"""What a training run (stage 1 or 3) keeps between epochs, and how it claims its name.

Each stage writes its own epoch loop (:func:`utils.collect.collect_losses.collect_losses`,
:func:`utils.coreset_training.train_on_coreset.train_on_coreset`); this module holds what both loops share:

* :func:`claim_run`: before a run starts, its exclusive lock (:class:`utils.files.locks.RunLock`,
  held for the run's whole life) and the refusal to replace an earlier run's files silently;
* :class:`RunState`: the model's training state, restored by :meth:`RunState.resume`, and after
  every epoch :meth:`RunState.end_epoch` (the CSV row, the divergence check) and
  :meth:`RunState.save`: the run state checkpointed atomically (``*_last.pth``), the best model by
  test accuracy kept (``*_best.pth``, as the paper code chooses it), and the per-epoch CSV log
  rewritten from the rows held in the checkpoint, so log and checkpoint never disagree after a crash.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from utils import progress
from utils.errors import UserError, first_line
from utils.files.atomic import atomic_write, check_output_free, ensure_dir, refuse_link
from utils.files.checkpoint import check_identity, load_run_state, rng_state, save_checkpoint, set_rng_state
from utils.files.locks import RunLock
from utils.paths import RunFiles
from utils.train import distributed
from utils.train.engine import Trainer

# A training loss this many times the first epoch's means the run diverged (before it overflows).
DIVERGENCE_FACTOR = 100.0


class RunClaim:
    """A run's lock, and the folders its claim created (removed again if the run is abandoned
    before it wrote anything)."""

    def __init__(self, lock_path: str, created: list[str]):
        self.lock_path, self.created = lock_path, created
        self.lock: RunLock | None = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def abandon(self) -> None:
        """The run stopped before its first checkpoint: leave no trace of the attempt (releasing the
        lock removes its file)."""
        self.release()
        for folder in self.created:  # deepest first; only what this attempt made, only if still empty
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)


def claim_run(files: RunFiles, folders: list[str], resume_path: str, overwrite: bool,
              log: Callable[[str], None] = progress.say) -> RunClaim:
    """Before a run starts (main process): take its lock and refuse to replace an earlier run's
    files silently; returns the claim.

    A fresh run (no ``resume_path``) is refused when its output, its ``*_last.pth`` (hint: resume
    it; outside torchrun the stages have made that checkpoint the ``resume_path`` already, see
    :func:`continue_interrupted`, so this is the torchrun case) or its CSV log exists (a log without the checkpoint it came from: an earlier run whose
    checkpoint was removed). What a run killed before its first checkpoint leaves (a
    ``*_best.pth``, weight snapshots, trajectory rows) is removed, and so is all of an earlier
    run's state with ``overwrite``. Folders are created only here; a refused run removes the ones
    it created.
    """
    claim = RunClaim(files.lock, _missing_folders(folders))
    try:
        for folder in folders:  # inside: a folder that cannot be made leaves none of the others behind
            ensure_dir(folder)
        for path in (files.lock, files.last, files.best, files.log, files.output, files.trajectories,
                     *files.snapshots().values()):
            refuse_link(path)
        claim.lock = RunLock(files.lock, f"run {files.name}")
        if files.output and os.path.isdir(files.output):
            raise UserError(f"{files.output} is a folder; the run's output cannot be written there")
        if not resume_path:
            if not overwrite:
                if files.output:
                    check_output_free(files.output, overwrite)
                # Reached only under torchrun (elsewhere continue_interrupted made the checkpoint the
                # resume path): say how to continue, and why the same command did not.
                check_output_free(files.last, overwrite,
                                  flag=f"--resume_path {files.last} to continue it (under torchrun the same command "
                                       "does not continue a run by itself), or --overwrite")
                if os.path.exists(files.log):
                    raise UserError(f"log {files.log} of an earlier run exists, but not its checkpoint {files.last}, "
                                    "so that run cannot be resumed; pass --overwrite to start over (replacing the "
                                    "log), or choose another --logpath")
            _remove_stale_state(files, log, started_over=overwrite)
        return claim
    except BaseException:
        claim.abandon()
        raise


def continue_interrupted(files: RunFiles, resume_path: str, overwrite: bool,
                         log: Callable[[str], None] = progress.say) -> str:
    """The checkpoint a run resumes from: ``resume_path`` when given; else, when the run's own
    ``*_last.pth`` exists and ``overwrite`` is not given, that checkpoint (the same command run again
    after an interruption continues it; :meth:`RunState.resume` then checks its recorded recipe
    exactly as for an explicit ``--resume_path``); else '' (a fresh run).

    Asked before the run is claimed, after the stage has handled an existing output (a complete
    run is reported, not continued)."""
    if resume_path or overwrite or not os.path.isfile(files.last):
        return resume_path
    if distributed.launched_by_torchrun():
        # Every process of a torchrun job decides this by itself, before they talk, and on several
        # nodes the others may not see this node's file: one process continuing while another
        # starts afresh would mix two runs. So under torchrun the run is refused as before, and
        # claim_run names the --resume_path to add.
        return resume_path
    log(f"continuing the interrupted run from {files.last} (same recipe; --overwrite starts over)")
    return files.last


@contextlib.contextmanager
def run_claims() -> Iterator[list]:
    """A list for the main process's :class:`RunClaim` (filled by ``prepare``): released when the
    block ends, abandoned when it raises (a failed attempt leaves no new empty folder or lock)."""
    claims: list[RunClaim] = []
    try:
        yield claims
    except BaseException:
        for claim in claims:
            claim.abandon()
        raise
    for claim in claims:
        claim.release()


def _missing_folders(folders: list[str]) -> list[str]:
    """The folders (and their missing parents) that do not exist yet, deepest first."""
    missing = set()
    for folder in folders:
        path = os.path.abspath(folder)
        while not os.path.isdir(path) and os.path.dirname(path) != path:
            missing.add(path)
            path = os.path.dirname(path)
    return sorted(missing, key=len, reverse=True)


def _remove_stale_state(files: RunFiles, log: Callable[[str], None], started_over: bool) -> None:
    """A fresh run starts from nothing of an earlier one: what a run killed before its first
    checkpoint left goes (with a note), and with ``--overwrite`` everything of the earlier run."""
    leftovers = [files.best, files.trajectories, *files.snapshots().values()]
    earlier = [files.last, files.log, files.output] if started_over else []
    stale = [p for p in leftovers + earlier if p and os.path.exists(p)]
    for path in stale:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if stale and not started_over:
        log(f"note: removed {', '.join(stale)}, left by an earlier run that stopped before its first checkpoint")


class RunState:
    """A model's training state between epochs: what is checkpointed and what a resume restores.

    Args:
        raw_model: the unwrapped model (what is saved).
        trainer: holds the optimizer and the gradient scaler (and may wrap the model for DDP).
        scheduler: the LR scheduler of ``trainer.optimizer``.
        files: checkpoint and log paths.
        identity: what a resumed run must match (dataset, model, seed, split, recipe, ...).
        config: every flag, saved for the record.
        is_main: only the main process writes files.
    """

    def __init__(self, raw_model: torch.nn.Module, trainer: Trainer, scheduler, files: RunFiles, identity: dict,
                 config: dict, is_main: bool = True):
        self.raw_model, self.trainer, self.scheduler = raw_model, trainer, scheduler
        self.files, self.identity, self.config, self.is_main = files, identity, config, is_main
        self.epoch = 0  # epochs completed
        self.best_acc = 0.0
        self.rows: list[dict] = []

    @property
    def learning_rate(self) -> float:
        return self.trainer.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------------ state

    def state(self, extra: dict | None = None) -> dict:
        return {
            "kind": "last", "identity": self.identity, "config": self.config, "epoch": self.epoch,
            "model": self.raw_model.state_dict(), "optimizer": self.trainer.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.trainer.scaler.state_dict(),
            "rng": rng_state(), "best_acc": self.best_acc, "log": self.rows, "extra": extra or {},
        }

    def weights(self, kind: str, **more: Any) -> dict:
        """A weights-only checkpoint (``best`` or ``snapshot``) of the model as it is now."""
        return {"kind": kind, "identity": self.identity, "config": self.config, "epoch": self.epoch,
                "model": self.raw_model.state_dict(), **more}

    def resume(self, path: str, epochs: int, overwrite: bool = False, log: Callable[[str], None] = progress.say,
               continued: bool = False) -> dict:
        """Restore everything from a ``*_last.pth`` of a run of ``epochs`` epochs; returns the stage's
        own saved extras.

        ``continued``: the checkpoint was not named by ``--resume_path`` but is the run's own, found
        by :func:`continue_interrupted`; a refusal then also says how to start the run over.

        A checkpoint that holds every epoch of this run (killed after its last epoch, while its
        output was written) resumes to writing that output, unless the output exists (the run is
        complete; ``overwrite`` writes it again). Every process reads the checkpoint (each needs
        the optimizer state too); a failure on any process stops all of them.
        """
        with distributed.fail_together():
            try:
                return self._resume(path, epochs, overwrite, log)
            except UserError as exc:
                if not continued:
                    raise
                raise UserError(f"{exc}; this command continues the interrupted run from {path}: to start it "
                                "over with this recipe instead, pass --overwrite") from None

    def _resume(self, path: str, epochs: int, overwrite: bool, log: Callable[[str], None]) -> dict:
        state = load_run_state(path, epochs)
        saved = state["identity"]
        if "world_size" in self.identity and saved.get("world_size", self.identity["world_size"]) != self.identity["world_size"]:
            # Each process's share of every batch depends on the number of processes, so another
            # number would continue a different run.
            was, now = int(saved["world_size"]), int(self.identity["world_size"])
            raise UserError(f"checkpoint {path} was written by a job of {was} process{'es' if was != 1 else ''} "
                            f"(world size {was}) but this job has {now} (world size {now}); resume it with "
                            f"{was} process{'es' if was != 1 else ''} (torchrun: nodes x nproc_per_node = {was}"
                            f"{'; or without torchrun' if was == 1 else ''}), or start a new run")
        check_identity(saved, self.identity, path)
        done, output = state["epoch"], self.files.output
        exists = self.is_main and bool(output) and os.path.exists(output)
        if done == epochs and exists and not overwrite:
            raise UserError(f"checkpoint {path} holds all {done} epochs and {output} exists: the run is "
                            "complete; raise --epochs to continue training, or pass --overwrite to write "
                            "its output again")
        if exists:
            log(f"note: {output} is replaced when this run finishes")
        try:
            self.raw_model.load_state_dict(state["model"])
            self.trainer.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.trainer.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise UserError(f"checkpoint {path} does not fit this run ({first_line(exc)}); the file "
                            "is corrupt or of another model") from None
        self.epoch, self.best_acc, self.rows = done, float(state["best_acc"]), list(state["log"])
        if self.is_main:  # a kill between checkpoint and log leaves the log an epoch behind
            write_csv(self.files.log, self.rows)
        return state["extra"]

    # ------------------------------------------------------------------ after each epoch

    def end_epoch(self, row: dict) -> bool:
        """Take one finished epoch's CSV row (its ``test_acc`` among the columns); returns whether the
        test accuracy improved on the best so far. A diverged epoch raises instead, before anything
        of it is checkpointed: the last good checkpoint is kept."""
        self._check_divergence(row)
        self.rows.append(row)
        self.epoch = int(row["epoch"])
        improved = row["test_acc"] > self.best_acc
        self.best_acc = max(self.best_acc, row["test_acc"])
        return improved

    def _check_divergence(self, row: dict) -> None:
        kept = f"the last good checkpoint is {self.files.last}" if self.epoch else "no checkpoint was written"
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise UserError(f"{', '.join(bad)} became {row[bad[0]]} in epoch {row['epoch']}; training diverged "
                            f"({kept}); lower --learning_rate (or use --precision fp32)")
        first = self.rows[0]["train_loss"] if self.rows else None
        if first is not None and row["train_loss"] > DIVERGENCE_FACTOR * first:
            raise UserError(f"the training loss of epoch {row['epoch']} ({row['train_loss']:.4g}) is over "
                            f"{DIVERGENCE_FACTOR:g} times that of epoch 1 ({first:.4g}): training diverged "
                            f"({kept}); lower --learning_rate")

    def save(self, improved: bool, extra: dict | None = None) -> None:
        """The main process's files after an epoch: best model, run state, CSV log."""
        if improved:
            save_checkpoint(self.files.best, self.weights("best", acc=self.rows[-1]["test_acc"], best_acc=self.best_acc))
        save_checkpoint(self.files.last, self.state(extra))
        write_csv(self.files.log, self.rows)


def recipe_differences(recorded: Any, flags: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """``--name V (this command: W)`` for every flag of ``names`` whose value in ``recorded`` (the
    config a finished run saved) differs from ``flags``; a config that is not a dict differs in all."""
    if not isinstance(recorded, dict):
        return ["the recorded configuration is missing"]
    def text(value: Any) -> str:
        return json.dumps(list(value) if isinstance(value, tuple) else value, sort_keys=True, default=str)
    return [f"--{n} {text(recorded.get(n))} (this command: {text(flags[n])})" for n in names
            if text(recorded.get(n)) != text(flags[n])]


def only_more_epochs(differences: list[str]) -> bool:
    """Whether :func:`recipe_differences` found ``--epochs`` alone: a resume that trains on, whose
    output is replaced at the end."""
    return bool(differences) and all(d.startswith("--epochs ") for d in differences)


def schedule_note(recipe) -> str:
    """A note when learning-rate milestones lie past the run's last epoch (they then never apply);
    '' otherwise."""
    late = [m for m in recipe.schedule if m >= recipe.epochs]
    if not late:
        return ""
    return (f"note: --schedule milestone{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} lie{'s' if len(late) == 1 else ''} "
            f"at or past the run's {recipe.epochs} epochs, so {'they' if len(late) > 1 else 'it'} never appl"
            f"{'y' if len(late) > 1 else 'ies'}")


def epoch_line(row: dict, epochs: int, eta: progress.Eta) -> str:
    """The one-line summary of an epoch's CSV row, as a log file shows it."""
    collect = f", {row['seconds_collect']:.1f}s collect" if "seconds_collect" in row else ""
    return (f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.2f}%  test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}%  "
            f"({row['seconds_train']:.1f}s train, {row['seconds_test']:.1f}s test{collect}; {eta.text()})")


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    """Rewrite the whole per-epoch log atomically (it is small; a crash never leaves half a row)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["epoch"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))
