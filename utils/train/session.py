"""What the stages set up alike: device, processes, data, model, optimiser, trainer.

Everything is resolved once here and passed down (no ``.cuda()`` anywhere else).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from utils import progress
from utils.data.batches import shard_positions
from utils.data.sources import BatchSource, make_batches
from utils.data.images import bad_images, refuse_or_skip
from utils.data.datasets import LoadedDataset, dataset_info, load_dataset
from utils.errors import UserError, first_line
from utils.files.checkpoint import check_identity, load_model_weights
from utils.train import distributed
from utils.train.device import (cpu_threads, kernels_in_effect, resolve_collect_precision, resolve_compile,
                                resolve_device, resolve_precision, use_cpu_kernels)
from utils.train.distributed import DistInfo
from utils.train.engine import Trainer, build_optimizer, build_scheduler
from utils.train.options import Recipe, SessionOptions, optimizer_steps


@dataclass
class Session:
    """A model ready to train on a dataset, on one device, in one process of the job."""
    dist: DistInfo
    device: torch.device
    precision: str  # training (and test-set evaluation)
    collect_precision: str  # per-example losses of the training and validation splits
    data: LoadedDataset
    train_source: BatchSource  # over the training set
    test_source: BatchSource
    model: torch.nn.Module  # unwrapped
    trainer: Trainer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    recipe: Recipe
    threads: int = 0  # torch's CPU threads
    machine: dict = field(default_factory=dict)  # the CPU kernels in effect, and the CPU (kernels_in_effect)
    excluded_train: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # --skip_bad_images
    test_indices: np.ndarray | None = None  # the test examples evaluated (all but unreadable files)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def optimizer_steps(self, examples: int) -> int:
        """SGD steps of the whole run on ``examples`` examples (every process takes as many)."""
        return optimizer_steps(examples, self.recipe.batch_size, self.recipe.epochs, self.dist.world)

    def test_eval(self) -> tuple[float, float]:
        """(mean loss, accuracy %) on the whole test set (less the files that cannot be images)."""
        indices = np.arange(len(self.test_source)) if self.test_indices is None else self.test_indices
        out = self.evaluate(self.test_source, indices, desc="test")
        return float(out["loss"].double().mean()), 100.0 * float(out["correct"].double().mean())

    def evaluate(self, source: BatchSource, indices: np.ndarray, signals: bool = False, precision: str | None = None,
                 desc: str = "eval") -> dict[str, torch.Tensor]:
        """Per-example results for ``indices`` of ``source``, complete on every process."""
        distributed.broadcast_buffers(self.model)
        batches = source.eval_batches(indices, self.recipe.test_batch_size, self.dist.rank, self.dist.world)
        total = self._count(len(indices), self.recipe.test_batch_size)
        out = self.trainer.evaluate(progress.bar(batches, desc, total=total), len(indices), signals=signals,
                                    precision=precision)
        return {key: distributed.merge_by_slot(value, self.dist) for key, value in out.items()}

    def collect(self, indices: np.ndarray, signals: bool = False, desc: str = "collect") -> dict[str, torch.Tensor]:
        """Per-example results of training-set examples in the collection precision."""
        return self.evaluate(self.train_source, indices, signals, self.collect_precision, desc)

    def train_epoch(self, indices: np.ndarray, seed: int, epoch: int,
                    weights: np.ndarray | None = None) -> tuple[float, float]:
        """One epoch of SGD on this process's share of ``indices`` (shuffled and, with the recipe's
        ``augment``, augmented from ``(seed, epoch)`` alone), weighted by ``weights`` (aligned with
        ``indices``) if given; returns (mean loss, accuracy %)."""
        r = self.recipe
        batches = self.train_source.train_epoch(indices, r.batch_size, seed, epoch, self.dist.rank, self.dist.world,
                                                r.augment, weights)
        count = self._count(len(indices), r.batch_size)
        return self.trainer.train_epoch(progress.bar(progress.Sized(batches, count), f"epoch {epoch + 1} train"))

    def train_and_test(self, indices: np.ndarray, seed: int, epoch: int,
                       weights: np.ndarray | None = None) -> dict[str, float]:
        """What every epoch of both training stages begins with: one epoch of SGD on ``indices``
        (:meth:`train_epoch`), the test-set evaluation, then the learning-rate schedule's step.
        Returns the start of the epoch's log row: its number from 1, the learning rate it trained
        at, the two losses and accuracies, and the seconds of the two passes."""
        lr = self.trainer.optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        train_loss, train_acc = self.train_epoch(indices, seed, epoch, weights)
        t1 = time.perf_counter()
        test_loss, test_acc = self.test_eval()
        t2 = time.perf_counter()
        self.scheduler.step()
        return {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                "test_acc": test_acc, "seconds_train": t1 - t0, "seconds_test": t2 - t1}

    def _count(self, n: int, batch_size: int) -> int:
        """Batches this process gets of ``n`` examples (shards are padded to equal size)."""
        return -(-len(shard_positions(n, self.dist.rank, self.dist.world)) // batch_size)


def where(session: Session) -> str:
    """The device a stage runs on, for its summary line (with the thread count on a CPU)."""
    if session.device.type != "cpu":
        return str(session.device)
    return f"cpu ({session.threads} thread{'s' if session.threads != 1 else ''}; --threads to change)"


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (model initialisation, dropout); batches have their own generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(model_arch: str, num_classes: int, dataset: str, device: torch.device) -> torch.nn.Module:
    """A registry model on ``device`` (channels_last on CUDA), or a one-line user error."""
    import models

    try:
        model = models.get_model(model_arch, num_classes, dataset).to(device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return model


def open_session(o: SessionOptions, recipe: Recipe, *, dataset: str, model_arch: str, num_classes: int | None = None,
                 num_classes_of: str = "the input", prepare: Callable[[], None] | None = None,
                 check_train: bool = True) -> Session:
    """Resolve device and precision, join the process group, load the data, build the model.

    ``o`` holds a training stage's device, precision, data and seed options; ``dataset`` and
    ``model_arch`` are the resolved ones. ``prepare`` runs on the main process
    alone, once the processes have joined and before any data is loaded: the place to create
    output folders and refuse existing outputs, so that other processes (maybe on other nodes,
    with other disks) neither create folders nor look at files the main process writes. An error
    there stops every process alike.
    """
    use_cpu_kernels(o.cpu_kernels)
    torch_device = resolve_device(o.device)
    precision = resolve_precision(o.precision, torch_device)
    collect = resolve_collect_precision(o.collect_precision, precision, torch_device)
    resolve_compile(o.compile, torch_device)  # a bad value fails here, before any data is loaded
    # ImageFolder datasets: a --decode the device cannot do fails here too, before the folder scan.
    if o.decode == "gpu" and not dataset_info(dataset).in_memory and torch_device.type != "cuda":
        raise UserError("--decode gpu needs a CUDA device (nvJPEG); use --decode cpu")
    dist_info, torch_device = distributed.setup(torch_device)
    with distributed.fail_together():
        if prepare is not None and dist_info.is_main:
            prepare()
    # One process per filesystem downloads what is missing; the others then read it.
    data = distributed.in_turn(dist_info, lambda: load_dataset(dataset, o.data_path, download=o.download))
    if num_classes is not None and num_classes != data.num_classes:
        raise UserError(f"{data.info.name} has {data.num_classes} classes but {num_classes_of} was made for {num_classes}")
    excluded = {"train": np.zeros(0, np.int64), "test": np.zeros(0, np.int64)}
    if not data.info.in_memory:  # before any training: a damaged file is named now, not mid-epoch
        with distributed.fail_together():
            for part in ("train", "test") if check_train else ("test",):
                bad = bad_images(getattr(data, part), o.workers, part)
                if dist_info.is_main:  # the main process names them; the others stop alike
                    refuse_or_skip(bad, part, o.skip_bad_images)
                elif bad and not o.skip_bad_images:
                    raise UserError(f"the {part} set holds files that cannot be read as images")
                excluded[part] = np.array(sorted(i for i, _, _ in bad), dtype=np.int64)
    seed_everything(o.manual_seed)
    model = build_model(model_arch, data.num_classes, data.info.name, torch_device)
    threads = cpu_threads(o.threads, sum(p.numel() for p in model.parameters()), torch_device)
    wrapped = model
    if dist_info.enabled:
        ids = [torch_device.index] if torch_device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = build_optimizer(model, recipe, torch_device)
    trainer = Trainer(wrapped, optimizer, torch_device, precision,
                      compile=resolve_compile(o.compile, torch_device, distributed=dist_info.enabled),
                      all_reduce=distributed.all_reduce_sum, eval_batch_size=recipe.test_batch_size)
    return Session(dist_info, torch_device, precision, collect, data,
                   make_batches(data.train, data.info, torch_device, o.workers, o.decode),
                   make_batches(data.test, data.info, torch_device, o.workers, o.decode),
                   model, trainer, build_scheduler(optimizer, recipe), recipe, threads,
                   _machine(o.cpu_kernels, torch_device), excluded["train"],
                   None if data.info.in_memory else np.setdiff1d(np.arange(len(data.test)), excluded["test"]))


def _machine(cpu_kernels: str, device: torch.device) -> dict:
    """What a run records of where it computed: the CPU kernels and the CPU, and the device."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return {**kernels_in_effect(cpu_kernels), "device": device.type, "gpu": gpu}


def evaluate_checkpoint(o: SessionOptions, recipe: Recipe, checkpoint: str, *, dataset: str, model_arch: str) -> dict:
    """Evaluate a checkpoint's model on the test set and print the result (``--evaluate_only``);
    returns {checkpoint, epoch, test_loss, test_acc}.

    Checkpoints of this project and those of the paper's code (a DataParallel ``state_dict``)
    both load.
    """
    weights, epoch, identity = load_model_weights(checkpoint)
    if identity is not None:
        check_identity(identity, {"dataset": dataset, "model_arch": model_arch}, checkpoint)
    session = open_session(replace(o, compile=False), recipe, dataset=dataset, model_arch=model_arch)
    try:
        session.model.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(f"checkpoint {checkpoint} does not hold a {model_arch} for {session.data.info.name} "
                        f"({first_line(exc)}); pass the --model_arch and --dataset it was trained with") \
            from None
    loss, acc = session.test_eval()
    if session.dist.is_main:
        print(f"{checkpoint} (epoch {epoch}): test loss {loss:.4f}, test accuracy {acc:.2f}%")
    distributed.teardown()
    return {"checkpoint": checkpoint, "epoch": epoch, "test_loss": loss, "test_acc": acc}
