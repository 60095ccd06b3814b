"""CLD and the loss-trajectory arithmetic that stages 1 and 2 share: which recorded epochs to use,
the checks of a loss dict, class means, CLD from full trajectories and from running sums.

Implements CLD from *Coresets from Trajectories: Selecting Data via Correlation of Loss
Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025):

    CLD(z) = Pearson(Δ l_t(z), Δ V_t(class of z))   over the recorded epochs t

where l_t(z) is example z's loss after epoch t (eval mode, no augmentation) and V_t(c) the mean
loss of class c's validation examples; population std, and a constant side gives 0 (as the
paper's code). A score is one float64 per training column, aligned with
``losses["train_indices"]``; :func:`utils.core.ranking.rank_per_class` then orders each class from
the highest score down, so the top of CLD's ranking is the paper's coreset. numpy only: stage 2
must not pay for importing torch.

Memory: the loss matrix (E, N) float32 is the one big array. Scorers never materialise an
(E-1, N) float64 copy; they walk over column chunks of ~0.5 MB (ImageNet scale: 1.27M x 90 in
about a second, peak memory ~1.2x the loss file). CLD can also be computed from running sums
kept during training (:class:`cld_recorder.CLDSums`, O(N) memory whatever the number of epochs). The
per-class means, the correlation and the sums live in ``cld_recorder.py`` (the file a user's own
training loop records with), so that stage 1, stage 2 and the recorder share one implementation.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cld_recorder import (RecordError, check_validation_classes, class_means, population_corr,
                          zero_spread)
from utils.errors import UserError, require
from utils.files.losses import SIGNAL_KEYS

MIN_EPOCHS = 3                 # CLD needs >= 2 loss differences to correlate
# A vector whose std is below this fraction of its root-mean-square is constant up to rounding
# of its mean; like an exactly constant one (the paper's zero std) it correlates with nothing.
# Differences of float32 losses vary by >= 1e-8 of their size, far above this.
_ZERO_STD_RTOL = 1e-10
# Column chunk (elements of one float64 work array) for the streaming scorers: 512 KB, so that
# the few temporaries of a chunk stay in cache (measured: 2x faster than 8 MB chunks).
_CHUNK_ELEMS = 1 << 16

# ----------------------------------------------------------------------------- helpers


def chunk_size(n_rows: int) -> int:
    return max(256, _CHUNK_ELEMS // max(n_rows, 1))


def _epoch_name(losses: Mapping[str, Any], row: int) -> str:
    return f"epoch {int(losses['epoch'][row])}"


def check_finite(losses: Mapping[str, Any], key: str, rows: int | None = None) -> None:
    """Raise a user error naming the first epoch whose ``key`` values are NaN or infinite.

    Args:
        losses: the loss dict.
        key: 'tr_loss', 'val_loss' or a signal key.
        rows: check only the first ``rows`` epochs (e.g. EL2N's window); default all.
    """
    arr = losses[key]
    n = arr.shape[0] if rows is None else min(rows, arr.shape[0])
    for t in range(n):  # row by row: no (E, N) boolean temporary
        row = arr[t]
        if not np.isfinite(row).all():
            col = int(np.flatnonzero(~np.isfinite(row))[0])
            which = "validation" if key == "val_loss" else "training"
            idx_key = "val_indices" if key == "val_loss" else "train_indices"
            # --first_epochs t keeps the epochs before it, which CLD can score only from MIN_EPOCHS on
            before = (f"Score only the epochs before it with --first_epochs {t}, or rerun" if t >= MIN_EPOCHS
                      else "Too few epochs precede it to score; rerun")
            raise UserError(
                f"{key} holds NaN/inf at {_epoch_name(losses, t)} (first at {which} example "
                f"{int(losses[idx_key][col])}); the run diverged there. {before} stage 1 with a lower learning rate")


def check_labels(losses: Mapping[str, Any], num_classes: int | None = None) -> None:
    """Labels must be non-negative and, when ``num_classes`` is known, below it."""
    for key in ("tr_lbl", "val_lbl"):
        lbl = losses[key]
        if lbl.size == 0:
            continue
        lo, hi = int(lbl.min()), int(lbl.max())
        require(lo >= 0, f"loss file: {key!r} holds a negative class label ({lo})")
        if num_classes:
            require(hi < num_classes, f"loss file: {key!r} holds class {hi}, but the file declares "
                                      f"{num_classes} classes")
    require(losses["tr_lbl"].size > 0, "loss file has no training examples")


def select_epochs(losses: Mapping[str, Any], first_epochs: int = 0, epoch_stride: int = 1) -> dict:
    """Keep the recorded epochs to score: the first ``first_epochs`` (0: all), then every
    ``epoch_stride``-th of those, starting with the first. Returns a shallow copy whose per-epoch
    arrays are row *views* (no copy of the loss matrix).
    """
    n_rec = int(losses["tr_loss"].shape[0])
    require(first_epochs <= n_rec, f"--first_epochs {first_epochs} asks for more epochs than the loss file "
                                   f"records ({n_rec})")
    rows = slice(0, first_epochs or n_rec, epoch_stride)
    out = dict(losses)
    for key in ("epoch", "tr_loss", "val_loss") + SIGNAL_KEYS:
        if out.get(key) is not None:
            out[key] = losses[key][rows]
    kept = int(out["epoch"].shape[0])
    if kept < MIN_EPOCHS:
        if first_epochs == 0 and epoch_stride == 1:
            raise UserError(f"the loss file records {kept} epoch(s); scoring needs at least {MIN_EPOCHS} "
                            "(train longer in stage 1)")
        raise UserError(f"--first_epochs {first_epochs} --epoch_stride {epoch_stride} keeps {kept} of the "
                        f"{n_rec} recorded epochs; scoring needs at least {MIN_EPOCHS}")
    return out


# ----------------------------------------------------------------------------- scorers

def class_mean_val_loss(losses: Mapping[str, Any], classes: np.ndarray) -> np.ndarray:
    """(E, C) mean validation loss per class and epoch, C = max label + 1; every class in
    ``classes`` must have a validation example."""
    val, val_lbl = losses["val_loss"], losses["val_lbl"]
    n_cls = int(max(classes.max(initial=-1), val_lbl.max(initial=-1))) + 1
    counts = np.bincount(val_lbl, minlength=n_cls)
    try:
        check_validation_classes(classes, counts)
    except RecordError as exc:  # stage 2 reports it as any other user error
        raise UserError(str(exc)) from None
    return np.stack([class_means(val[t], val_lbl, counts) for t in range(val.shape[0])])


def cld(losses: Mapping[str, Any], **_: Any) -> np.ndarray:
    """CLD(z) = Pearson(Δ l_t(z), Δ V_t(class of z)), population std, constant side -> 0."""
    check_finite(losses, "tr_loss")
    check_finite(losses, "val_loss")
    tr, lbl = losses["tr_loss"], losses["tr_lbl"]
    n_ep, n = tr.shape
    classes = np.unique(lbl)
    dv = np.diff(class_mean_val_loss(losses, classes), axis=0)       # (E-1, C) float64
    dvc = dv - dv.mean(axis=0)
    syy = np.einsum("tc,tc->c", dvc, dvc)
    y_zero = zero_spread(syy, n_ep - 1, dv.mean(axis=0))
    dvc_t = np.ascontiguousarray(dvc.T)                              # (C, E-1): gather rows per example

    out = np.empty(n)
    step = chunk_size(n_ep)
    for s in range(0, n, step):
        cols = slice(s, min(s + step, n))
        # float32 losses -> float64 differences, exactly as the paper's float64 np.diff
        x = np.subtract(tr[1:, cols], tr[:-1, cols], dtype=np.float64)   # (E-1, c)
        mean = x.mean(axis=0)
        x -= mean
        sxx = np.einsum("tj,tj->j", x, x)
        y = dvc_t[lbl[cols]]                                           # (c, E-1)
        sxy = np.einsum("tj,jt->j", x, y)
        x_zero = zero_spread(sxx, n_ep - 1, mean)
        out[cols] = population_corr(sxy, sxx, syy[lbl[cols]], x_zero, y_zero[lbl[cols]])
    return out
