"""Stage 2's ``--export_coreset``: the examples to keep, written as the ids the user knows them by,
and the ids of a loss file recorded from the user's own training loop (``source == 'recorder'``).

The coreset is chosen by the rules stage 3 trains with (:func:`utils.core.selection.class_budgets`
and :func:`~utils.core.selection.select_coreset`: one implementation), from the rankings of the
score file just written, the seed of random and CCS draws being the score's. Its ids are written
ascending: an int64 ``.npy``, or a ``.csv`` with the header ``id`` (docs/formats.md). The ids of a
stage-1 loss file are its dataset indices; those of a recorded file are its ``train_ids`` (its
indices are positions 0..N-1, which name nothing outside the file). numpy only.
"""
from __future__ import annotations

import csv
import io
from typing import Any, Mapping

import numpy as np

from utils.core.selection import SCORED_ORDERS, class_budgets, select_coreset
from utils.errors import UserError, require
from utils.files.atomic import atomic_write
from utils.methods.record import Method
from utils.scoring.options import ScoreOptions

RECORDER = "recorder"  # the ``source`` of a loss file written by cld_recorder.py


def is_recorded(losses: Mapping[str, Any]) -> bool:
    """Whether the loss file was recorded from the user's own loop (no dataset, no weights)."""
    return losses.get("source") == RECORDER


def check_request(s: ScoreOptions, method: Method) -> None:
    """What the flags alone tell, before the loss file is read: an order that reads scores needs
    scores that are values, not a greedy order's gains (as stage 3 refuses them). (The command line
    checked the extension already; a Python caller's options are checked here.)"""
    require(s.export_coreset.endswith((".npy", ".csv")), f"--export_coreset must name a .npy or .csv file, got "
            f"{s.export_coreset!r}")
    if s.order in SCORED_ORDERS and method.greedy:
        raise UserError(f"--order {s.order} reads scores, but {method.name}'s ranking is a greedy order (its scores "
                        "are the gains of each step); use top, bottom, middle or random")


def train_ids(losses: Mapping[str, Any], path: str) -> np.ndarray:
    """The id of every training column: a recorded file's ``train_ids`` (int64 or text), checked to
    name each column once; the dataset indices otherwise."""
    if not is_recorded(losses):
        return losses["train_indices"]
    ids, n = losses.get("train_ids"), losses["train_indices"].size
    require(isinstance(ids, np.ndarray) and ids.shape == (n,) and ids.dtype.kind in "iuU", f"recorded loss file "
            f"{path}: train_ids must be an array of {n} integer or text ids, one per training column")
    # The rankings list positions; an id is looked up by position, so they must be 0..N-1.
    require(np.array_equal(losses["train_indices"], np.arange(n)), f"recorded loss file {path}: train_indices must "
            "be the positions 0..N-1 of its training columns")
    require(np.unique(ids).size == n, f"recorded loss file {path}: train_ids names an example twice")
    return ids.astype(np.int64) if ids.dtype.kind in "iu" else ids


def recorded_fields(losses: Mapping[str, Any], ids: np.ndarray, n_cls: int, path: str) -> dict:
    """What a score file of a recorded loss file adds: its source, the ids (``train_ids[i]`` names
    ranked index i) and the names of its groups (None: the labels were plain integers)."""
    if not is_recorded(losses):
        return {}
    names = losses.get("group_names")
    require(names is None or (isinstance(names, (list, tuple)) and len(names) == n_cls
                              and all(isinstance(x, str) for x in names)),
            f"recorded loss file {path}: group_names must be None or {n_cls} names (one per group)")
    return {"source": RECORDER, "train_ids": ids, "group_names": None if names is None else list(names)}


def check_ids(s: ScoreOptions, ids: np.ndarray, labels: np.ndarray) -> None:
    """Before scoring: text ids fit a .csv only, and the budget fits every class (or group)."""
    if not s.export_coreset:
        return
    require(not (s.export_coreset.endswith(".npy") and ids.dtype.kind == "U"), f"--export_coreset "
            f"{s.export_coreset}: this file's ids are text (e.g. {str(ids[0])!r}), and a .npy holds integer ids; "
            "give a .csv path")
    # Every training example is ranked, so the pools are the label counts.
    counts = np.bincount(labels)
    class_budgets({c: int(n) for c, n in enumerate(counts) if n}, s.samples_per_class, s.fraction)


def export_coreset(s: ScoreOptions, record: Mapping[str, Any], ids: np.ndarray) -> str:
    """Choose the coreset from ``record``'s rankings, write its ids ascending to ``s.export_coreset``
    atomically, and return the line that says so."""
    ranked = record["indices"]
    budget = class_budgets({c: len(v) for c, v in ranked.items()}, s.samples_per_class, s.fraction)
    chosen = select_coreset(ranked, record["scores"], budget, s.order, int(record["options"]["seed"]), s.ccs_beta,
                            record["hard_end"])
    # A stage-1 file's ranked indices are its ids; a recorded file's are positions into its ids.
    kept = np.sort(ids[chosen]) if "train_ids" in record else chosen
    write_ids(s.export_coreset, kept, replace=s.overwrite)
    unit = "group" if "train_ids" in record else "class"
    words = (f"{s.samples_per_class} per {unit}" if s.samples_per_class is not None
             else f"{s.fraction:g} of each {unit}")
    return (f"coreset       {kept.size} ids ({words}, order {s.order}) written to {s.export_coreset}: the examples "
            "to keep")


def write_ids(path: str, ids: np.ndarray, replace: bool = True) -> None:
    """An int64 .npy (loads with ``allow_pickle=False``), or a .csv: the header ``id``, one id a line;
    ``replace=False``: only as a new file (of two racing writers, one succeeds)."""
    if path.endswith(".npy"):
        atomic_write(path, lambda f: np.save(f, np.asarray(ids, dtype=np.int64), allow_pickle=False), replace)
        return
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")  # quotes an id holding a comma, quote or newline
    writer.writerow(["id"])
    writer.writerows([str(i)] for i in ids.tolist())
    atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")), replace)


def default_export_path(score_path: str, ids_are_text: bool) -> str:
    """Where the printed next step writes the coreset: beside the score file."""
    stem = score_path[:-len(".pickle")] if score_path.endswith(".pickle") else score_path
    stem = stem[:-len("_scores")] if stem.endswith("_scores") else stem
    return f"{stem}_coreset{'.csv' if ids_are_text else '.npy'}"
