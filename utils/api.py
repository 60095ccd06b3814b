"""The library functions a researcher calls from their own code (docs/api.md).

* :func:`cld`: CLD scores from their own per-epoch loss arrays (numpy only);
* :func:`rank`: per-class rankings from any per-example scores;
* :func:`baseline`: a DeepCore baseline's per-class ranking from their own embeddings and
  logits (or probabilities);
* :func:`baseline_from_trajectories`: a training-dynamics baseline's per-class ranking (forgetting,
  EL2N, AUM, mean loss, dynamic uncertainty) from their own per-epoch arrays;
* :func:`select`: a coreset from per-class rankings, at a budget and an order.

Each computes exactly what the stages compute (the same functions run underneath); each checks
its inputs first, in memory of the inputs' size, and raises ``ValueError`` naming what is wrong
(NaN or overflowing values, labels or indices that are not non-negative int64, an index listed
twice, mismatched lengths, an unknown method) instead of failing deep inside (docs/api.md).
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

from utils.errors import UserError
from utils.methods import registry as methods
from utils.core import cld as trajectory
from utils.core.ranking import rank_per_class
from utils.core.selection import SCORED_ORDERS, class_budgets, select_coreset

F = TypeVar("F", bound=Callable[..., Any])


# The stages' messages speak of command-line flags and files; through the API they name the
# function's arguments instead (the shared functions underneath keep the stages' wording).
_API_WORDS: tuple[tuple[str, str], ...] = (
    (r"--samples_per_class K(?: \(or --topk_per_class K\))? or --fraction F", "samples_per_class or fraction"),
    (r"needs per-example scores, and this score file lists indices only \(a legacy file of the paper's code\); "
     r"rescore with compute_cld_scores\.py", "needs per-example scores: pass scores= (the aligned scores that "
     "api.rank, api.baseline and api.baseline_from_trajectories return)"),
    (r" \(stage 1: a larger val_split_ratio\)", ""),
    (r";? ?(?:rerun|Rerun) stage 1 with a larger val_split_ratio", ""),
    (r"--(samples_per_class|fraction|order|seed|ccs_beta|el2n_epochs|dyn_unc_window)\b", r"\1"),
    (r" in the score file\b", " in ranked"),
)


def api_message(message: str) -> str:
    """A stage's user error in the API's terms: arguments, not command-line flags or files."""
    for pattern, replacement in _API_WORDS:
        message = re.sub(pattern, replacement, message)
    return message


def _value_errors(fn: F) -> F:
    """Report the stages' user errors as ``ValueError`` (what a Python caller expects), in the
    API's terms (:func:`api_message`)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise ValueError(api_message(str(exc))) from None
    return wrapper  # type: ignore[return-value]


_INT64_MAX = np.iinfo(np.int64).max
# Features above this magnitude are refused: float32 arithmetic (the methods run in float32)
# overflows to inf and then NaN near 3.4e38, after a square (1e30) summed over up to 1e8 entries
# (dimensions times examples); real embeddings and logits are many orders of magnitude smaller.
MAX_FEATURE = 1e15
# Losses are taken as float32, as stage 1 records them: beyond this they would become inf.
MAX_LOSS = float(np.finfo(np.float32).max)


def _integers(values: Any, what: str, noun: str, nouns: str, n: int | None = None) -> np.ndarray:
    """A 1-D array of non-negative integers as int64, refusing every dtype or value that would not
    come through unchanged: floats (truncated), bools, objects, uint64 of 2**63 and more (they
    would wrap to negative numbers)."""
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"{what} must be a 1-D array of integer {nouns}, got {arr.dtype} of shape {arr.shape}")
    if arr.size and arr.dtype.kind == "u" and arr.max() > _INT64_MAX:
        raise ValueError(f"{what} holds {noun} {int(arr.max())}, beyond int64's 2**63 - 1 (it would wrap to a "
                         "negative number)")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what} holds a negative {noun} ({int(arr.min())})")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{what} has {arr.shape[0]} entries but there are {n} examples")
    return arr.astype(np.int64)


def _labels(labels: Any, what: str, n: int | None = None) -> np.ndarray:
    """Class labels: any non-negative int64 (nothing is sized by their values, see :func:`cld`)."""
    return _integers(labels, what, "class label", "class labels", n)


def _matrix(values: Any, what: str, rows: int | None = None, limit: float = MAX_FEATURE,
            columns: int | None = None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.dtype.kind not in "iuf":
        raise ValueError(f"{what} must be a 2-D array of numbers, got {arr.dtype} of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    if arr.size and float(np.abs(arr).max()) > limit:
        raise ValueError(f"{what} holds a value of magnitude {float(np.abs(arr).max()):.3g}, beyond {limit:.3g}, where "
                         "float32 arithmetic overflows to inf and NaN; scale it down")
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"{what} has {arr.shape[0]} rows but there are {rows} examples")
    if columns is not None and arr.shape[1] != columns:
        raise ValueError(f"{what} has {arr.shape[1]} columns (examples) but there are {columns} labels")
    if columns is not None and arr.shape[0] < 1:
        raise ValueError(f"{what} has no epochs (rows)")
    return arr


def _indices(indices: Any, n: int) -> np.ndarray:
    if indices is None:
        return np.arange(n, dtype=np.int64)
    arr = _integers(indices, "indices", "dataset index", "dataset indices", n)
    _once(arr, "indices")
    return arr


def _once(arr: np.ndarray, what: str, owners: np.ndarray | None = None) -> None:
    """Every index listed once (sorting: memory of the input's size, whatever the values)."""
    order = np.argsort(arr, kind="stable")
    twice = np.flatnonzero(arr[order][1:] == arr[order][:-1])
    if twice.size:
        i = order[twice[0] + 1]
        first, second = (int(owners[order[twice[0]]]), int(owners[i])) if owners is not None else (0, 0)
        where = "" if owners is None else f" (in class {first})" if first == second else \
            f" (in class {first} and class {second})"
        raise ValueError(f"{what} lists example {int(arr[i])} twice{where}")


def _compressed(tr_lbl: np.ndarray, val_lbl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The labels renumbered 0..C-1 in their order (C distinct labels): CLD sizes per-class arrays
    by the largest label, so a label of 2e8 among 60 examples would allocate gigabytes. The
    scores are the same (a class's examples and validation mean are what they were)."""
    missing = np.setdiff1d(tr_lbl, val_lbl)
    if missing.size:
        shown = ", ".join(str(int(c)) for c in missing[:10]) + (" ..." if missing.size > 10 else "")
        raise ValueError(f"class {shown} has training examples but no validation example, so its CLD is undefined; "
                         "give every class validation examples")
    _, inverse = np.unique(np.concatenate([tr_lbl, val_lbl]), return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    return inverse[:tr_lbl.size], inverse[tr_lbl.size:]


@_value_errors
def cld(train_losses: Any, train_labels: Any, val_losses: Any, val_labels: Any) -> np.ndarray:
    """CLD of every training example (Nagaraj, Ravikumar, Roy, TMLR 2025).

    CLD(z) = Pearson( Δ l_t(z), Δ V_t(c) ) over the E-1 consecutive differences, V_t(c) the mean
    validation loss of z's class c after epoch t; population std; a constant side gives 0.

    Args:
        train_losses: (E, N) loss of each training example after each of E >= 3 epochs.
        train_labels: (N,) integer class of each training example.
        val_losses: (E, V) loss of each held-out validation example after each epoch.
        val_labels: (V,) their classes; every class of ``train_labels`` needs one at least.

    Returns:
        (N,) float64 CLD scores; higher is better (the paper keeps the top of each class).
    """
    tr = _matrix(train_losses, "train_losses", limit=MAX_LOSS).astype(np.float32, copy=False)
    val = _matrix(val_losses, "val_losses", limit=MAX_LOSS).astype(np.float32, copy=False)
    if val.shape[0] != tr.shape[0]:
        raise ValueError(f"train_losses has {tr.shape[0]} epochs (rows) but val_losses has {val.shape[0]}")
    if tr.shape[0] < trajectory.MIN_EPOCHS:
        raise ValueError(f"CLD needs at least {trajectory.MIN_EPOCHS} epochs (rows), got {tr.shape[0]}")
    tr_lbl, val_lbl = _compressed(_labels(train_labels, "train_labels", tr.shape[1]),
                                  _labels(val_labels, "val_labels", val.shape[1]))
    losses = {"epoch": np.arange(tr.shape[0]), "tr_loss": tr, "val_loss": val, "tr_lbl": tr_lbl, "val_lbl": val_lbl,
              "train_indices": np.arange(tr.shape[1]), "val_indices": np.arange(val.shape[1])}
    return trajectory.cld(losses)


@_value_errors
def rank(scores: Any, labels: Any, indices: Any = None) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Rank every class from the highest score down, ties to the lower index.

    Args:
        scores: (N,) one score per example (higher = ranked first).
        labels: (N,) integer classes.
        indices: (N,) the examples' dataset indices (default 0..N-1).

    Returns:
        ``(ranked, aligned)``: {class: indices best first} and {class: their scores}.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or not np.isfinite(values).all():
        raise ValueError("scores must be a 1-D array of finite numbers")
    labels = _labels(labels, "labels", values.shape[0])
    return rank_per_class(values, labels, _indices(indices, values.shape[0]))


BASELINE_INPUTS = ("embeddings", "probs", "grads", "logits")


@_value_errors
def baseline(method: str, labels: Any, *, embeddings: Any = None, logits: Any = None, probs: Any = None,
             indices: Any = None, val_labels: Any = None, val_embeddings: Any = None, val_logits: Any = None,
             seed: int = 0, cal_neighbors: int = 10, glister_eta: float = 0.1
             ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """A model-based baseline's per-class ranking from your own features, as stage 2 ranks it.

    Args:
        method: a model method but DeepFool (docs/methods.md), e.g. ``"herding"``, ``"margin"``.
        labels: (N,) integer classes.
        embeddings: (N, D) penultimate-layer features (herding, kcenter, cal, moderate, gradients).
        logits: (N, C) the model's logits (the probability and gradient methods).
        probs: (N, C) probabilities instead of logits (they are taken as log-probabilities).
        indices: (N,) dataset indices (default 0..N-1); ties go to the lower one.
        val_labels, val_embeddings, val_logits: the validation examples (GradMatch, GLISTER).
        seed: the first centre of kcenter and contextual_diversity.
        cal_neighbors: CAL's nearest neighbours.
        glister_eta: GLISTER's step size.

    Returns:
        ``(ranked, scores)``: {class: indices best first} and {class: the scores, or for greedy
        methods the gains of each step}.
    """
    import torch

    from utils.methods.features import Features
    from utils.scoring import snapshot

    record = methods.get(method)
    if not record.uses_model or not set(record.inputs) <= set(BASELINE_INPUTS):
        usable = [m.name for m in methods.METHODS.values() if m.uses_model and set(m.inputs) <= set(BASELINE_INPUTS)]
        raise ValueError(f"method {record.name!r} is not ranked from features; choose one of {', '.join(usable)}")
    labels = _labels(labels, "labels")
    n = labels.shape[0]
    if probs is not None:
        if logits is not None:
            raise ValueError("give logits or probs, not both")
        p = _matrix(probs, "probs", n)
        if (p < 0).any():
            raise ValueError("probs holds negative values")
        logits = np.log(np.maximum(p, np.finfo(np.float32).tiny))

    def features(lbl: np.ndarray, emb: Any, lgt: Any, part: str) -> Features:
        needs_emb = bool({"embeddings", "grads"} & set(record.inputs))
        needs_lgt = bool({"probs", "grads", "logits"} & set(record.inputs))
        if needs_emb and emb is None:
            raise ValueError(f"{record.name} reads {part}embeddings")
        if needs_lgt and lgt is None:
            raise ValueError(f"{record.name} reads {part}logits (or probs)")
        e = _matrix(emb, f"{part}embeddings", len(lbl)) if emb is not None else np.zeros((len(lbl), 0))
        z = _matrix(lgt, f"{part}logits", len(lbl)) if lgt is not None else np.zeros((len(lbl), 1))
        if lgt is not None and lbl.size and lbl.max() >= z.shape[1]:
            raise ValueError(f"{part}labels go up to class {int(lbl.max())} but {part}logits have {z.shape[1]} columns")
        return Features(torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(e, dtype=torch.float32),
                        torch.as_tensor(lbl))

    feats = features(labels, embeddings, logits, "")
    vfeats = None
    if record.validation:
        if val_labels is None:
            raise ValueError(f"{record.name} reads validation examples: give val_labels, val_embeddings, val_logits")
        vlabels = _labels(val_labels, "val_labels")
        missing = sorted(set(labels.tolist()) - set(vlabels.tolist()))
        if missing:
            raise ValueError(f"class {missing[0]} has no validation example; {record.name} needs one in every class")
        vfeats = features(vlabels, val_embeddings, val_logits, "val_")
    losses = {"train_indices": _indices(indices, n), "tr_lbl": labels,
              "val_lbl": vlabels if vfeats is not None else np.zeros(0, np.int64)}
    options = {"seed": int(seed), "cal_neighbors": int(cal_neighbors), "glister_eta": float(glister_eta)}
    return snapshot.rank_classes(record, feats, vfeats, losses, options, snapshot.full_gradients(feats))[:2]


# The training-dynamics baselines: each argument of baseline_from_trajectories and the loss-file
# key its method reads.
TRAJECTORY_INPUTS = {"losses": "tr_loss", "correct": "tr_correct", "el2n": "tr_el2n", "margin": "tr_margin"}


@_value_errors
def baseline_from_trajectories(method: str, labels: Any, *, losses: Any = None, correct: Any = None,
                               el2n: Any = None, margin: Any = None, indices: Any = None, el2n_epochs: int = 20,
                               dyn_unc_window: int = 10) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """A training-dynamics baseline's per-class ranking from your own per-epoch arrays, as stage 2
    ranks it from a loss file (the same method modules run underneath).

    Args:
        method: ``"forgetting"`` (reads ``correct``), ``"el2n"`` (``el2n``), ``"aum"`` (``margin``),
            ``"loss"`` or ``"dyn_unc"`` (``losses``).
        labels: (N,) integer classes.
        losses: (E, N) loss of each training example after each epoch.
        correct: (E, N) whether each example was classified correctly after each epoch (bool, or 0/1).
        el2n: (E, N) ||softmax - onehot||_2 of each example after each epoch.
        margin: (E, N) the logit of the label minus the largest other logit, after each epoch.
        indices: (N,) dataset indices (default 0..N-1); ties go to the lower one.
        el2n_epochs: EL2N averages over the first this-many epochs.
        dyn_unc_window: dynamic uncertainty's window of consecutive epochs.

    Returns:
        ``(ranked, scores)``: {class: indices best first} and {class: their scores}; the top of a
        ranking is what the method's authors keep (most forgotten, highest EL2N, highest AUM).
    """
    record = methods.get(method)
    usable = [m.name for m in methods.METHODS.values() if m.family == "trajectory" and m.inputs
              and set(m.inputs) <= set(TRAJECTORY_INPUTS.values())]
    if record.name not in usable:
        raise ValueError(f"method {record.name!r} is not ranked from per-epoch arrays here; choose one of "
                         f"{', '.join(usable)} (CLD: api.cld, then api.rank)")
    given = {"losses": losses, "correct": correct, "el2n": el2n, "margin": margin}
    labels = _labels(labels, "labels")
    n = labels.shape[0]
    arrays: dict[str, np.ndarray] = {}
    for name, key in TRAJECTORY_INPUTS.items():
        if key in record.inputs:
            if given[name] is None:
                raise ValueError(f"{record.name} reads {name}: an (epochs, examples) array")
            arrays[key] = _epoch_matrix(given[name], name, n)
    extra = sorted(name for name, key in TRAJECTORY_INPUTS.items() if given[name] is not None and key not in arrays)
    if extra:
        raise ValueError(f"{record.name} does not read {', '.join(extra)}; give only what it reads")
    for name, value in (("el2n_epochs", el2n_epochs), ("dyn_unc_window", dyn_unc_window)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    epochs = next(iter(arrays.values())).shape[0]
    loss_dict = {"epoch": np.arange(epochs), "tr_lbl": labels, "train_indices": _indices(indices, n), **arrays}
    values = record.score(loss_dict, el2n_epochs=int(el2n_epochs), dyn_unc_window=int(dyn_unc_window))
    return rank_per_class(values, labels, loss_dict["train_indices"])


def _epoch_matrix(values: Any, name: str, n: int) -> np.ndarray:
    """An (epochs, N) array as stage 1 records it: ``correct`` as bool, the rest float32."""
    if name != "correct":
        return _matrix(values, name, limit=MAX_LOSS, columns=n).astype(np.float32, copy=False)
    arr = np.asarray(values)
    if arr.ndim != 2 or (arr.size and arr.dtype.kind not in "biu"):
        raise ValueError(f"correct must be a 2-D array of bools (or 0/1), got {arr.dtype} of shape {arr.shape}")
    if arr.dtype.kind != "b" and arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError("correct holds values other than 0 and 1 (True and False)")
    if arr.shape[1] != n:
        raise ValueError(f"correct has {arr.shape[1]} columns (examples) but there are {n} labels")
    if arr.shape[0] < 1:
        raise ValueError("correct has no epochs (rows)")
    return arr.astype(bool)


@_value_errors
def select(ranked: Mapping[int, Any], *, samples_per_class: int | None = None, fraction: float | None = None,
           order: str = "top", scores: Mapping[int, Any] | None = None, seed: int = 0, ccs_beta: float = 0.0,
           hard_end: str = "top") -> np.ndarray:
    """A coreset: the same budget of every class, taken from its ranking as ``order`` says.

    Args:
        ranked: {class: indices best first}, from :func:`rank`, :func:`baseline` or a score file's
            ``indices``.
        samples_per_class: k examples of every class; or
        fraction: round(fraction x class size) of every class (at least 1).
        order: top, zero (smallest |score|), bottom, middle, random or ccs (docs/methods.md).
        scores: {class: scores aligned with ``ranked``}; needed by zero and ccs.
        seed: the draw of random and ccs.
        ccs_beta: ccs: share of each class's hardest examples dropped first.
        hard_end: ccs: the end of a ranking holding the hardest examples (top or bottom).

    Returns:
        The coreset's indices, sorted ascending.
    """
    ranked = _ranked(ranked)
    budget = class_budgets({c: len(v) for c, v in ranked.items()}, samples_per_class=samples_per_class,
                           fraction=fraction)
    if scores is not None:
        scores = _aligned_scores(scores, ranked, finite=order in SCORED_ORDERS)
    return select_coreset(ranked, scores, budget, order, seed, ccs_beta, hard_end)


def _class(key: Any) -> int:
    """A class key: a non-negative integer (a float or a string would be truncated or misread)."""
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)) or not 0 <= key <= _INT64_MAX:
        raise ValueError(f"class key {key!r} is not a class label (a non-negative integer)")
    return int(key)


def _ranked(ranked: Mapping[int, Any]) -> dict[int, np.ndarray]:
    """{class: int64 indices}, each index non-negative and listed once over all classes, as the
    stages require of a score file."""
    if not isinstance(ranked, Mapping):
        raise ValueError(f"ranked must be a mapping {{class: indices best first}}, got {type(ranked).__name__}")
    out = {_class(c): _integers(v, f"the ranking of class {c}", "dataset index", "dataset indices")
           for c, v in ranked.items()}
    if out:
        _once(np.concatenate(list(out.values())), "ranked",
              np.concatenate([np.full(len(v), c, dtype=np.int64) for c, v in out.items()]))
    return out


def _aligned_scores(scores: Mapping[int, Any], ranked: dict[int, np.ndarray], finite: bool) -> dict[int, np.ndarray]:
    """{class: float64 scores} aligned with ``ranked``; NaN is never a score, and an order that
    reads the scores (zero, ccs) needs them finite (a greedy method's infinite gains are not)."""
    if not isinstance(scores, Mapping):
        raise ValueError(f"scores must be a mapping {{class: scores}}, got {type(scores).__name__}")
    out = {}
    for c, v in scores.items():
        arr = np.asarray(v)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iuf"):
            raise ValueError(f"the scores of class {c!r} must be a 1-D array of numbers, got {arr.dtype} of shape "
                             f"{arr.shape}")
        out[_class(c)] = arr.astype(np.float64)
    for c, idx in ranked.items():
        if c not in out or out[c].shape != idx.shape:
            raise ValueError(f"the scores of class {c} are not aligned with its ranking")
        if np.isnan(out[c]).any() or (finite and not np.isfinite(out[c]).all()):
            raise ValueError(f"the scores of class {c} hold NaN{' or infinite' if finite else ''} values")
    return out
