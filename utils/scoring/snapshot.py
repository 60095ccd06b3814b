"""Stage 2's evaluation pass for the model methods: a weight snapshot of the stage-1 run, evaluated
once, then each class handed to its method (:mod:`utils.methods`, the record's ``score``).

DeepCore trains a separate selection model for 40 epochs; here the same stage-1 run keeps its
weights after epoch 40 (``--snapshot_epochs``), so every baseline comes from one run, split,
recipe and data pipeline. The pass evaluates the run's training split (and, for GradMatch and
GLISTER, its validation split) in eval mode, without augmentation, normalised as in training,
in the collection precision (fp32 with TF32 off by default), and keeps the logits and the
penultimate embeddings (the input of the final linear layer, read by a forward hook). From them
each class's :class:`utils.methods.features.ClassFeatures` (rows in ascending dataset index)
gives the probabilities and the last-layer gradient factors a method reads.

A per-class method's ``score`` takes those features and returns scores (higher = ranked first)
or a greedy ``(order, gains)``; a weighted method's ``weights`` gives the per-example weights of
a selection. DeepFool, which reads the network itself, takes the model and the training split
instead and returns a distance per row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from utils import paths, progress
from utils.core.selection import class_budgets
from utils.core.ranking import rank_per_class
from utils.data.datasets import load_dataset
from utils.data.sources import make_batches
from utils.errors import UserError, first_line
from utils.files.checkpoint import check_identity, load_model_weights
from utils.files.npz import save_npz
from utils.methods.features import MAX_FULL_GRADS, ClassFeatures, Features, factors, residual
from utils.methods.record import Method, default_snapshot
from utils.train.device import (cpu_threads, precision_context, resolve_collect_precision, resolve_device,
                                resolve_precision, use_cpu_kernels)
from utils.train.session import build_model


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
        cpu_kernels: portable or native (:mod:`utils.cpu_kernels`).
    """
    snapshot_epoch: int | None = None
    device: str = "auto"
    collect_precision: str = "fp32"
    data_path: str = ""
    save_features: str = ""
    threads: int = 0
    budgets: tuple[tuple[str, float], ...] = ()
    cpu_kernels: str = "portable"


def score_classes(method: Method, losses: dict, loss_path: str, e: Evaluation, options: dict) -> tuple:
    """Rank every class of a stage-1 run with a model method.

    ``options`` holds the method's flags; their ``snapshot_epoch`` and ``collect_precision`` are
    resolved here, in place, to the weights and precision used. Returns ``(indices, scores,
    extra)``: the score file's per-class rankings and scores, and what it records beside them
    (the weights used).
    """
    state, epoch, path = _snapshot(losses, loss_path, e.snapshot_epoch)
    config = losses.get("config") or {}
    use_cpu_kernels(e.cpu_kernels)
    device = resolve_device(e.device)
    training = resolve_precision(config.get("precision", "auto"), device)
    precision = resolve_collect_precision(e.collect_precision, training, device)
    model, source = _model_and_data(losses, state, path, e.data_path, device, config, e.threads)
    batch = int(config.get("test_batch_size", 256))
    train, val = losses["train_indices"], losses["val_indices"]
    options.update({"snapshot_epoch": epoch, "collect_precision": precision, "cpu_kernels": e.cpu_kernels})
    extra = {"snapshot": path, "snapshot_epoch": epoch}
    if "model" in method.inputs:
        distances = method.score(model, source, train, batch, device, precision, **options)
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
    if method.weighted:
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
    weighted methods, whose record has ``weights``).

    ``feats`` (``vfeats``) are the evaluation pass's features of ``losses["train_indices"]``
    (``losses["val_indices"]``, or None when the method does not read them); ``full``: whether the
    gradient matrix is formed whole (:meth:`ClassFeatures.gradients`). For a weighted method,
    ``budgets`` (``('samples_per_class', k)`` or ``('fraction', f)``) also get the per-example
    weights of each class's top k (the record's ``weights``).
    """
    train, labels = losses["train_indices"], losses["tr_lbl"]
    values = np.zeros(len(train))
    indices, scores = {}, {}
    weights: dict[str, dict[int, np.ndarray]] = {paths.budget_token(b): {} for b in budgets} if method.weighted \
        else {}
    for c in progress.bar(np.unique(labels), f"{method.name} per class", unit="class"):
        cols = np.flatnonzero(labels == c)
        cols = cols[np.argsort(train[cols], kind="stable")]
        val = vfeats.take(np.flatnonzero(losses["val_lbl"] == c)) if vfeats is not None else feats.take(cols[:0])
        f = ClassFeatures(int(c), train[cols], feats.take(cols), val, full)
        result = method.score(f, **options)
        if method.greedy:
            order, gains = result
            indices[int(c)], scores[int(c)] = train[cols][order], np.asarray(gains, dtype=np.float64)
            for budget in budgets if weights else ():
                k = class_budgets({int(c): len(cols)}, **{budget[0]: budget[1]})[int(c)]
                weights[paths.budget_token(budget)][int(c)] = method.weights(f, order[:k], **options)
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
                out[part + "grads"] = factors(f, True)[0].cpu().numpy()
            else:  # exact factors instead of a matrix larger than a gigabyte: g = [r, r (x) e]
                out[part + "grad_bias"] = residual(f.logits, f.labels).cpu().numpy()
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

