"""Default file names; the stages chain with no arguments because they agree on these (DESIGN.md)."""
from __future__ import annotations

import os


def run_name(dataset: str, model_arch: str, seed: int) -> str:
    """``{dataset}_{arch}_seed{seed}``, the stem the paper code gives every file of a run."""
    return f"{dataset}_{model_arch}_seed{seed}"


def loss_path(scores_dir: str, dataset: str, model_arch: str, seed: int) -> str:
    return os.path.join(scores_dir, f"{run_name(dataset, model_arch, seed)}_losses.pickle")


def score_path(scores_dir: str, method: str, dataset: str, model_arch: str, seed: int) -> str:
    return os.path.join(scores_dir, f"{method.upper()}_{run_name(dataset, model_arch, seed)}_scores.pickle")


def split_path(splits_dir: str, dataset: str, model_arch: str, seed: int) -> str:
    return os.path.join(splits_dir, f"{run_name(dataset, model_arch, seed)}_split.pkl")
