"""The GPU check's last two steps: the cost of fp32 collection, and how far bf16 losses change CLD's coresets."""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.gpu.config import TOP_FRACTION, say
from bench.gpu.steps import Context, _reset_compiler, ensure_data


def top_count(n: int, fraction: float = TOP_FRACTION) -> int:
    """Examples in the top ``fraction`` of a class of ``n`` (at least one).

    Args:
        n: examples in the class.
        fraction: the share kept.

    Returns:
        max(1, round(fraction * n)).
    """
    return max(1, int(round(fraction * n)))

def top_fraction_jaccard(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                         fraction: float = TOP_FRACTION) -> dict[int, float]:
    """Per class, the Jaccard index of the top-``fraction`` sets that two score vectors select.

    Each class is ranked as stage 3 ranks it (:func:`utils.core.ranking.rank_per_class`: highest score
    first, ties by dataset index) and its first :func:`top_count` examples are kept.

    Args:
        scores_a, scores_b: (N,) scores of the same examples.
        labels: (N,) their classes.
        indices: (N,) their dataset indices.
        fraction: the share of every class kept.

    Returns:
        {class: |A & B| / |A | B|}.
    """
    from utils.core.ranking import rank_per_class

    ranked_a, _ = rank_per_class(scores_a, labels, indices)
    ranked_b, _ = rank_per_class(scores_b, labels, indices)
    out = {}
    for c, order_a in ranked_a.items():
        k = top_count(len(order_a), fraction)
        a, b = set(order_a[:k].tolist()), set(ranked_b[c][:k].tolist())
        out[c] = len(a & b) / len(a | b)
    return out

@dataclass
class Evaluator:
    """A model behind a Trainer whose (compiled) evaluation passes time or compute stage-1 losses.

    The weights are replaced in place (``load_state_dict``), so compiled graphs and CUDA graphs,
    which hold the parameters' addresses, stay valid for every snapshot.
    """
    model: Any
    trainer: Any
    source: Any
    train_idx: np.ndarray
    val_idx: np.ndarray
    batch_size: int

    def losses(self, indices: np.ndarray, precision: str) -> np.ndarray:
        """Per-example eval-mode losses of ``indices`` in ``precision`` (float32, host)."""
        out = self.trainer.evaluate(self.source.eval_batches(indices, self.batch_size), len(indices),
                                    precision=precision)
        return out["loss"].float().cpu().numpy()

    def collect_seconds(self, precision: str) -> float:
        """Seconds of one stage-1 collection pass (training split with signals, then validation)."""
        import torch

        sync = torch.cuda.synchronize if self.source.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        self.trainer.evaluate(self.source.eval_batches(self.train_idx, self.batch_size), len(self.train_idx),
                              signals=True, precision=precision)
        self.trainer.evaluate(self.source.eval_batches(self.val_idx, self.batch_size), len(self.val_idx),
                              precision=precision)
        sync()
        return time.perf_counter() - t0

def evaluator(ctx: Context) -> Evaluator:
    """The worker's evaluator (built and compiled once, shared by the collection and fidelity steps)."""
    if "main" in ctx.evaluators:
        return ctx.evaluators["main"]
    import torch

    from utils.data.batches import TensorBatches
    from utils.data.datasets import load_dataset
    from utils.data.splits import stratified_split
    from utils.train.device import resolve_device
    from utils.train.engine import Trainer, build_optimizer
    from utils.train.options import Recipe
    from utils.train.session import build_model

    m = ctx.mode
    device = resolve_device(m.device)
    data = load_dataset("CIFAR100", ensure_data(ctx), download=False)
    train_idx, val_idx = stratified_split(data.train.labels, data.info.val_split_ratio, 1234, data.num_classes)
    torch.manual_seed(0)
    model = build_model(m.model_arch, data.num_classes, data.info.name, device)
    trainer = Trainer(model, build_optimizer(model, Recipe(), device), device, m.precision, compile=m.compile,
                      eval_batch_size=m.test_batch_size)
    ctx.evaluators["main"] = Evaluator(model, trainer, TensorBatches(data.train, data.info, device), train_idx,
                                       val_idx, m.test_batch_size)
    return ctx.evaluators["main"]

def step_collection(ctx: Context) -> dict:
    """Seconds of stage 1's per-example pass in fp32 (TF32 off) and in bf16, on the same weights."""
    _reset_compiler()
    ev = evaluator(ctx)
    warmup = {p: ev.collect_seconds(p) for p in ("fp32", "bf16")}  # compiles (and records CUDA graphs)
    runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(ctx.mode.timing_repeats):  # alternated: a slow moment of the machine hits both
        for precision in runs:
            runs[precision].append(ev.collect_seconds(precision))
    fp32, bf16 = float(np.median(runs["fp32"])), float(np.median(runs["bf16"]))
    say(f"collection: fp32 {fp32:.3f} s, bf16 {bf16:.3f} s per pass over {len(ev.train_idx):,} + "
        f"{len(ev.val_idx):,} examples")
    return {"train_n": len(ev.train_idx), "val_n": len(ev.val_idx), "fp32_s": fp32, "bf16_s": bf16,
            "extra_s": fp32 - bf16, "ratio": fp32 / bf16 if bf16 > 0 else None, "fp32_runs_s": runs["fp32"],
            "bf16_runs_s": runs["bf16"], "first_pass_s": warmup, "compile": ctx.mode.compile}

def _fidelity_run(ctx: Context, data: str) -> tuple[dict, float]:
    """The stage-1 run whose snapshots the fidelity step evaluates; (its loss dict, seconds)."""
    import get_loss_values
    from utils.files.losses import load_losses

    m = ctx.mode
    out = os.path.join(ctx.work, "fidelity")
    dirs = {k: os.path.join(out, k) for k in ("checkpoint_path", "logpath", "scores_dir", "splits_dir")}
    say(f"fidelity: stage 1, {m.model_arch}, {m.fidelity_epochs} epochs ({m.fidelity_precision}, compile "
        f"{m.fidelity_compile}), a snapshot after every epoch")
    t0 = time.perf_counter()
    path = get_loss_values.main(data_path=data, dataset="CIFAR100", model_arch=m.model_arch, epochs=m.fidelity_epochs,
                                batch_size=m.batch_size, test_batch_size=m.test_batch_size, device=m.device,
                                precision=m.fidelity_precision, compile=m.fidelity_compile,
                                learning_rate=m.learning_rate, snapshot_epochs=list(range(1, m.fidelity_epochs + 1)),
                                workers=0, download=False, overwrite=True, **dirs)
    return load_losses(path), time.perf_counter() - t0

def _loss_matrices(ev: Evaluator, run: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every snapshot's training and validation losses in fp32 and in bf16: {precision: (E x N, E x V)}."""
    from utils.files.checkpoint import load_model_weights

    snapshots = {int(e): p for e, p in run["checkpoints"]["snapshots"].items()}
    epochs = len(run["epoch"])
    if sorted(snapshots) != list(range(1, epochs + 1)):
        raise RuntimeError(f"expected a snapshot after each of {epochs} epochs, found {sorted(snapshots)}")
    rows: dict[str, tuple[list, list]] = {"fp32": ([], []), "bf16": ([], [])}
    for epoch in range(1, epochs + 1):
        weights, _, _ = load_model_weights(snapshots[epoch])
        ev.model.load_state_dict(weights)  # in place: the compiled graphs stay valid
        for precision, (tr, val) in rows.items():
            tr.append(ev.losses(run["train_indices"], precision))
            val.append(ev.losses(run["val_indices"], precision))
    return {p: (np.stack(tr), np.stack(val)) for p, (tr, val) in rows.items()}

def fidelity_summary(run: dict, matrices: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """CLD from the fp32 and from the bf16 loss matrices, and how far their top-10% coresets agree;
    and how far the coresets from the losses stage 1 itself recorded (its default collection
    precision, fp32 with TF32 off) agree with the fp32 re-evaluation (the target).

    Args:
        run: the stage-1 loss dict (labels, indices, and the losses it recorded ``tr_loss``, ``val_loss``).
        matrices: {"fp32" | "bf16": (training losses E x N, validation losses E x V)}.

    Returns:
        Per-class Jaccard of bf16 vs fp32 (mean, min, count below 0.95: why fp32 is the default),
        of stage 1's own losses vs fp32 (``default_jaccard_*``), the CLD scores' correlation, how
        the two loss matrices differ, and how the fp32 matrix differs from the losses stage 1 recorded.
    """
    from utils.core.cld import cld

    base = {k: run[k] for k in ("tr_lbl", "val_lbl", "train_indices", "val_indices")}
    scores = {}
    for precision, (tr, val) in matrices.items():
        scores[precision] = cld({**base, "epoch": np.arange(tr.shape[0]), "tr_loss": tr.astype(np.float32),
                                 "val_loss": val.astype(np.float32)})
    scores["default"] = cld({**base, "epoch": np.arange(len(run["epoch"])), "tr_loss": run["tr_loss"],
                             "val_loss": run["val_loss"]})
    jaccard = top_fraction_jaccard(scores["fp32"], scores["bf16"], run["tr_lbl"], run["train_indices"])
    values = np.array(list(jaccard.values()))
    default = np.array(list(top_fraction_jaccard(scores["fp32"], scores["default"], run["tr_lbl"],
                                                 run["train_indices"]).values()))
    tr32, tr16 = matrices["fp32"][0].astype(np.float64), matrices["bf16"][0].astype(np.float64)
    diff = np.abs(tr16 - tr32)
    both = np.stack([scores["fp32"], scores["bf16"]])
    corr = float(np.corrcoef(both)[0, 1]) if both.std(axis=1).min() > 0 else None
    return {"epochs": int(tr32.shape[0]), "train_n": int(tr32.shape[1]), "val_n": int(matrices["fp32"][1].shape[1]),
            "loss_shape": list(tr32.shape), "fraction": TOP_FRACTION, "classes": len(values),
            "jaccard_mean": float(values.mean()), "jaccard_min": float(values.min()),
            "classes_below_0.95": int((values < 0.95).sum()), "cld_corr": corr,
            "default_jaccard_mean": float(default.mean()), "default_jaccard_min": float(default.min()),
            "default_collect_precision": run.get("collect_precision"),
            "loss_bf16_vs_fp32": {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                                  "mean_rel": float(diff.mean() / max(np.abs(tr32).mean(), 1e-12))},
            "fp32_vs_stage1_max_abs": float(np.abs(tr32 - run["tr_loss"].astype(np.float64)).max())}

def step_fidelity(ctx: Context) -> dict:
    """Ranking fidelity of bf16 collection: CLD coresets from fp32 and from bf16 losses of the same snapshots."""
    data = ensure_data(ctx)
    run, stage1_s = _fidelity_run(ctx, data)
    ev = evaluator(ctx)
    t0 = time.perf_counter()
    matrices = _loss_matrices(ev, run)
    eval_s = time.perf_counter() - t0
    summary = fidelity_summary(run, matrices)
    say(f"fidelity: top-{TOP_FRACTION:.0%} Jaccard of stage 1's own losses vs fp32: mean "
        f"{summary['default_jaccard_mean']:.4f}; bf16 vs fp32: mean {summary['jaccard_mean']:.4f}, min "
        f"{summary['jaccard_min']:.4f} over {summary['classes']} classes; CLD correlation {summary['cld_corr']}")
    shutil.rmtree(os.path.join(ctx.work, "fidelity"), ignore_errors=True)
    return {**summary, "stage1_wall_s": stage1_s, "evaluation_s": eval_s, "model_arch": ctx.mode.model_arch,
            "training_precision": ctx.mode.fidelity_precision, "compile": ctx.mode.fidelity_compile}
