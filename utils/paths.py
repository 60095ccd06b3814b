"""Every file and folder name of the project, built in one place.

The stages chain with no arguments because they agree on these names: stage 1 writes
``Scores/{dataset}_{arch}_seed{seed}_losses.pickle``, stage 2 reads it and writes
``Scores/{METHOD}_{dataset}_{arch}_seed{seed}_scores.pickle``, stage 3 reads that. A run (stage 1
or 3) keeps its checkpoints, log and lock under one name (:class:`RunFiles`). No other module joins
path parts.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import Any

from utils.errors import UserError

DATA_DIR = "./Data"
CHECKPOINT_DIR = "./Data/Checkpoint"
LOG_DIR = "./Logs"
SCORES_DIR = "./Scores"
SPLITS_DIR = "./Splits"
RESULTS_DIR = "./Results"

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}")


def check_safe_name(value: Any, what: str) -> str:
    """A name that becomes part of a file name: letters, digits and ``. _ + = -`` only."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value) or ".." in value:
        raise UserError(f"{what} {value!r} cannot be part of a file name: use letters, digits and . _ + = - "
                        "only (at most 200, not starting with a dot)")
    return value


def run_name(dataset: str, model_arch: str, seed: int) -> str:
    """``{dataset}_{arch}_seed{seed}``, the stem the paper code gives every file of a run."""
    return f"{dataset}_{model_arch}_seed{seed}"


def loss_path(scores_dir: str, dataset: str, model_arch: str, seed: int) -> str:
    return os.path.join(scores_dir, f"{run_name(dataset, model_arch, seed)}_losses.pickle")


def sums_path(scores_dir: str, dataset: str, model_arch: str, seed: int) -> str:
    """CLD's running sums (``--trajectories sums``), instead of a loss file."""
    return os.path.join(scores_dir, f"{run_name(dataset, model_arch, seed)}_cld_sums.npz")


def score_path(scores_dir: str, method: str, dataset: str, model_arch: str, seed: int) -> str:
    return os.path.join(scores_dir, f"{method.upper()}_{run_name(dataset, model_arch, seed)}_scores.pickle")


def split_path(splits_dir: str, dataset: str, model_arch: str, seed: int) -> str:
    return os.path.join(splits_dir, f"{run_name(dataset, model_arch, seed)}_split.pkl")


def source_of_score_file(path: str) -> tuple[str, str] | None:
    """(method, the loss file it was scored from) for a score file of the default name, else None."""
    found = re.fullmatch(r"([A-Z0-9_]+?)_(.+_seed\d+)_scores\.pickle", os.path.basename(path))
    if not found:
        return None
    return found.group(1).lower(), os.path.join(os.path.dirname(path), f"{found.group(2)}_losses.pickle")


def source_of_loss_file(path: str) -> tuple[str, str, int, bool] | None:
    """(dataset, model, seed, whether a sums file) of a loss or sums file of the default name, else None
    (dataset names hold no underscore; model names may)."""
    found = re.fullmatch(r"([A-Za-z0-9]+)_(.+)_seed(\d+)_(losses\.pickle|cld_sums\.npz)", os.path.basename(path))
    if not found:
        return None
    return found.group(1), found.group(2), int(found.group(3)), found.group(4).endswith(".npz")


def budget_token(budget: tuple[str, float]) -> str:
    """``k5`` (5 per class) or ``f0.1`` (10% of each class): how run names and score files name a budget."""
    kind, value = budget
    return f"k{int(value)}" if kind == "samples_per_class" else f"f{value:g}"


def coreset_run_name(dataset: str, model_arch: str, method: str, score_arch: str, order: str,
                     budget: tuple[str, float], seed: int, tag: str = "", selection: str = "") -> str:
    """Stage 3's run name: ``{dataset}_{arch}_coreset_{source}_{order}_{k5|f0.1}_seed{seed}[_{tag}]``.

    ``source`` is the method, followed by ``-{score_arch}`` when another model produced the scores
    (the paper's transfer experiments) and by ``+{selection}`` when a model method scored from a
    separate selection run (``+deepcore``); ``budget`` is ('samples_per_class', k) or ('fraction', f).
    """
    token = budget_token(budget)
    source = method if score_arch in (model_arch, "unknown") else f"{method}-{score_arch}"
    if selection and selection != "snapshot":
        source += f"+{selection}"
    name = f"{dataset}_{model_arch}_coreset_{source}_{order}_{token}_seed{seed}"
    return f"{name}_{tag}" if tag else name


def runs_dir(results_dir: str) -> str:
    """The folder of stage 3's run results, one JSON per run."""
    return os.path.join(results_dir, "runs")


def run_json(results_dir: str, name: str) -> str:
    return os.path.join(runs_dir(results_dir), f"{name}.json")


def results_csv(results_dir: str) -> str:
    return os.path.join(results_dir, "results.csv")


SELECTION_RUNS = "deepcore_selection"  # subfolder of the grid's folders for DeepCore's selection run


def table_files(results_dir: str) -> dict[str, str]:
    """What ``reproduce_table.py`` writes into the results folder."""
    return {name: os.path.join(results_dir, file) for name, file in (
        ("csv", "table.csv"), ("md", "table.md"), ("png", "accuracy_vs_size.png"), ("orders", "cld_orders.png"),
        ("overlap_csv", "method_overlap.csv"), ("overlap_png", "method_overlap.png"),
        ("overview", "cld_overview.png"))}


def cifar_root(data_path: str) -> str:
    """Where CIFAR lives in torchvision's layout (``cifar-10-batches-py/``, ``cifar-100-python/``)."""
    return os.path.join(data_path, "cifar")


def cifar_files(data_path: str, folder: str, names: list[str]) -> list[str]:
    return [os.path.join(cifar_root(data_path), folder, name) for name in names]


def image_folder(data_path: str, part: str = "") -> str:
    """An ImageFolder dataset's root (``imagenet/``), or one of its parts (``train``, ``val``)."""
    return os.path.join(data_path, "imagenet", part) if part else os.path.join(data_path, "imagenet")


def lock_of(path: str) -> str:
    """The lock file of an output written by one process at a time (stage 2's score file)."""
    return path + ".lock"


@dataclass(frozen=True)
class RunFiles:
    """Where one training run (stage 1 or 3) keeps its state, under its name.

    ``last`` is the run-state checkpoint written every epoch, ``best`` the best model by test
    accuracy, ``log`` the per-epoch CSV, ``lock`` the file a running process holds, ``output`` the
    file the run exists to produce (stage 1: the loss or sums file; stage 3: its results JSON).
    """
    checkpoint_dir: str
    log_dir: str
    name: str
    output: str = ""

    last = property(lambda self: self._checkpoint_file("_last.pth"))
    best = property(lambda self: self._checkpoint_file("_best.pth"))
    lock = property(lambda self: self._checkpoint_file(".lock"))
    log = property(lambda self: os.path.join(self.log_dir, f"{self.name}.csv"))

    def _checkpoint_file(self, suffix: str) -> str:
        return os.path.join(self.checkpoint_dir, self.name + suffix)

    def snapshot(self, epoch: int) -> str:
        """The model weights after ``epoch`` epochs (stage 1's ``--snapshot_epochs``)."""
        return os.path.join(self.checkpoint_dir, f"{self.name}_epoch{epoch}.pth")

    def snapshots(self) -> dict[int, str]:
        """The weight snapshots on disk, by epoch."""
        pattern = os.path.join(glob.escape(self.checkpoint_dir), glob.escape(self.name) + "_epoch*.pth")
        found = {}
        for path in glob.glob(pattern):
            epoch = re.fullmatch(re.escape(self.name) + r"_epoch(\d+)\.pth", os.path.basename(path))
            if epoch:
                found[int(epoch.group(1))] = path
        return dict(sorted(found.items()))

    @property
    def trajectories(self) -> str:
        """The folder of stage 1's per-epoch rows (one ``.npy`` per recorded array)."""
        return os.path.join(self.checkpoint_dir, f"{self.name}_trajectories")

    def trajectory(self, key: str) -> str:
        return os.path.join(self.trajectories, f"{key}.npy")

    def sums_state(self, epochs: int) -> str:
        """CLD's running sums after ``epochs`` epochs (``--trajectories sums``)."""
        return os.path.join(self.trajectories, f"cld_sums_epoch{epochs}.npz")
