"""Stage 3's options: one typed field per flag of ``train_on_coresets.py``, with its defaults.

Torch-free. The command line (:mod:`utils.cli`) checks each flag and fills this record (it folds
the paper code's ``topk_per_class`` into ``samples_per_class``); Python callers may build it
themselves. A run's JSON records ``asdict(options)`` as its ``config``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from utils import paths

PAPER_TOPK = 100  # the paper code's default topk_per_class: the budget when none is given


@dataclass(frozen=True)
class CoresetOptions:
    """Which coreset stage 3 trains on, and how (docs/flags.md describes every field)."""
    score_path: str = ""
    samples_per_class: int | None = None
    topk_per_class: int | None = None
    fraction: float | None = None
    order: str = "top"
    ccs_beta: float = 0.0
    allow_missing_classes: bool = False
    weighted: bool = True
    data_path: str = paths.DATA_DIR
    dataset: str | None = None
    model_arch: str | None = None
    workers: int = 4
    epochs: int = 164
    start_epoch: int = 0
    batch_size: int = 128
    test_batch_size: int = 256
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
    results_dir: str = paths.RESULTS_DIR
    name: str = ""
    fit_threshold: float = 90.0
    download: bool = True
    decode: str = "cpu"
    skip_bad_images: bool = False
    overwrite: bool = False
