"""The scoring methods of stage 2, one record each, registered in one place (like ``models/``).

Two families write the same score file:

* trajectory methods score the loss trajectories of the stage-1 run (numpy only, no torch):
  CLD and the training-dynamics baselines;
* model methods evaluate a weight snapshot of the same run once (penultimate-layer embeddings,
  probabilities, last-layer gradients, or the model itself) and score or greedily order every
  class: the baselines of the DeepCore library and Moderate-DS.

A record names what the method reads, what the top of its ranking means (always the end that the
method's authors select first), which end holds the hardest examples (CCS trims that end), the
stage-2 flags it uses, whether its ranking is a greedy order (then every prefix is the
method's selection at that budget, and the recorded scores are the greedy gains), and what stage 2
must evaluate besides the training split.
"""
from __future__ import annotations

from dataclasses import dataclass
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
        options: the stage-2 flags the method reads (recorded in the score file).
        greedy: the ranking is a greedy order and the scores are the greedy gains.
        validation: a model method that also reads the validation split's features (unless its
            ``gradient_target`` is ``train``).
        run_defaults: ``(option, stage-1 config key)`` pairs: an option left unset takes the value
            the stage-1 run was trained with.
        paper: where it comes from.
        weighted: its coresets carry per-example weights, and stage 3 trains them weighted (as
            DeepCore does: CRAIG and GradMatch).
    """
    name: str
    family: str
    inputs: tuple[str, ...]
    top_means: str
    hard_end: str
    options: tuple[str, ...] = ()
    greedy: bool = False
    validation: bool = False
    run_defaults: tuple[tuple[str, str], ...] = ()
    paper: str = ""
    weighted: bool = False

    @property
    def uses_model(self) -> bool:
        return self.family == "model"


def _trajectory(name, inputs, top_means, hard_end, options=(), paper=""):
    return Method(name, "trajectory", inputs, top_means, hard_end, EPOCH_OPTIONS + options, paper=paper)


def _model(name, inputs, top_means, hard_end, options=(), greedy=False, validation=False, run_defaults=(), paper="",
           weighted=False):
    return Method(name, "model", inputs, top_means, hard_end, MODEL_OPTIONS + options + (("budgets",) if weighted else ()),
                  greedy, validation, run_defaults, paper, weighted)


_RECORDS = [
    _trajectory("cld", ("tr_loss", "val_loss"),
                "highest CLD: loss falls when the class's validation loss falls (the paper's coreset)", "bottom",
                paper="Nagaraj, Ravikumar, Roy, TMLR 2025"),
    _trajectory("random", (), "a uniformly random order within each class", "top", ("seed",)),
    _trajectory("loss", ("tr_loss",), "highest mean training loss (hardest)", "top"),
    _trajectory("el2n", ("tr_el2n",), "highest early-training EL2N (hardest; Data Diet keeps these)", "top",
                ("el2n_epochs",), paper="Paul et al. 2021"),
    _trajectory("forgetting", ("tr_correct",), "most forgetting events, never-learned first (Toneva et al. keep these)",
                "top", paper="Toneva et al. 2019"),
    _trajectory("aum", ("tr_margin",), "highest AUM (cleanest; Pleiss et al. drop the lowest as likely mislabeled)",
                "bottom", paper="Pleiss et al. 2020"),
    _trajectory("dyn_unc", ("tr_loss",), "highest dynamic uncertainty (He et al. keep these)", "top",
                ("dyn_unc_window",), paper="He et al. 2023"),
    # DeepCore's uncertainty baselines (Coleman et al. 2020)
    _model("least_confidence", ("probs",), "lowest top-class probability (most uncertain)", "top",
           paper="Coleman et al. 2020 (DeepCore)"),
    _model("entropy", ("probs",), "highest predictive entropy (most uncertain)", "top",
           paper="Coleman et al. 2020 (DeepCore)"),
    _model("margin", ("probs",), "smallest gap between the two most probable classes (most uncertain)", "top",
           paper="Coleman et al. 2020 (DeepCore)"),
    _model("herding", ("embeddings",), "greedy order keeping the selected embeddings' mean closest to the class mean",
           "bottom", greedy=True, paper="Welling 2009 (DeepCore)"),
    _model("kcenter", ("embeddings",), "k-center greedy order over the embeddings (most uncovered first)", "top",
           ("seed",), greedy=True, paper="Sener and Savarese 2018 (DeepCore)"),
    _model("contextual_diversity", ("probs",), "k-center greedy order over the probabilities (symmetric KL)", "top",
           ("seed",), greedy=True, paper="Agarwal et al. 2020 (DeepCore)"),
    _model("cal", ("embeddings", "probs"), "highest mean divergence from its nearest neighbours' predictions", "top",
           ("cal_neighbors",), paper="Margatina et al. 2021 (DeepCore)"),
    _model("moderate", ("embeddings",), "distance to the class mean closest to the class's median distance", "bottom",
           paper="Xia et al. 2023 (Moderate-DS)"),
    _model("grand", ("grads",), "largest last-layer gradient norm (hardest)", "top", paper="Paul et al. 2021 (DeepCore)"),
    _model("craig", ("grads",), "facility-location greedy order on gradient distances", "top", greedy=True,
           paper="Mirzasoleiman et al. 2020 (DeepCore)", weighted=True),
    _model("gradmatch", ("grads",), "orthogonal-matching-pursuit order matching the class's mean validation gradient",
           "top", ("gradient_target",), greedy=True, validation=True, paper="Killamsetty et al. 2021 (DeepCore)",
           weighted=True),
    # GLISTER's step size defaults to the run's learning rate, as DeepCore's does
    _model("glister", ("grads", "logits", "embeddings"), "greedy order raising the validation log-likelihood most (Taylor estimate)",
           "top", ("glister_eta", "gradient_target"), greedy=True, validation=True,
           run_defaults=(("glister_eta", "learning_rate"),),
           paper="Killamsetty et al. 2021 (DeepCore)"),
    _model("facility_location", ("grads",), "facility-location greedy order (cosine similarity of gradients)", "top",
           greedy=True, paper="Iyer et al. 2021 (DeepCore's Submodular)"),
    _model("graph_cut", ("grads",), "graph-cut greedy order (cosine similarity of gradients)", "top", greedy=True,
           paper="Iyer et al. 2021 (DeepCore's Submodular)"),
    _model("log_determinant", ("grads",), "log-determinant greedy order (cosine similarity of gradients)", "top",
           greedy=True, paper="Iyer et al. 2021 (DeepCore's Submodular)"),
    _model("deepfool", ("model",), "smallest DeepFool perturbation that changes the prediction (closest to the "
           "decision boundary)", "top", ("deepfool_max_iter",), paper="Ducoffe and Precioso 2018 (DeepCore)"),
]

METHODS: dict[str, Method] = {m.name: m for m in _RECORDS}
# The groups of the README's methods table: the grid's plot draws one panel per group (beside CLD
# and the random baseline) when there are too many lines for one.
GROUPS: dict[str, tuple[str, ...]] = {
    "training dynamics": ("loss", "el2n", "forgetting", "aum", "dyn_unc"),
    "uncertainty and boundary": ("least_confidence", "entropy", "margin", "deepfool"),
    "geometry": ("herding", "kcenter", "contextual_diversity", "cal", "moderate"),
    "gradients": ("grand", "craig", "gradmatch", "glister", "facility_location", "graph_cut", "log_determinant"),
}
ALIASES = {"uniform": "random"}  # DeepCore's name for the random baseline


def names() -> tuple[str, ...]:
    """Every ``--method`` value, aliases included."""
    return tuple(METHODS) + tuple(ALIASES)


def get(name: str) -> Method:
    """A method by name (case-insensitive; aliases resolved), or a user error listing the names."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(names())}")
    return METHODS[key]


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
