"""Coreset selection from a score file's per-class rankings (stage 3).

A score file ranks every class best first (utils/core/cld.py: the top is the end the method's
authors keep). A coreset takes ``budget[c]`` examples of every class c, from the end that
``order`` names:

* ``top``     the first k of the ranking (the paper's coreset for CLD);
* ``zero``    the k whose scores are closest to zero (smallest |score|; ties to the lower dataset
  index): for CLD the near-zero coreset of the paper's Figure 1;
* ``bottom``  the last k;
* ``middle``  the k around the median position of the ranking, positions ``(n - k) // 2`` ...
  ``(n - k) // 2 + k - 1`` (for CLD this is not near zero: most CLD scores are positive);
* ``random``  k drawn uniformly from the class's ranked pool (seeded, reproducible);
* ``ccs``     Coverage-centric Coreset Selection (Zheng et al., ICLR 2023): drop the hardest
  ``ccs_beta`` fraction of the class, split the remaining score range into 50 equal-width strata,
  spread the budget over the non-empty strata from the smallest up (each gets
  ``min(its size, remaining budget // remaining strata)``, as in the authors' ``bin_allocate``)
  and draw uniformly inside each stratum. Which end is "hardest" depends on the method
  (``Method.hard_end`` in ``utils.methods.registry``; score files record it as ``hard_end``).

Random draws use one generator per class seeded with ``(seed, class)``, so a class's draw does not
depend on which other classes are present. numpy only.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from utils.errors import UserError, is_int, require

ORDERS = ("top", "zero", "bottom", "middle", "random", "ccs")
CCS_STRATA = 50
SCORED_ORDERS = ("zero", "ccs")  # orders that read the scores, not only the ranking
_NEEDS_SCORES = ("order {order!r} needs per-example scores, and this score file lists indices only (a legacy "
                 "file of the paper's code); rescore with compute_cld_scores.py")


def class_budgets(pool_sizes: Mapping[int, int], samples_per_class: int | None = None,
                  fraction: float | None = None) -> dict[int, int]:
    """Per-class budgets from exactly one of ``samples_per_class`` or ``fraction``.

    Args:
        pool_sizes: {class: number of ranked examples of that class}.
        samples_per_class: the same k for every class (at most the class's size).
        fraction: in (0, 1]; k_c = round(fraction * size_c) (halves round up), at least 1.

    Raises:
        UserError: neither or both given, a bad value, or a budget larger than a class's pool.
    """
    require((samples_per_class is None) != (fraction is None),
            "give exactly one budget: --samples_per_class K or --fraction F")
    if samples_per_class is not None:
        require(is_int(samples_per_class) and samples_per_class >= 1,
                f"--samples_per_class must be a positive integer, got {samples_per_class!r}")
        budgets = {int(c): int(samples_per_class) for c in pool_sizes}
    else:
        require(isinstance(fraction, (int, float, np.floating)) and not isinstance(fraction, bool)
                and 0 < fraction <= 1, f"--fraction must be a number in (0, 1], got {fraction!r}")
        budgets = {int(c): fraction_k(fraction, n) for c, n in pool_sizes.items()}
    for c, k in budgets.items():
        n = int(pool_sizes[c])
        if k > n:
            raise UserError(f"class {c} has only {n} ranked examples, fewer than the {k} asked for; "
                            "lower --samples_per_class or use --fraction")
    return budgets


def budgets_of(values: list, flag: str = "--budgets") -> tuple[tuple[str, float], ...]:
    """Budgets (``--budgets``, ``--stability_k``) as ``('samples_per_class', k)`` (an integer) or
    ``('fraction', f)`` (below 1); a non-integer count is refused."""
    out = []
    for v in values:
        if v < 1:
            out.append(("fraction", float(v)))
        else:
            require(float(v).is_integer(), f"{flag} takes per-class counts (integers) or fractions below 1, got {v:g}")
            out.append(("samples_per_class", int(v)))
    return tuple(out)


def smallest_class(labels: np.ndarray) -> tuple[int, int]:
    """The class with the fewest examples among those present, and its size (ties: the lower class):
    the class a per-class count must fit."""
    sizes = np.bincount(np.asarray(labels))
    present = np.flatnonzero(sizes)
    smallest = int(present[np.argmin(sizes[present])])
    return smallest, int(sizes[smallest])


def fraction_k(fraction: float, size: int) -> int:
    """The budget of a class of ``size`` examples at ``fraction``: rounded, halves up, at least 1.
    Stage 3's coresets, the stability test and stage 2's suggested budget all count this way."""
    return max(1, int(np.floor(fraction * size + 0.5)))


def check_indices(ranked: Mapping[int, np.ndarray], n_train: int | None = None) -> None:
    """Every ranked index must lie in [0, n_train) and appear once over all classes.

    Raises:
        UserError naming the class and index; a violation means the score file belongs to another
        dataset (or was made from split positions instead of dataset indices).
    """
    parts = [(int(c), np.asarray(v, dtype=np.int64)) for c, v in ranked.items()]
    for c, idx in parts:
        if idx.size == 0:
            continue
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or (n_train is not None and hi >= n_train):
            bad = lo if lo < 0 else hi
            bound = f"[0, {n_train})" if n_train is not None else "non-negative integers"
            raise UserError(f"score file: class {c} lists index {bad}, outside the training set "
                            f"{bound}; the score file belongs to another dataset")
    if not parts:
        return
    all_idx = np.concatenate([idx for _, idx in parts])
    owner = np.concatenate([np.full(idx.size, c) for c, idx in parts])
    order = np.argsort(all_idx, kind="stable")
    srt = all_idx[order]
    dup = np.flatnonzero(srt[1:] == srt[:-1])
    if dup.size:
        i = dup[0]
        c1, c2 = owner[order[i]], owner[order[i + 1]]
        where = f"class {c1}" if c1 == c2 else f"classes {c1} and {c2}"
        raise UserError(f"score file: index {int(srt[i])} is listed twice ({where}); the file is corrupt")


def ccs_allocate(stratum_sizes: Sequence[int], budget: int) -> np.ndarray:
    """CCS budget split: visit non-empty strata from the smallest up (ties: lower stratum first);
    each takes min(its size, remaining budget // remaining strata). The total equals ``budget``
    whenever ``budget <= sum(stratum_sizes)`` (once a stratum is not exhausted, no later one is,
    and the last takes the remainder)."""
    sizes = np.asarray(stratum_sizes, dtype=np.int64)
    alloc = np.zeros_like(sizes)
    nonempty = [int(b) for b in np.argsort(sizes, kind="stable") if sizes[b] > 0]
    remaining = int(budget)
    for i, b in enumerate(nonempty):
        take = min(int(sizes[b]), remaining // (len(nonempty) - i))
        alloc[b] = take
        remaining -= take
    return alloc


def _ccs_class(idx: np.ndarray, sc: np.ndarray, k: int, rng: np.random.Generator, beta: float,
               hard_end: str, cls: int, strata: int) -> np.ndarray:
    n_drop = int(beta * idx.size)
    keep = slice(n_drop, None) if hard_end == "top" else slice(0, idx.size - n_drop)
    pool, pool_sc = idx[keep], np.asarray(sc[keep], dtype=np.float64)
    if k > pool.size:
        raise UserError(f"class {cls}: CCS with --ccs_beta {beta} keeps {pool.size} of {idx.size} examples, "
                        f"fewer than the budget {k}; lower --ccs_beta or the budget")
    lo, hi = float(pool_sc.min()), float(pool_sc.max())
    if hi > lo:
        stratum = np.minimum(((pool_sc - lo) / (hi - lo) * strata).astype(np.int64), strata - 1)
    else:
        stratum = np.zeros(pool.size, dtype=np.int64)
    alloc = ccs_allocate(np.bincount(stratum, minlength=strata), k)
    chosen = [rng.choice(pool[stratum == b], size=int(m), replace=False)
              for b, m in enumerate(alloc) if m > 0]
    return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)


def select_class(idx: np.ndarray, sc: np.ndarray | None, k: int, order: str = "top", seed: int = 0,
                 cls: int = 0, ccs_beta: float = 0.0, hard_end: str = "top",
                 strata: int = CCS_STRATA) -> np.ndarray:
    """Pick ``k`` of one class's ranked indices (best first) by ``order``; see the module doc."""
    idx = np.asarray(idx, dtype=np.int64)
    n = idx.size
    require(0 <= k <= n, f"class {cls} has only {n} ranked examples, fewer than the {k} asked for")
    if order in SCORED_ORDERS and sc is None:
        raise UserError(_NEEDS_SCORES.format(order=order))
    if order == "top":
        return idx[:k]
    if order == "bottom":
        return idx[n - k:]
    if order == "middle":
        start = (n - k) // 2
        return idx[start:start + k]
    if order == "zero":
        return idx[np.lexsort((idx, np.abs(np.asarray(sc, dtype=np.float64))))[:k]]
    rng = np.random.default_rng([int(seed), int(cls)])
    if order == "random":
        return idx[np.sort(rng.choice(n, size=k, replace=False))]
    if order == "ccs":
        return _ccs_class(idx, sc, k, rng, ccs_beta, hard_end, cls, strata)
    raise UserError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")


def select_coreset(ranked: Mapping[int, np.ndarray], scores: Mapping[int, np.ndarray] | None,
                   budget: Mapping[int, int], order: str = "top", seed: int = 0,
                   ccs_beta: float = 0.0, hard_end: str = "top") -> np.ndarray:
    """Choose a coreset: ``budget[c]`` examples of every class c in ``budget``.

    Args:
        ranked: {class: int64 dataset indices, best first} (a score file's ``indices``).
        scores: {class: scores aligned with ``ranked``}, or None (legacy score files).
        budget: {class: k}, e.g. from :func:`class_budgets`.
        order: one of :data:`ORDERS`.
        seed: seeds 'random' and 'ccs' (a non-negative integer).
        ccs_beta: fraction of each class's hardest examples that CCS drops, in [0, 1).
        hard_end: 'top' or 'bottom', the end of the ranking holding the hardest examples (CCS).

    Returns:
        int64 dataset indices of the coreset, sorted ascending.
    """
    require(order in ORDERS, f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    require(is_int(seed) and seed >= 0, f"--seed must be a non-negative integer, got {seed!r}")
    require(isinstance(ccs_beta, (int, float, np.floating)) and not isinstance(ccs_beta, bool)
            and 0 <= ccs_beta < 1, f"--ccs_beta must be a number in [0, 1), got {ccs_beta!r}")
    require(hard_end in ("top", "bottom"), f"hard_end must be 'top' or 'bottom', got {hard_end!r}")
    if order in SCORED_ORDERS and scores is None:
        raise UserError(_NEEDS_SCORES.format(order=order))
    parts = []
    for c, k in budget.items():
        c = int(c)
        if c not in ranked:
            raise UserError(f"class {c} has no ranking in the score file")
        sc = None if scores is None else scores.get(c)
        parts.append(select_class(ranked[c], sc, int(k), order, seed, c, ccs_beta, hard_end))
    if not parts:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(parts)).astype(np.int64)
