"""Stage 2's model methods: one evaluation pass of a weight snapshot of the stage-1 run, then a
per-class selector (:mod:`utils.scoring.selectors`) or DeepFool (:mod:`utils.scoring.deepfool`).

DeepCore trains a separate selection model for 40 epochs; here the same stage-1 run keeps its
weights after epoch 40 (``--snapshot_epochs``), so every baseline comes from one run, split,
recipe and data pipeline. The pass evaluates the run's training split (and, for GradMatch and
GLISTER, its validation split) in eval mode, without augmentation, normalised as in training,
in the collection precision (fp32 with TF32 off by default), and keeps the logits and the
penultimate embeddings (the input of the final linear layer, read by a forward hook). From them:
probabilities ``P = softmax(z)``, and the last-layer gradient factors ``R = P - onehot(y)``: the
gradient of example i's loss w.r.t. the final layer is ``g_i = [r_i, r_i (x) e_i]`` (bias, then
weights), which the selectors never materialise.

Each method below takes one class's :class:`ClassFeatures` (rows in ascending dataset index) and
returns scores (higher = ranked first) or a greedy ``(order, gains)``; :func:`deepfool`, which reads
the network itself, takes the model and the training split instead and returns a distance per row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from utils import paths, progress
from utils.data.datasets import load_dataset
from utils.errors import UserError, first_line
from utils.files.checkpoint import check_identity, load_model_weights
from utils.files.npz import save_npz
from utils.data.sources import make_batches
from utils.scoring import selectors
from utils.scoring.deepfool import deepfool_distances
from utils.scoring.methods import Method, default_snapshot
from utils.scoring.ranking import rank_per_class
from utils.selection.coreset import class_budgets
from utils.train.session import build_model
from utils.train.device import cpu_threads, precision_context, resolve_collect_precision, resolve_device, resolve_precision

MAX_FULL_GRADS = 1 << 30  # bytes: a larger gradient matrix is exported as its two factors


@dataclass
class Features:
    """Logits, embeddings and labels of a list of examples, in that list's order (device tensors)."""
    logits: torch.Tensor
    embeddings: torch.Tensor
    labels: torch.Tensor

    def take(self, rows: np.ndarray) -> "Features":
        return Features(self.logits[rows], self.embeddings[rows], self.labels[rows])


@dataclass
class ClassFeatures:
    """What the evaluation pass gave for one class: its training rows, and its validation rows
    (empty unless the method reads them)."""
    cls: int
    indices: np.ndarray  # dataset indices of the training rows, ascending
    train: Features
    val: Features
    full_gradients: bool = False  # see :meth:`gradients`

    @property
    def embeddings(self) -> torch.Tensor:
        return self.train.embeddings

    @property
    def probs(self) -> torch.Tensor:
        """float32, as ``--save_features`` writes them (the selectors compute in float64 from these)."""
        return torch.softmax(self.train.logits, dim=1)

    @property
    def residual(self) -> torch.Tensor:
        """``R = softmax(z) - onehot(y)``: the gradient of the loss w.r.t. the logits."""
        return _residual(self.train.logits, self.train.labels)

    def gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training rows' last-layer gradients as factors ``(R, E)`` of ``g = [r, r (x) e]``.

        Where the whole gradient matrix is small enough to export (:data:`MAX_FULL_GRADS`) it is
        formed here, rounded to float32 as ``--save_features`` writes it, and returned as
        ``(g, an empty E)``, for which the selectors' factorised Gram ``<r_i, r_j> (1 + <e_i, e_j>)``
        is ``<g_i, g_j>``: the ranking is then computed from exactly the exported matrix.
        """
        return _factors(self.train, self.full_gradients)

    def val_gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _factors(self.val, self.full_gradients)

    def first_center(self, seed: int) -> int:
        """k-center's first pick: a row drawn uniformly with the run's seed (one draw per class)."""
        return int(np.random.default_rng([int(seed), int(self.cls)]).integers(len(self.indices)))


def _residual(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=1)
    return p - torch.nn.functional.one_hot(labels.long(), p.shape[1]).to(p.dtype)


def _factors(f: Features, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    r = _residual(f.logits, f.labels)
    if not full:
        return r, f.embeddings
    g = selectors.gradient_embeddings(r, f.embeddings).float()
    return g, g[:, :0]


# ----------------------------------------------------------------------------- the methods

def least_confidence(f: ClassFeatures, **_: Any):
    return selectors.least_confidence(f.probs)


def entropy(f: ClassFeatures, **_: Any):
    return selectors.entropy(f.probs)


def margin(f: ClassFeatures, **_: Any):
    return selectors.margin(f.probs)


def herding(f: ClassFeatures, **_: Any):
    return selectors.herding(f.embeddings)


def kcenter(f: ClassFeatures, seed: int, **_: Any):
    return selectors.kcenter(f.embeddings, f.first_center(seed))


def contextual_diversity(f: ClassFeatures, seed: int, **_: Any):
    return selectors.contextual_diversity(f.probs, f.first_center(seed))


def cal(f: ClassFeatures, cal_neighbors: int, **_: Any):
    return selectors.cal(f.embeddings, f.probs, cal_neighbors)


def moderate(f: ClassFeatures, **_: Any):
    return selectors.moderate(f.embeddings)


def grand(f: ClassFeatures, **_: Any):
    return selectors.grand(*f.gradients())


def craig(f: ClassFeatures, **_: Any):
    return selectors.craig(*f.gradients())


def facility_location(f: ClassFeatures, **_: Any):
    return selectors.facility_location(*f.gradients())


def graph_cut(f: ClassFeatures, **_: Any):
    return selectors.graph_cut(*f.gradients())


def log_determinant(f: ClassFeatures, **_: Any):
    return selectors.log_determinant(*f.gradients())


def gradmatch(f: ClassFeatures, gradient_target: str = "val", **_: Any):
    # target "train": the class's mean training gradient, what DeepCore's main.py runs (no dst_val)
    return selectors.gradmatch(*f.gradients(), *(f.val_gradients() if gradient_target == "val" else (None, None)))


def glister(f: ClassFeatures, glister_eta: float, gradient_target: str = "val", **_: Any):
    # target "train": the training rows stand for the validation set, as in DeepCore's run
    target = f.val if gradient_target == "val" else f.train
    return selectors.glister(f.residual, f.embeddings, target.logits, target.labels, target.embeddings, glister_eta)


def deepfool(model: torch.nn.Module, source, indices: np.ndarray, batch_size: int, device: torch.device,
             precision: str, deepfool_max_iter: int, **_: Any) -> np.ndarray:
    """DeepFool distance of every example of ``indices`` (float32, in that order)."""
    out = torch.zeros(len(indices), device=device)
    with precision_context(precision, device):
        for x, _, slots in progress.bar(source.eval_batches(indices, batch_size), "deepfool"):
            out[slots] = deepfool_distances(model, x, max_iter=deepfool_max_iter).float()
    return out.cpu().numpy()


# The scorer of every model method, by ``--method`` name: per-class ones take a
# :class:`ClassFeatures` and the method's options; DeepFool (input ``model``) takes the network.
SCORERS: dict[str, Callable[..., Any]] = {
    "least_confidence": least_confidence, "entropy": entropy, "margin": margin, "herding": herding,
    "kcenter": kcenter, "contextual_diversity": contextual_diversity, "cal": cal, "moderate": moderate,
    "grand": grand, "craig": craig, "facility_location": facility_location, "graph_cut": graph_cut,
    "log_determinant": log_determinant, "gradmatch": gradmatch, "glister": glister, "deepfool": deepfool,
}


def craig_weights(f: ClassFeatures, selected: np.ndarray, **_: Any) -> np.ndarray:
    return selectors.craig_weights(*f.gradients(), selected)


def gradmatch_weights(f: ClassFeatures, selected: np.ndarray, gradient_target: str = "val", **_: Any) -> np.ndarray:
    return selectors.gradmatch_weights(*f.gradients(), selected,
                                       *(f.val_gradients() if gradient_target == "val" else (None, None)))


# The methods whose coresets DeepCore trains with per-example weights (a WeightedSubset and a
# weighted mean of the losses, main.py), and how the weights of a selection are computed.
WEIGHTS: dict[str, Callable[..., np.ndarray]] = {"craig": craig_weights, "gradmatch": gradmatch_weights}


# ----------------------------------------------------------------------------- stage 2

@dataclass(frozen=True)
class Evaluation:
    """How stage 2 evaluates the run's weights (the stage-2 flags of the same names).

    Args:
        snapshot_epoch: the weights after this epoch; None: DeepCore's 40-epoch snapshot if kept, else the final ones.
        device: auto, cpu, cuda or cuda:N.
        collect_precision: fp32 (TF32 off), same (the run's training precision), bf16 or fp16.
        data_path: the data folder; '' for the one stage 1 recorded.
        save_features: also write the matrix the method ranks from to this ``.npz`` ('' for none).
        threads: CPU threads (0: :func:`utils.train.device.cpu_threads` chooses).
        budgets: the budgets whose per-example weights CRAIG and GradMatch record.
    """
    snapshot_epoch: int | None = None
    device: str = "auto"
    collect_precision: str = "fp32"
    data_path: str = ""
    save_features: str = ""
    threads: int = 0
    budgets: tuple[tuple[str, float], ...] = ()


def score_classes(method: Method, losses: dict, loss_path: str, e: Evaluation, options: dict) -> tuple:
    """Rank every class of a stage-1 run with a model method.

    ``options`` holds the method's flags; their ``snapshot_epoch`` and ``collect_precision`` are
    resolved here, in place, to the weights and precision used. Returns ``(indices, scores,
    extra)``: the score file's per-class rankings and scores, and what it records beside them
    (the weights used).
    """
    state, epoch, path = _snapshot(losses, loss_path, e.snapshot_epoch)
    config = losses.get("config") or {}
    device = resolve_device(e.device)
    training = resolve_precision(config.get("precision", "auto"), device)
    precision = resolve_collect_precision(e.collect_precision, training, device)
    model, source = _model_and_data(losses, state, path, e.data_path, device, config, e.threads)
    batch = int(config.get("test_batch_size", 256))
    train, val = losses["train_indices"], losses["val_indices"]
    options.update({"snapshot_epoch": epoch, "collect_precision": precision})
    extra = {"snapshot": path, "snapshot_epoch": epoch}
    if "model" in method.inputs:
        distances = SCORERS[method.name](model, source, train, batch, device, precision, **options)
        if e.save_features:
            _save(e.save_features, {"distances": distances}, losses)
        indices, scores = rank_per_class(-distances.astype(np.float64), losses["tr_lbl"], train)
        return indices, scores, extra
    feats = extract_features(model, source, train, batch, device, precision, "train split")
    reads_val = method.validation and options.get("gradient_target", "val") == "val"
    vfeats = extract_features(model, source, val, batch, device, precision, "validation split") if reads_val else None
    full = full_gradients(feats)
    if e.save_features:
        _save(e.save_features, _exported(method, feats, vfeats, full), losses, vfeats is not None)
    indices, scores, weights = rank_classes(method, feats, vfeats, losses, options, full, e.budgets)
    if method.name in WEIGHTS:
        extra["weights"] = weights
    return indices, scores, extra


def _snapshot(losses: dict, loss_path: str, wanted: int | None) -> tuple[dict, int, str]:
    """The weights to evaluate: the snapshot after ``wanted`` epochs, by default
    :func:`default_snapshot`'s."""
    checkpoints = losses.get("checkpoints")
    if not isinstance(checkpoints, dict) or not isinstance(checkpoints.get("snapshots"), dict):
        raise UserError(f"{loss_path} does not record the run's weights (a legacy loss file?); the model methods "
                        "need a loss file of this project's stage 1")
    snapshots = {int(e): str(p) for e, p in checkpoints["snapshots"].items()}
    done = int(len(losses["epoch"]))
    if wanted is None:
        wanted = default_snapshot(sorted(snapshots), done, f"the run of {loss_path}")
    if wanted in snapshots:
        path = snapshots[wanted]
    elif wanted == done:
        path = str(checkpoints.get("last"))
    else:
        kept = ", ".join(map(str, sorted(snapshots))) or "none"
        raise UserError(f"the run of {loss_path} kept no weights after epoch {wanted} (snapshots: {kept}; final "
                        f"weights: epoch {done}); choose one of those, or rerun stage 1 with --snapshot_epochs "
                        f"[{wanted}]")
    weights, epoch, identity = load_model_weights(path)
    if identity is not None:
        check_identity(identity, {"stage": "losses", "dataset": losses["dataset"],
                                  "model_arch": losses["model_arch"], "manual_seed": losses["manual_seed"]}, path)
    if epoch != wanted:
        raise UserError(f"checkpoint {path} holds epoch {epoch}, not {wanted}; it was replaced by another run")
    return weights, wanted, path


def _model_and_data(losses: dict, weights: dict, path: str, data_path: str, device: torch.device, config: dict,
                    threads: int = 0):
    data_path = data_path or losses.get("data_path") or config.get("data_path", "./Data")
    data = load_dataset(losses["dataset"], data_path, download=False)
    if data.num_classes != losses["num_classes"]:
        raise UserError(f"{data.info.name} under {data_path} has {data.num_classes} classes, the run had "
                        f"{losses['num_classes']}")
    if len(data.train_labels) <= int(max(losses["train_indices"].max(), losses["val_indices"].max())) or \
            not np.array_equal(data.train_labels[losses["train_indices"]], losses["tr_lbl"]):
        raise UserError(f"the data under {data_path} is not the data the run was trained on (its labels differ); "
                        "pass --data_path with that data")
    model = build_model(losses["model_arch"], data.num_classes, data.info.name, device)
    cpu_threads(threads, sum(p.numel() for p in model.parameters()), device)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not fit {losses['model_arch']} ({first_line(exc)})") from None
    model.eval()
    workers = int(config.get("workers", 0)) if isinstance(config.get("workers", 0), int) else 0
    return model, make_batches(data.train, data.info, device, workers, config.get("decode", "cpu"))


@torch.no_grad()
def extract_features(model: torch.nn.Module, source, indices: np.ndarray, batch_size: int, device: torch.device,
                     precision: str, what: str = "examples") -> Features:
    """One eval-mode pass over ``indices`` of ``source``: logits and penultimate embeddings (fp32)."""
    import models

    layer = models.final_linear(model)
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    n = len(indices)
    logits = torch.zeros(n, layer.out_features, device=device)
    embeddings = torch.zeros(n, layer.in_features, device=device)
    labels = torch.zeros(n, dtype=torch.long, device=device)
    try:
        with precision_context(precision, device):
            for x, y, slots in progress.bar(source.eval_batches(indices, batch_size), f"evaluate {what}"):
                captured.clear()
                logits[slots] = model(x).float()
                embeddings[slots] = captured[-1].float().flatten(1)
                labels[slots] = y
    finally:
        hook.remove()
    return Features(logits, embeddings, labels)


def rank_classes(method: Method, feats: Features, vfeats: Features | None, losses: dict, options: dict,
                 full: bool, budgets: Sequence[tuple[str, float]] = ()) -> tuple[dict, dict, dict]:
    """Per class: the method's scores ranked (ties to the lower index), or its greedy order; and
    the weights of each budget, ``{budget_key: {class: weights of its top k}}`` (empty but for the
    methods of :data:`WEIGHTS`).

    ``feats`` (``vfeats``) are the evaluation pass's features of ``losses["train_indices"]``
    (``losses["val_indices"]``, or None when the method does not read them); ``full``: whether the
    gradient matrix is formed whole (:meth:`ClassFeatures.gradients`). For a method of
    :data:`WEIGHTS`, ``budgets`` (``('samples_per_class', k)`` or ``('fraction', f)``) also get the
    per-example weights of each class's top k (:func:`class_weights`).
    """
    train, labels = losses["train_indices"], losses["tr_lbl"]
    fn = SCORERS[method.name]
    values = np.zeros(len(train))
    indices, scores = {}, {}
    weights: dict[str, dict[int, np.ndarray]] = {paths.budget_token(b): {} for b in budgets} if method.name in WEIGHTS \
        else {}
    for c in progress.bar(np.unique(labels), f"{method.name} per class", unit="class"):
        cols = np.flatnonzero(labels == c)
        cols = cols[np.argsort(train[cols], kind="stable")]
        val = vfeats.take(np.flatnonzero(losses["val_lbl"] == c)) if vfeats is not None else feats.take(cols[:0])
        f = ClassFeatures(int(c), train[cols], feats.take(cols), val, full)
        result = fn(f, **options)
        if method.greedy:
            order, gains = result
            indices[int(c)], scores[int(c)] = train[cols][order], np.asarray(gains, dtype=np.float64)
            for budget in budgets if weights else ():
                k = class_budgets({0: len(cols)}, **{budget[0]: budget[1]})[0]
                weights[paths.budget_token(budget)][int(c)] = WEIGHTS[method.name](f, order[:k], **options)
        else:
            values[cols] = result
    if not method.greedy:
        return (*rank_per_class(values, labels, train), {})
    return indices, scores, weights


def _exported(method: Method, feats: Features, vfeats: Features | None, full: bool) -> dict[str, np.ndarray]:
    """The matrices ``--save_features`` writes for ``method`` (``full``: the gradient matrix whole)."""
    out: dict[str, np.ndarray] = {}
    for part, f in (("", feats), ("val_", vfeats)):
        if f is None:
            continue
        if "embeddings" in method.inputs:
            out[part + "embeddings"] = f.embeddings.cpu().numpy()
        if "probs" in method.inputs:
            out[part + "probs"] = torch.softmax(f.logits, 1).cpu().numpy()
        if "logits" in method.inputs:
            out[part + "logits"] = f.logits.cpu().numpy()
        if "grads" in method.inputs:
            if full:
                out[part + "grads"] = _factors(f, True)[0].cpu().numpy()
            else:  # exact factors instead of a matrix larger than a gigabyte: g = [r, r (x) e]
                out[part + "grad_bias"] = _residual(f.logits, f.labels).cpu().numpy()
                out[part + "embeddings"] = f.embeddings.cpu().numpy()
    return out


def full_gradients(feats: Features) -> bool:
    """Whether the training split's whole float32 gradient matrix, N x C (D + 1), is small enough to
    form and export (:data:`MAX_FULL_GRADS` bytes)."""
    n, c = feats.logits.shape
    return n * c * (feats.embeddings.shape[1] + 1) * 4 <= MAX_FULL_GRADS


def _save(path: str, arrays: dict[str, np.ndarray], losses: dict, with_val: bool = False) -> None:
    meta = {"train_indices": losses["train_indices"], "labels": losses["tr_lbl"]}
    if with_val:
        meta.update(val_indices=losses["val_indices"], val_labels=losses["val_lbl"])
    save_npz(path, {**meta, **arrays})
    print(f"features      {', '.join(f'{k} {v.shape}' for k, v in arrays.items())} written to {path}")

