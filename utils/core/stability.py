"""How early the ranking settles: a method's coresets from the first E recorded epochs against those
from all of them (``compute_cld_scores.py --stability``), and the test by which stage 1 stops once
CLD's coreset no longer changes (``get_loss_values.py --stop_when_stable``). numpy only.

For each E of a grid of epochs, per class: the Jaccard index of the top-k sets (k per class, or a
fraction of each class) of the two rankings, its mean and minimum over classes, and the Spearman
correlation of the two score vectors over all examples. The paper states that CLD "is stable when
using only early checkpoints"; these numbers say when, for a given run.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from utils.errors import UserError
from utils.core.ranking import rank_per_class
from utils.core.cld import MIN_EPOCHS, select_epochs
from utils.core.selection import fraction_k, smallest_class

STABILITY_COLUMNS = ("epochs", "k", "mean_jaccard", "min_jaccard", "spearman")


def default_grid(n_epochs: int) -> list[int]:
    """Every 10% of a run of ``n_epochs`` recorded epochs (at least :data:`MIN_EPOCHS`), the last one included."""
    return sorted({max(MIN_EPOCHS, min(n_epochs, int(round(f * n_epochs)))) for f in np.arange(1, 11) / 10})


def top_k(ranked: Mapping[int, np.ndarray], budget: float) -> dict[int, np.ndarray]:
    """Each class's top k: ``budget`` examples (an integer of 1 or more) or that fraction of the class
    (below 1; at least one)."""
    out = {}
    for c, idx in ranked.items():
        k = int(budget) if budget >= 1 else fraction_k(budget, len(idx))
        out[c] = np.asarray(idx[:min(k, len(idx))])
    return out


def jaccard(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray]) -> dict[int, float]:
    """Per class, |A & B| / |A | B| of two selections."""
    out = {}
    for c in a:
        sa, sb = set(np.asarray(a[c]).tolist()), set(np.asarray(b.get(c, ())).tolist())
        out[c] = len(sa & sb) / len(sa | sb) if sa | sb else 1.0
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, ties given their average rank."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(len(x))
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # each run of ties: its average rank
    return ranks


def _centred_ranks(x: np.ndarray) -> np.ndarray:
    ranks = _ranks(np.asarray(x, np.float64))
    return ranks - ranks.mean()


def _correlation(ra: np.ndarray, rb: np.ndarray) -> float:
    """Pearson's r of two centred vectors; 0 when either is constant."""
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson on average ranks); 0 when either side is constant."""
    return _correlation(_centred_ranks(a), _centred_ranks(b))


def stability(losses: dict, scorer: Callable[[dict], np.ndarray], grid: Sequence[int],
              budgets: Sequence[float], full: np.ndarray | None = None) -> list[dict]:
    """Rows of :data:`STABILITY_COLUMNS`: for each E of ``grid`` and each budget, the agreement of the
    ranking from the first E recorded epochs with the ranking from all of them (``full``: those
    scores, when the caller has them already)."""
    n = int(losses["tr_loss"].shape[0])
    check_grid(grid, n)
    labels, indices = losses["tr_lbl"], losses["train_indices"]
    full = scorer(losses) if full is None else full
    ranked_full, _ = rank_per_class(full, labels, indices)
    full_ranks = _centred_ranks(full)  # ranked once, not once per E
    rows = []
    for e in grid:
        if e == n:
            ranked, rho = ranked_full, _correlation(full_ranks, full_ranks)
        else:
            early = scorer(select_epochs(losses, e))
            ranked, _ = rank_per_class(early, labels, indices)
            rho = _correlation(_centred_ranks(early), full_ranks)
        for budget in budgets:
            j = np.array(list(jaccard(top_k(ranked, budget), top_k(ranked_full, budget)).values()))
            rows.append({"epochs": int(e), "k": budget_text(budget), "mean_jaccard": float(j.mean()),
                         "min_jaccard": float(j.min()), "spearman": rho})
    return rows


def check_grid(grid: Sequence[int], n_epochs: int) -> None:
    """Every E of the grid is a number of recorded epochs that CLD can score."""
    bad = [e for e in grid if not MIN_EPOCHS <= e <= n_epochs]
    if bad:
        raise UserError(f"--stability_epochs {bad[0]} is not a number of recorded epochs between {MIN_EPOCHS} and "
                        f"{n_epochs}")


def check_budgets_below_classes(budgets: Sequence[float], labels: np.ndarray, flag: str) -> None:
    """A per-class count must leave every class something outside its top k: a count as large as a
    class makes that class's overlap 1.0 at every epoch, so the test would say "stable" from the start."""
    smallest, size = smallest_class(labels)
    for budget in budgets:
        if budget >= 1 and budget >= size:
            raise UserError(f"{flag} {budget:g} is not smaller than class {smallest} ({size} training "
                            "examples): its coreset would be the whole class at every epoch, so its overlap is "
                            "always 1.0; give a smaller count or a fraction below 1")


def budget_words(budget: float) -> str:
    """``5 per class`` or ``10% of each class``."""
    return f"{int(budget)} per class" if budget >= 1 else f"{budget:.0%} of each class"


def budget_text(budget: float) -> str:
    """``5`` (per class) or ``0.1`` (a fraction), as the CSV and the table write a budget."""
    return str(int(budget)) if budget >= 1 else f"{budget:g}"


class StopRule:
    """Stage 1's ``--stop_when_stable J``: at every check, the per-class top-k coreset from the CLD so
    far is compared with the previous check's; the run stops at the second check in a row whose
    mean Jaccard is at least J. Its state (the previous coreset and the streak) is checkpointed, so
    a resumed run continues the same test."""

    def __init__(self, threshold: float, every: int, budget: float):
        self.threshold, self.every, self.budget = threshold, every, budget
        self.previous: dict[int, np.ndarray] | None = None
        self.streak = 0
        self.last: float | None = None

    def due(self, epochs: int) -> bool:
        return epochs >= MIN_EPOCHS and epochs % self.every == 0

    def check(self, scores: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> bool:
        """Take the CLD after a due epoch; True when the run is to stop."""
        ranked, _ = rank_per_class(scores, labels, indices)
        current = top_k(ranked, self.budget)
        if self.previous is not None:
            self.last = float(np.mean(list(jaccard(current, self.previous).values())))
            self.streak = self.streak + 1 if self.last >= self.threshold else 0
        self.previous = current
        return self.streak >= 2

    def state(self) -> dict:
        return {"streak": self.streak, "last": self.last,
                "previous": None if self.previous is None else {str(c): v.tolist() for c, v in self.previous.items()}}

    def restore(self, state: dict, path: str) -> None:
        try:
            self.streak = int(state["streak"])
            self.last = None if state["last"] is None else float(state["last"])
            previous = state["previous"]
            self.previous = None if previous is None else {int(c): np.asarray(v, np.int64) for c, v in previous.items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UserError(f"checkpoint {path}: its --stop_when_stable state is corrupt; start over with "
                            "--overwrite") from None
