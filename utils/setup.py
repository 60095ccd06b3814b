"""What stages 1 and 3 set up alike: device, processes, data, model, optimiser, trainer.

Everything is resolved once here and passed down (no ``.cuda()`` anywhere else).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from utils import distributed
from utils.batches import make_batches
from utils.checkpoint import check_identity, load_checkpoint
from utils.cli import UserError
from utils.data import LoadedDataset, load_dataset
from utils.distributed import DistInfo
from utils.training import (Recipe, Trainer, build_optimizer, build_scheduler, resolve_compile, resolve_device,
                            resolve_precision)


@dataclass
class Session:
    """A model ready to train on a dataset, on one device, in one process of the job."""
    dist: DistInfo
    device: torch.device
    precision: str
    data: LoadedDataset
    train_source: Any  # TensorBatches | FolderBatches over the training set
    test_source: Any
    model: torch.nn.Module  # unwrapped
    trainer: Trainer
    scheduler: Any
    recipe: Recipe

    def test_eval(self) -> tuple[float, float]:
        """(mean loss, accuracy %) on the whole test set."""
        out = self.evaluate(self.test_source, np.arange(len(self.test_source)))
        return float(out["loss"].double().mean()), 100.0 * float(out["correct"].double().mean())

    def evaluate(self, source, indices: np.ndarray, signals: bool = False) -> dict[str, torch.Tensor]:
        """Per-example results for ``indices`` of ``source``, complete on every process."""
        distributed.broadcast_buffers(self.model)
        batches = source.eval_batches(indices, self.recipe.test_batch_size, self.dist.rank, self.dist.world)
        out = self.trainer.evaluate(batches, len(indices), signals=signals)
        return {key: distributed.merge_by_slot(value, self.dist) for key, value in out.items()}

    def train_batches(self, indices: np.ndarray, seed: int):
        """epoch -> that epoch's shuffled, augmented batches of ``indices`` for this process."""
        return lambda epoch: self.train_source.train_epoch(indices, self.recipe.batch_size, seed, epoch,
                                                           self.dist.rank, self.dist.world)


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (model initialisation, dropout); batches have their own generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(model_arch: str, num_classes: int, dataset: str) -> torch.nn.Module:
    """A registry model, or a one-line user error listing the valid names."""
    import models

    try:
        return models.get_model(model_arch, num_classes, dataset)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def open_session(*, dataset: str, data_path: str, model_arch: str, device: str, precision: str,
                 compile: bool | str, recipe: Recipe, manual_seed: int, workers: int, download: bool = True,
                 num_classes: int | None = None, num_classes_of: str = "the input",
                 prepare: Callable[[], None] | None = None) -> Session:
    """Resolve device and precision, join the process group, load the data, build the model.

    ``prepare`` runs on the main process alone, once the processes have joined and before any data
    is loaded: the place to create output folders and refuse existing outputs, so that other
    processes (maybe on other nodes, with other disks) neither create folders nor look at files
    the main process writes. An error there stops every process alike.

    ``compile`` is False, True (inductor with CUDA graphs on one GPU, plain inductor otherwise) or
    a torch.compile mode (:func:`utils.training.resolve_compile`); a bad value fails here, before
    any data is loaded.
    """
    recipe.validate()
    torch_device = resolve_device(device)
    resolved_precision = resolve_precision(precision, torch_device)
    resolve_compile(compile, torch_device)  # validate the flag early
    if workers < 0:
        raise UserError(f"workers must be >= 0, got {workers}")
    dist_info, torch_device = distributed.setup(torch_device)
    with distributed.fail_together():
        if prepare is not None and dist_info.is_main:
            prepare()
    # One process per filesystem downloads what is missing; the others then read it.
    data = distributed.in_turn(dist_info, lambda: load_dataset(dataset, data_path, download=download))
    if num_classes is not None and num_classes != data.num_classes:
        raise UserError(f"{data.info.name} has {data.num_classes} classes but {num_classes_of} was made for {num_classes}")
    seed_everything(manual_seed)
    model = build_model(model_arch, data.num_classes, data.info.name).to(torch_device)
    if torch_device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    wrapped = model
    if dist_info.enabled:
        ids = [torch_device.index] if torch_device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = build_optimizer(model, recipe, torch_device)
    trainer = Trainer(wrapped, optimizer, torch_device, resolved_precision,
                      compile=resolve_compile(compile, torch_device, distributed=dist_info.enabled),
                      all_reduce=distributed.all_reduce_sum, eval_batch_size=recipe.test_batch_size)
    return Session(dist_info, torch_device, resolved_precision, data,
                   make_batches(data.train, data.info, torch_device, workers),
                   make_batches(data.test, data.info, torch_device, workers),
                   model, trainer, build_scheduler(optimizer, recipe), recipe)


def evaluate_checkpoint(resume_path: str, *, dataset: str, model_arch: str, **session_flags: Any) -> str:
    """Evaluate a checkpoint's model on the test set and print the result (``evaluate_only``)."""
    if not resume_path:
        raise UserError("evaluate_only needs --resume_path with the checkpoint to evaluate")
    state = load_checkpoint(resume_path)
    check_identity(state.get("identity", {}), {"dataset": dataset, "model_arch": model_arch}, resume_path)
    session = open_session(dataset=dataset, model_arch=model_arch, compile=False, manual_seed=0, **session_flags)
    session.model.load_state_dict(state["model"])
    loss, acc = session.test_eval()
    if session.dist.is_main:
        print(f"{resume_path} (epoch {state.get('epoch')}): test loss {loss:.4f}, test accuracy {acc:.2f}%")
    distributed.teardown()
    return ""
