"""The record of one scoring method: what it reads, what the top of its ranking means, its options,
and the function that scores.

Torch-free: the command line reads every record (names, options) before torch is imported, so a
method module imports torch inside the functions that compute, never at its top.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from utils.errors import UserError

SELECTION_EPOCH = 40  # DeepCore's selection_epochs: the snapshot taken when a run kept several
# Stage-2 flags every trajectory method reads (which recorded epochs to use).
EPOCH_OPTIONS = ("first_epochs", "epoch_stride")
# Stage-2 flags every model method reads (which weights, how to evaluate).
MODEL_OPTIONS = ("snapshot_epoch", "collect_precision", "selection_model")


@dataclass(frozen=True)
class Method:
    """One scoring method.

    Args:
        name: the ``--method`` value.
        family: 'trajectory' or 'model'.
        inputs: trajectory methods: the loss-file arrays read; model methods: the features read
            ('embeddings', 'probs', 'grads', 'logits'), or 'model' for the network itself (its
            scorer then evaluates the whole training split, not one class's features).
        top_means: what the top of each class's ranking is.
        hard_end: 'top' or 'bottom', the end holding the hardest examples.
        score: trajectory methods: ``score(losses, **options)``, one float64 score per training
            column of the loss dict; model methods: ``score(features, **options)`` on one class's
            :class:`utils.methods.features.ClassFeatures`, scores (higher first) or a greedy
            ``(order, gains)``; a method reading ``model``: ``score(model, source, indices,
            batch_size, device, precision, **options)``, one value per index (smaller first).
        options: the stage-2 flags the method reads (recorded in the score file).
        greedy: the ranking is a greedy order and the scores are the greedy gains.
        validation: a model method that also reads the validation split's features (unless its
            ``gradient_target`` is ``train``).
        run_defaults: ``(option, stage-1 config key)`` pairs: an option left unset takes the value
            the stage-1 run was trained with.
        paper: where it comes from.
        weights: weighted methods only (DeepCore's CRAIG and GradMatch): ``weights(features,
            selected, **options)``, the per-example weights of a selection; stage 3 then trains
            its coresets with them.
    """
    name: str
    family: str
    inputs: tuple[str, ...]
    top_means: str
    hard_end: str
    score: Callable[..., Any]
    options: tuple[str, ...] = ()
    greedy: bool = False
    validation: bool = False
    run_defaults: tuple[tuple[str, str], ...] = ()
    paper: str = ""
    weights: Callable[..., Any] | None = None

    @property
    def uses_model(self) -> bool:
        return self.family == "model"

    @property
    def weighted(self) -> bool:
        """Its coresets carry per-example weights, and stage 3 trains them weighted."""
        return self.weights is not None


def trajectory_method(name: str, inputs: tuple[str, ...], top_means: str, hard_end: str,
                      score: Callable[..., Any], options: tuple[str, ...] = (), paper: str = "") -> Method:
    """A method that scores the loss trajectories of the stage-1 run (numpy only)."""
    return Method(name, "trajectory", inputs, top_means, hard_end, score, EPOCH_OPTIONS + options, paper=paper)


def model_method(name: str, inputs: tuple[str, ...], top_means: str, hard_end: str, score: Callable[..., Any],
                 options: tuple[str, ...] = (), greedy: bool = False, validation: bool = False,
                 run_defaults: tuple[tuple[str, str], ...] = (), paper: str = "",
                 weights: Callable[..., Any] | None = None) -> Method:
    """A method that scores from a weight snapshot of the stage-1 run (its features or the network)."""
    extra = ("budgets",) if weights is not None else ()
    return Method(name, "model", inputs, top_means, hard_end, score, MODEL_OPTIONS + options + extra, greedy,
                  validation, run_defaults, paper, weights)


def default_snapshot(kept: list[int], epochs: int, run: str) -> int:
    """The weights a model method scores from when ``--snapshot_epoch`` is not given: the one
    snapshot the run kept; of several, DeepCore's 40-epoch one (else a user error naming them);
    with none, the final weights (after ``epochs``)."""
    if not kept:
        return epochs
    if len(kept) == 1:
        return kept[0]
    if SELECTION_EPOCH in kept:
        return SELECTION_EPOCH
    raise UserError(f"{run} kept weight snapshots after epochs {', '.join(map(str, kept))}; choose the weights "
                    f"with --snapshot_epoch (one of those, or {epochs} for the final weights)")
