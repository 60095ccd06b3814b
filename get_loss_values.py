"""Stage 1: train a model and record every training and validation example's loss after every epoch.

Implements the trajectory collection of *Coresets from Trajectories: Selecting Data via
Correlation of Loss Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025). Run it, then the command it
prints (stage 2, ``compute_cld_scores.py``).
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import numpy as np
import torch

from utils import distributed, paths
from utils.cli import UserError, run_cli
from utils.data import dataset_info
from utils.formats import ensure_dir, load_split, save_losses, save_split
from utils.run import RunFiles, TrainingRun, claim_files
from utils.setup import evaluate_checkpoint, open_session
from utils.splits import stratified_split
from utils.training import Recipe

# Per-example signals kept beside the losses for the baselines; float16 halves their size and
# is ample for averages over epochs.
_SIGNAL_DTYPES = {"tr_correct": np.bool_, "tr_margin": np.float16, "tr_el2n": np.float16}


def main(
        data_path: str = './Data',
        dataset: str = 'CIFAR100',
        model_arch: str = 'resnet18',
        workers: int = 4,
        epochs: int = 164,
        start_epoch: int = 0,
        batch_size: int = 128,
        test_batch_size: int = 256,
        val_split_ratio: float | None = None,
        learning_rate: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        disable_nesterov: bool = False,
        schedule: Sequence[int] = (81, 121),
        gamma: float = 0.1,
        checkpoint_path: str = './Data/Checkpoint',
        logpath: str = './Logs',
        resume_path: str = '',
        manual_seed: int = 1234,
        evaluate_only: bool = False,
        device: str = 'auto',
        precision: str = 'auto',
        compile: bool | str = False,
        scores_dir: str = './Scores',
        splits_dir: str = './Splits',
        download: bool = True,
        overwrite: bool = False,
) -> str:
    """Train on the training split and record per-example losses after every epoch.

    Args:
        data_path: folder holding ``cifar/`` (torchvision layout) or ``imagenet/{train,val}``.
        dataset: CIFAR10, CIFAR100, ImageNet (any ImageFolder) or digits (embedded, no download).
        model_arch: a name of the model registry (``models.MODELS``; torchvision names for ImageNet).
        workers: DataLoader worker processes (ImageFolder datasets only).
        epochs: epochs to train (and record).
        start_epoch: kept for compatibility with the paper's flags; a resumed run continues from
            the epoch stored in its checkpoint.
        batch_size: training batch size.
        test_batch_size: batch size of every evaluation pass.
        val_split_ratio: share of each class held out for validation (default 0.1; ImageNet 0.01).
        learning_rate: initial SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        disable_nesterov: use plain momentum instead of Nesterov.
        schedule: epochs at which the learning rate is multiplied by ``gamma``.
        gamma: LR decay factor.
        checkpoint_path: folder of ``*_last.pth`` (every epoch) and ``*_best.pth`` (best test acc).
        logpath: folder of the per-epoch CSV log.
        resume_path: a ``*_last.pth`` to continue from (or, with evaluate_only, any checkpoint).
        manual_seed: seed of the split, the initialisation and every epoch's batches.
        evaluate_only: evaluate the checkpoint ``resume_path`` on the test set and exit.
        device: auto, cuda or cpu.
        precision: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32 (the paper's numerics).
        compile: False (eager), True (torch.compile of the train and eval steps with static
            shapes; CUDA graphs on one GPU), or a torch.compile mode such as reduce-overhead or
            max-autotune-no-cudagraphs. Worth it on a GPU for long runs (one-time warm-up).
        scores_dir: folder of the loss file.
        splits_dir: folder of the split file.
        download: download CIFAR through torchvision when it is missing.
        overwrite: replace an existing loss file / start over an existing run.

    Returns:
        The path of the loss file (or '' with evaluate_only).
    """
    config = {k: v for k, v in locals().items()}
    info = dataset_info(dataset)
    recipe = Recipe.from_flags(epochs=epochs, batch_size=batch_size, test_batch_size=test_batch_size,
                               learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay,
                               disable_nesterov=disable_nesterov, schedule=schedule, gamma=gamma)
    config["schedule"] = list(recipe.schedule)
    ratio = info.val_split_ratio if val_split_ratio is None else float(val_split_ratio)
    config["val_split_ratio"] = ratio
    name = paths.run_name(info.name, model_arch, manual_seed)
    loss_file = paths.loss_path(scores_dir, info.name, model_arch, manual_seed)
    split_file = paths.split_path(splits_dir, info.name, model_arch, manual_seed)
    files = RunFiles.named(checkpoint_path, logpath, name, output=loss_file)
    if evaluate_only:
        return evaluate_checkpoint(resume_path, dataset=info.name, data_path=data_path, model_arch=model_arch,
                                   device=device, precision=precision, recipe=recipe, workers=workers, download=download)

    def prepare_outputs() -> None:
        # The main process alone: the others write nothing, so they create no folders either.
        for folder in (checkpoint_path, logpath, scores_dir, splits_dir):
            ensure_dir(folder)
        for note in claim_files(files, resume_path, overwrite):
            print(note)

    session = open_session(dataset=info.name, data_path=data_path, model_arch=model_arch, device=device,
                           precision=precision, compile=compile, recipe=recipe, manual_seed=manual_seed,
                           workers=workers, download=download, prepare=prepare_outputs)
    is_main = session.dist.is_main
    say = print if is_main else (lambda *a, **k: None)
    labels = session.data.train_labels
    train_idx, val_idx = stratified_split(labels, ratio, manual_seed, session.data.num_classes)
    identity = {"stage": "losses", "dataset": info.name, "model_arch": model_arch, "manual_seed": int(manual_seed),
                "val_split_ratio": ratio, "num_train": int(len(train_idx)), "num_val": int(len(val_idx)),
                "world_size": session.dist.world}
    run = TrainingRun(session.model, session.trainer, session.scheduler, recipe, files, identity, config, is_main)
    traj = _Trajectories(recipe.epochs, len(train_idx), len(val_idx))
    if resume_path:  # before the split file is written: a refused resume writes nothing
        traj.restore(run.resume(resume_path, overwrite, log=say), run.epoch)
        say(f"resumed {resume_path} after epoch {run.epoch}")
    with distributed.fail_together():
        if is_main:
            _write_split(split_file, train_idx, val_idx, info.name, model_arch, manual_seed, ratio, overwrite)
    say(f"{info.name}: {len(train_idx)} training / {len(val_idx)} validation / {len(session.test_source)} test "
        f"examples; {model_arch} ({sum(p.numel() for p in session.model.parameters()) / 1e6:.2f}M parameters) "
        f"on {session.device} in {session.precision}")

    def collect(epoch: int) -> dict:
        tr = session.evaluate(session.train_source, train_idx, signals=True)
        val = session.evaluate(session.train_source, val_idx)
        traj.record(epoch, tr, val)
        return {"val_loss_mean": float(traj.val_loss[epoch].mean(dtype=np.float64))}

    run.fit(session.train_batches(train_idx, manual_seed), session.test_eval, after_epoch=collect,
            extra_state=lambda: traj.state(run.epoch), log=say)
    # Every process returns only once the loss file exists (or raises if writing it failed).
    with distributed.fail_together():
        if is_main:
            save_losses(loss_file, {
                "dataset": info.name, "model_arch": model_arch, "manual_seed": int(manual_seed),
                "num_classes": session.data.num_classes, "config": config,
                "epoch": np.arange(recipe.epochs, dtype=np.int64),
                "tr_loss": traj.tr_loss, "val_loss": traj.val_loss,
                "tr_lbl": labels[train_idx], "val_lbl": labels[val_idx],
                "train_indices": train_idx, "val_indices": val_idx, **traj.signals,
            })
    say(f"best test accuracy {run.best_acc:.2f}%; losses of {recipe.epochs} epochs saved to {loss_file}")
    say(f"next: python compute_cld_scores.py --loss_path {loss_file}")
    distributed.teardown()
    return loss_file


class _Trajectories:
    """Host arrays of per-example results, one row per epoch, filled as epochs finish."""

    def __init__(self, epochs: int, n_train: int, n_val: int):
        self.tr_loss = np.zeros((epochs, n_train), np.float32)
        self.val_loss = np.zeros((epochs, n_val), np.float32)
        self.signals = {k: np.zeros((epochs, n_train), dtype) for k, dtype in _SIGNAL_DTYPES.items()}

    def record(self, epoch: int, tr: dict, val: dict) -> None:
        # One device-to-host copy per array per epoch.
        self.tr_loss[epoch] = tr["loss"].cpu().numpy()
        self.val_loss[epoch] = val["loss"].cpu().numpy()
        for key, row in self.signals.items():
            values = tr[key[3:]].cpu().numpy()
            if row.dtype == np.float16:  # a diverging run's margins can leave float16's range
                values = np.clip(values, -np.finfo(np.float16).max, np.finfo(np.float16).max)
            row[epoch] = values

    def state(self, done: int) -> dict:
        arrays = {"tr_loss": self.tr_loss, "val_loss": self.val_loss, **self.signals}
        return {key: torch.from_numpy(np.ascontiguousarray(value[:done])) for key, value in arrays.items()}

    def restore(self, state: dict, done: int) -> None:
        arrays = {"tr_loss": self.tr_loss, "val_loss": self.val_loss, **self.signals}
        for key, target in arrays.items():
            saved = state.get(key)
            if saved is None or tuple(saved.shape) != (done, target.shape[1]):
                raise UserError(f"checkpoint lacks the recorded {key!r} of its {done} epochs; it is not a stage-1 checkpoint")
            target[:done] = saved.numpy()


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


if __name__ == "__main__":
    sys.exit(run_cli(main))
