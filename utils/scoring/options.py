"""Stage 2's options: one typed field per flag of ``compute_cld_scores.py``, with its defaults.

Torch-free. The command line (:mod:`utils.cli`) checks each flag and fills this record; Python
callers may build it themselves. A method reads the fields its record names
(:attr:`utils.methods.record.Method.options`).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScoreOptions:
    """What stage 2 scores and how (docs/flags.md describes every field)."""
    loss_path: str = ""
    dataset: str | None = None  # None: the file's (a legacy file's: CIFAR100, as the default loss_path's)
    model_arch: str | None = None  # None: the file's (a legacy file's: resnet18)
    split_path: str = ""
    method: str = "cld"
    output_path: str = ""
    export_coreset: str = ""
    samples_per_class: int | None = None
    fraction: float | None = None
    order: str = "top"
    ccs_beta: float = 0.0
    stability: bool = False
    stability_epochs: list[int] = field(default_factory=list)
    stability_k: list[float] = field(default_factory=lambda: [0.1])
    figure: str = ""
    figure_class: int | None = None
    first_epochs: int = 0
    epoch_stride: int = 1
    el2n_epochs: int = 20
    dyn_unc_window: int = 10
    seed: int | None = None
    snapshot_epoch: int | None = None
    save_features: str = ""
    cal_neighbors: int = 10
    deepfool_max_iter: int = 50
    glister_eta: float | None = None
    budgets: list[float] = field(default_factory=list)
    selection_model: str = "snapshot"
    gradient_target: str = "val"
    data_path: str = ""
    device: str = "auto"
    threads: int = 0
    cpu_kernels: str = "portable"
    collect_precision: str = "fp32"
    overwrite: bool = False
