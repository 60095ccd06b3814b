"""Stage 1: train a model and record every training and validation example's loss after every epoch.

Implements the trajectory collection of *Coresets from Trajectories: Selecting Data via
Correlation of Loss Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025): each epoch trains with
augmentation, evaluates the test set, then records in eval mode, without augmentation and in fp32
(``--collect_precision``), the loss of every training-split and validation-split example, plus
correctness, logit margin and EL2N from the same logits for the baselines. Rows go to disk as they
are made (:mod:`utils.collect.row_store`); the loss file is written once the run is complete. Weight
snapshots after chosen epochs serve the model-based methods of stage 2.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from utils import paths, progress
from utils.collect.options import CollectOptions
from utils.collect.row_store import FullTrajectories, SumsTrajectories, device_rows
from utils.data.datasets import dataset_info
from utils.data.splits import stratified_split
from utils.errors import UserError
from utils.files.atomic import refuse_link
from utils.files.checkpoint import save_checkpoint
from utils.files.losses import load_losses, load_split, load_sums, save_split
from utils.core.stability import StopRule, budget_words, check_budgets_below_classes
from utils.train import distributed
from utils.train.options import Recipe, SessionOptions, recipe_identity
from utils.train.session import Session, evaluate_checkpoint, open_session, where
from utils.train.state import (RunState, claim_run, continue_interrupted, epoch_line, only_more_epochs,
                               recipe_differences, run_claims, schedule_note)


def collect_losses(s: CollectOptions) -> str:
    """Run stage 1; returns the loss (or sums) file."""
    info = dataset_info(s.dataset)
    recipe = Recipe.from_options(s)
    options = SessionOptions.from_options(s)
    if s.evaluate_only:
        evaluate_checkpoint(options, recipe, s.resume_path, dataset=info.name, model_arch=s.model_arch)
        return ""
    ratio = info.val_split_ratio if s.val_split_ratio is None else s.val_split_ratio
    sums = s.trajectories == "sums"
    output = (paths.sums_path if sums else paths.loss_path)(s.scores_dir, info.name, s.model_arch, s.manual_seed)
    files = paths.RunFiles(s.checkpoint_path, s.logpath, paths.run_name(info.name, s.model_arch, s.manual_seed),
                           output)
    refuse_link(output)  # before it is read as this run's output
    if not s.overwrite and os.path.isfile(output) and not distributed.launched_by_torchrun():
        done = _already_complete(s, output, ratio)
        if done:
            return done
    # The same command run again after an interruption continues the run from its *_last.pth (its
    # recipe checked as for an explicit --resume_path); not under torchrun (see continue_interrupted).
    resume_path = continue_interrupted(files, s.resume_path, s.overwrite)
    continued = resume_path != s.resume_path
    s = replace(s, resume_path=resume_path)
    with run_claims() as claims:  # the main process holds the run's lock for the run's whole life
        def prepare() -> None:
            folders = [s.checkpoint_path, s.logpath, s.scores_dir, s.splits_dir]
            claims.append(claim_run(files, folders, s.resume_path, s.overwrite))

        session = open_session(options, recipe, dataset=info.name, model_arch=s.model_arch, prepare=prepare)
        return _run(s, session, files, recipe, ratio, sums, continued)


@dataclass
class _Run:
    """What the epoch loop of stage 1 works with, set up by :func:`_prepare`."""
    state: RunState
    store: FullTrajectories | SumsTrajectories
    split: dict[str, np.ndarray]  # tr_lbl, val_lbl, train_indices, val_indices
    config: dict
    rule: StopRule | None
    snapshots: list[int]
    stopped: dict | None = None  # --stop_when_stable's decision, when a resumed run had made it already


def _run(s: CollectOptions, session: Session, files: paths.RunFiles, recipe: Recipe, ratio: float, sums: bool,
         continued: bool = False) -> str:
    """The run itself: split and resume, then the epoch loop, then the loss file."""
    say = progress.say if session.dist.is_main else (lambda *a, **k: None)
    r = _prepare(s, session, files, recipe, ratio, sums, say, continued)
    stopped = _epochs(s, session, r, recipe.epochs, sums, say)
    with distributed.fail_together():  # every process returns once the output exists
        if session.dist.is_main:
            record = {"dataset": session.data.info.name, "model_arch": s.model_arch, "manual_seed": s.manual_seed,
                      "num_classes": session.data.num_classes, "config": r.config,
                      "collect_precision": session.collect_precision, "data_path": os.path.abspath(s.data_path),
                      "checkpoints": {"last": os.path.abspath(files.last),
                                      "snapshots": {e: os.path.abspath(p) for e, p in files.snapshots().items()}},
                      "epoch": np.arange(r.state.epoch, dtype=np.int64), **r.split}
            if stopped is not None:
                record["stopped"] = stopped
            r.store.save(files.output, record, r.state.epoch)
    say(f"best test accuracy {r.state.best_acc:.2f}%; {'CLD sums' if sums else 'losses'} of {r.state.epoch} epochs "
        f"saved to {files.output}")
    say(f"next: python compute_cld_scores.py --loss_path {files.output}")
    distributed.teardown()
    return files.output


def _epochs(s: CollectOptions, session: Session, r: _Run, epochs: int, sums: bool, say) -> dict | None:
    """Stage 1's epoch loop: train, test, then every example's loss (eval mode, no augmentation, the
    collection precision), the epoch's rows, its checkpoint; returns the ``stopped`` record of
    ``--stop_when_stable`` (None when the run trained every epoch)."""
    run, store, split, rule, is_main = r.state, r.store, r.split, r.rule, session.dist.is_main
    if r.stopped is not None:  # the run stopped before it was interrupted: it ends where it ended then
        say(f"stopped after epoch {r.stopped['epoch']} of {epochs}: {r.stopped['reason']} (--stop_when_stable, "
            "decided before the interruption)")
        return r.stopped
    eta = progress.Eta(epochs, run.epoch)
    for epoch in range(run.epoch, epochs):
        row = session.train_and_test(split["train_indices"], s.manual_seed, epoch)
        t2 = time.perf_counter()
        tr = session.collect(split["train_indices"], signals=not sums, desc=f"epoch {epoch + 1} collect train")
        val = session.collect(split["val_indices"], desc=f"epoch {epoch + 1} collect val")
        if is_main:  # only the main process writes rows; the others need the mean (the divergence check)
            rows = device_rows(tr, val, signals=not sums)
            store.record(epoch, rows)
            val_loss = rows["val_loss"]
        else:
            val_loss = val["loss"].cpu().numpy()
        timing = {key: row.pop(key) for key in ("seconds_train", "seconds_test")}
        row.update(val_loss_mean=float(val_loss.mean(dtype=np.float64)), **timing,
                   seconds_collect=time.perf_counter() - t2)
        improved = run.end_epoch(row)
        stop = rule is not None and rule.due(run.epoch) and _settled(rule, store, split, run.epoch, is_main, say)
        stopped = _stopped(s, rule, run.epoch) if stop else None
        # The checkpoint counts the epoch's rows and snapshot, so they are on disk before it; it
        # also holds the stop decision, so that a run killed after it ends where it would have.
        with distributed.fail_together():  # a failed write (disk full) stops every process
            if is_main:
                store.flush(run.epoch)
                if run.epoch in r.snapshots:
                    save_checkpoint(run.files.snapshot(run.epoch), run.weights("snapshot"))
                extra = None if rule is None else {"stability": rule.state(), **({"stopped": stopped} if stop else {})}
                run.save(improved, extra)
                store.forget_before(run.epoch)
        eta.step()
        say(epoch_line(run.rows[-1], epochs, eta))
        if stopped is not None:
            say(f"stopped after epoch {run.epoch} of {epochs}: {stopped['reason']} (--stop_when_stable)")
            return stopped
    if rule is not None:
        say(f"note: --stop_when_stable {s.stop_when_stable:g} was never met (last mean Jaccard "
            f"{'none' if rule.last is None else f'{rule.last:.4f}'}); the run trained all {epochs} epochs")
    return None


def _stopped(s: CollectOptions, rule: StopRule, epoch: int) -> dict:
    """The record of an early stop (in the checkpoint that counts its epoch, and in the loss file)."""
    return {"epoch": epoch, "threshold": s.stop_when_stable, "every": s.stability_every,
            "reason": f"CLD's coreset (top {budget_words(s.stability_k)}) overlapped the one "
                      f"{s.stability_every} epochs earlier with a mean Jaccard of at least "
                      f"{s.stop_when_stable:g} at two checks in a row (last {rule.last:.4f})"}


def _prepare(s: CollectOptions, session: Session, files: paths.RunFiles, recipe: Recipe, ratio: float, sums: bool,
             say, continued: bool = False) -> _Run:
    """The split, the run's state (resumed if asked, or ``continued`` from the run's own checkpoint),
    its row store and stop rule, and what the run says before its first epoch."""
    info, is_main = session.data.info, session.dist.is_main
    labels = session.data.train_labels
    train_idx, val_idx = stratified_split(labels, ratio, s.manual_seed, session.data.num_classes)
    if session.excluded_train.size:  # --skip_bad_images: the split as drawn, less the unreadable files
        train_idx = train_idx[~np.isin(train_idx, session.excluded_train)]
        val_idx = val_idx[~np.isin(val_idx, session.excluded_train)]
    identity = {"stage": "losses", "dataset": info.name, "model_arch": s.model_arch, "manual_seed": s.manual_seed,
                "val_split_ratio": ratio, "num_train": int(len(train_idx)), "num_val": int(len(val_idx)),
                "world_size": session.dist.world, "trajectories": s.trajectories,
                "collect_precision": session.collect_precision, **recipe_identity(recipe, session.precision, s.cpu_kernels),
                "stop_when_stable": s.stop_when_stable, "stability_every": s.stability_every,
                "stability_k": s.stability_k}
    config = {**asdict(s), "val_split_ratio": ratio, "machine": session.machine}
    rule = None
    if s.stop_when_stable is not None:
        check_budgets_below_classes([s.stability_k], labels[train_idx], "--stability_k")
        rule = StopRule(s.stop_when_stable, s.stability_every, s.stability_k)
    run = RunState(session.model, session.trainer, session.scheduler, files, identity, config, is_main)
    split = {"tr_lbl": labels[train_idx], "val_lbl": labels[val_idx], "train_indices": train_idx,
             "val_indices": val_idx}
    store = (SumsTrajectories(files, split["tr_lbl"], split["val_lbl"], session.data.num_classes) if sums
             else FullTrajectories(files, recipe.epochs, len(train_idx), len(val_idx)))
    stopped = None
    if s.resume_path:  # before the split file is written: a refused resume writes nothing
        extra = run.resume(s.resume_path, recipe.epochs, s.overwrite, log=say, continued=continued)
        if rule is not None and "stability" in extra:  # the same test goes on
            rule.restore(extra["stability"], s.resume_path)
        stopped = extra.get("stopped")
        if stopped is not None and not (isinstance(stopped, dict) and stopped.get("epoch") == run.epoch
                                        and isinstance(stopped.get("reason"), str)):
            raise UserError(f"checkpoint {s.resume_path}: its --stop_when_stable decision is corrupt; start over with "
                            "--overwrite")
        say(f"resumed {s.resume_path} after epoch {run.epoch}")
    with distributed.fail_together():
        if is_main:
            store.open(run.epoch)
            _write_split(paths.split_path(s.splits_dir, info.name, s.model_arch, s.manual_seed), train_idx, val_idx,
                         info.name, s.model_arch, s.manual_seed, ratio, s.overwrite)
    snapshots = sorted(e for e in s.snapshot_epochs if e <= recipe.epochs)
    _say_plan(s, session, recipe, snapshots, len(train_idx), len(val_idx), say)
    return _Run(run, store, split, config, rule, snapshots, stopped)


def _say_plan(s: CollectOptions, session: Session, recipe: Recipe, snapshots: list[int], n_train: int, n_val: int,
              say) -> None:
    """The run's sizes, model, device and precisions, and the notes on its snapshots and schedule."""
    skipped = sorted(set(s.snapshot_epochs) - set(snapshots))
    if skipped:
        then = ("its final weights" if not snapshots else f"the snapshot after epoch {snapshots[0]}"
                if len(snapshots) == 1 else "the 40-epoch snapshot, or the one --snapshot_epoch names")
        say(f"note: no weight snapshot after epoch {', '.join(map(str, skipped))}: the run has {recipe.epochs} epochs "
            f"(stage 2's model-based methods then use {then})")
    say(f"{session.data.info.name}: {n_train} training / {n_val} validation / {len(session.test_source)} test "
        f"examples; {s.model_arch} ({session.parameters / 1e6:.2f}M parameters) on {where(session)}, training in "
        f"{session.precision}, losses recorded in {session.collect_precision}")
    if schedule_note(recipe):
        say(schedule_note(recipe))


def _settled(rule: StopRule, store: FullTrajectories | SumsTrajectories, split: dict[str, np.ndarray], done: int,
             is_main: bool, say) -> bool:
    """Whether ``--stop_when_stable`` stops the run after epoch ``done``: the main process computes
    CLD from what it recorded so far; every process gets its verdict."""
    stop = False
    if is_main:
        stop = rule.check(store.cld_scores(done, split), split["tr_lbl"], split["train_indices"])
        if rule.last is not None:
            say(f"stability after epoch {done}: CLD's coreset (top {budget_words(rule.budget)}) overlaps that of epoch "
                f"{done - rule.every} with a mean Jaccard of {rule.last:.4f} ({min(rule.streak, 2)} of 2 checks in a row at or "
                f"above {rule.threshold:g})")
    return distributed.agree(stop)


# What a rerun must repeat of a finished run to be the same run (and then merely reported).
SAME_RUN = ("dataset", "model_arch", "manual_seed", "epochs", "batch_size", "learning_rate", "momentum", "weight_decay",
            "disable_nesterov", "schedule", "gamma", "augment", "val_split_ratio", "precision", "collect_precision",
            "trajectories", "snapshot_epochs", "stop_when_stable", "stability_every", "stability_k", "cpu_kernels")


def _already_complete(s: CollectOptions, output: str, ratio: float) -> str:
    """The output of this very run exists: say so and print the next command; returns the output
    ('' for a resume to more epochs, which goes on). Under torchrun, where other nodes may not see
    the file, this is not asked: the run is refused as before."""
    recorded = (load_sums if output.endswith(".npz") else load_losses)(output).get("config")
    flags = {**asdict(s), "dataset": dataset_info(s.dataset).name, "val_split_ratio": ratio}
    if isinstance(recorded, dict) and isinstance(recorded.get("dataset"), str):
        recorded = {**recorded, "dataset": dataset_info(recorded["dataset"]).name}
    differ = recipe_differences(recorded, flags, SAME_RUN)
    if s.resume_path and only_more_epochs(differ):
        return ""  # a resume that trains on, to more epochs: its output is replaced at the end
    if differ:
        raise UserError(f"{output} already exists, from a run with another recipe ({'; '.join(differ)}); pass "
                        "--overwrite to replace it, or choose another --scores_dir")
    progress.say(f"already complete: {output} (the same run; --overwrite to run it again)")
    progress.say(f"next: python compute_cld_scores.py --loss_path {output}")
    return output


def _write_split(path: str, train_idx: np.ndarray, val_idx: np.ndarray, dataset: str, model_arch: str,
                 seed: int, ratio: float, replace: bool) -> None:
    """Write the split file; an existing one must hold the same split unless replacing is allowed."""
    if os.path.exists(path) and not replace:
        old = load_split(path)
        if not (np.array_equal(old["train_indices"], train_idx) and np.array_equal(old["val_indices"], val_idx)):
            raise UserError(f"{path} holds a different split; pass --overwrite to replace it")
        return
    save_split(path, {"dataset": dataset, "model_arch": model_arch, "manual_seed": int(seed),
                      "val_split_ratio": ratio, "train_indices": train_idx, "val_indices": val_idx})
