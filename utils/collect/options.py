"""Stage 1's options: one typed field per flag of ``get_loss_values.py``, with the paper's defaults.

Torch-free. The command line (:mod:`utils.cli`) checks each flag and fills this record; Python
callers may build it themselves. Field order is the flags' order: the loss file records
``asdict(options)`` as its ``config``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from utils import paths


@dataclass(frozen=True)
class CollectOptions:
    """How stage 1 trains and what it records (docs/flags.md describes every field)."""
    data_path: str = paths.DATA_DIR
    dataset: str = "CIFAR100"
    model_arch: str = "resnet18"
    workers: int = 4
    epochs: int = 164
    start_epoch: int = 0
    batch_size: int = 128
    test_batch_size: int = 256
    val_split_ratio: float | None = None
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    disable_nesterov: bool = False
    schedule: list[int] = field(default_factory=lambda: [81, 121])
    gamma: float = 0.1
    augment: bool = True
    checkpoint_path: str = paths.CHECKPOINT_DIR
    logpath: str = paths.LOG_DIR
    resume_path: str = ""
    manual_seed: int = 1234
    evaluate_only: bool = False
    device: str = "auto"
    precision: str = "auto"
    compile: bool | str = False
    threads: int = 0
    cpu_kernels: str = "portable"
    collect_precision: str = "fp32"
    scores_dir: str = paths.SCORES_DIR
    splits_dir: str = paths.SPLITS_DIR
    snapshot_epochs: list[int] = field(default_factory=lambda: [40])
    trajectories: str = "full"
    stop_when_stable: float | None = None
    stability_every: int = 5
    stability_k: float = 0.1
    download: bool = True
    decode: str = "cpu"
    skip_bad_images: bool = False
    overwrite: bool = False
