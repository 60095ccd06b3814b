"""Stage 3: train on the top-k examples of each class of a score file and report test accuracy.

Implements the coreset evaluation of *Coresets from Trajectories: Selecting Data via Correlation
of Loss Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025). The model trained here may differ from
the one that produced the scores (the paper's transfer experiments), and ``order`` selects the top,
bottom, middle (near-zero CLD), a random draw from the same pool, or a CCS draw.
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

import numpy as np

from utils import distributed, paths
from utils.cli import UserError, require, run_cli
from utils.data import dataset_info
from utils.formats import ensure_dir, load_scores
from utils.results import run_json_path, write_result
from utils.run import RunFiles, TrainingRun, claim_files
from utils.selection import ORDERS, check_indices, class_budgets, select_coreset
from utils.setup import evaluate_checkpoint, open_session
from utils.training import Recipe


def main(
        score_path: str = '',
        samples_per_class: int | None = None,
        topk_per_class: int | None = None,
        fraction: float | None = None,
        order: str = 'top',
        ccs_beta: float = 0.0,
        data_path: str = './Data',
        dataset: str | None = None,
        model_arch: str | None = None,
        workers: int = 4,
        epochs: int = 164,
        start_epoch: int = 0,
        batch_size: int = 128,
        test_batch_size: int = 256,
        learning_rate: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        disable_nesterov: bool = False,
        schedule: Sequence[int] = (81, 121),
        gamma: float = 0.1,
        checkpoint_path: str = './Data/Checkpoint',
        logpath: str = './Logs',
        resume_path: str = '',
        manual_seed: int = 1234,
        evaluate_only: bool = False,
        device: str = 'auto',
        precision: str = 'auto',
        compile: bool | str = False,
        results_dir: str = './Results',
        name: str = '',
        download: bool = True,
        overwrite: bool = False,
) -> dict:
    """Train on a coreset chosen from a score file and record its test accuracy.

    Args:
        score_path: a score file of stage 2 (or of the paper's code). Default:
            ``Scores/CLD_{dataset}_{model_arch}_seed{manual_seed}_scores.pickle``.
        samples_per_class: budget: k examples of every class (the README's name).
        topk_per_class: the same flag under the paper code's name.
        fraction: budget: round(fraction x class pool size) of every class, instead of k.
        order: top (highest score; default), bottom, middle (around the class median: the
            paper's near-zero CLD), random (uniform within the class's ranked pool, seeded),
            ccs (coverage-centric selection over the scores).
        ccs_beta: with order ccs, the fraction of each class's hardest examples dropped first.
        data_path: folder holding ``cifar/`` or ``imagenet/{train,val}``.
        dataset: dataset to train on; default: the score file's.
        model_arch: model to train; default: the model that produced the scores. Another
            model gives the paper's transfer experiment.
        workers: DataLoader worker processes (ImageFolder datasets only).
        epochs, batch_size, test_batch_size, learning_rate, momentum, weight_decay,
        disable_nesterov, schedule, gamma: the training recipe (the paper's by default).
        start_epoch: kept for compatibility; a resumed run continues from its checkpoint.
        checkpoint_path: folder of ``*_last.pth`` and ``*_best.pth``.
        logpath: folder of the per-epoch CSV log.
        resume_path: a ``*_last.pth`` of this run to continue (or, with evaluate_only, any checkpoint).
        manual_seed: seed of the initialisation, the batches, and the random / ccs draws.
        evaluate_only: evaluate the checkpoint ``resume_path`` on the test set and exit.
        device: auto, cuda or cpu.
        precision: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32.
        compile: False (eager), True (torch.compile of the train and eval steps with static
            shapes; CUDA graphs on one GPU), or a torch.compile mode such as reduce-overhead or
            max-autotune-no-cudagraphs. Worth it on a GPU for long runs (one-time warm-up).
        results_dir: where ``runs/<name>.json`` and ``results.csv`` go.
        name: the run's name (default
            ``{dataset}_{model_arch}_coreset_{method}_{order}_k{k}_seed{seed}``).
        download: download CIFAR through torchvision when it is missing.
        overwrite: replace the results and checkpoints of an earlier run of the same name.

    Returns:
        The run's result (also written to ``{results_dir}/runs/<name>.json``).
    """
    config = {k: v for k, v in locals().items()}
    require(order in ORDERS, f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    if topk_per_class is not None:
        require(samples_per_class is None or samples_per_class == topk_per_class,
                "--samples_per_class and --topk_per_class are the same flag; give one of them")
        samples_per_class = topk_per_class
    require((samples_per_class is None) != (fraction is None),
            "give exactly one budget: --samples_per_class K (or --topk_per_class K) or --fraction F")
    recipe = Recipe.from_flags(epochs=epochs, batch_size=batch_size, test_batch_size=test_batch_size,
                               learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay,
                               disable_nesterov=disable_nesterov, schedule=schedule, gamma=gamma)
    config["schedule"] = list(recipe.schedule)
    if not score_path:
        score_path = paths.score_path("Scores", "cld", dataset_info(dataset or "CIFAR100").name,
                                      model_arch or "resnet18", manual_seed)
    scores = load_scores(score_path)
    info = dataset_info(_pick(dataset, scores.get("dataset"), "dataset", score_path))
    model_arch = model_arch or scores.get("model_arch") or "resnet18"
    score_arch = scores.get("model_arch") or "unknown"
    method = str(scores.get("method") or "legacy")

    budget_token = f"k{samples_per_class}" if samples_per_class is not None else f"f{fraction:g}"
    source = method if score_arch in (model_arch, "unknown") else f"{method}-{score_arch}"
    name = name or f"{info.name}_{model_arch}_coreset_{source}_{order}_{budget_token}_seed{manual_seed}"
    result_file = run_json_path(results_dir, name)
    files = RunFiles.named(checkpoint_path, logpath, name, output=result_file)
    if evaluate_only:
        return {"evaluated": evaluate_checkpoint(resume_path, dataset=info.name, data_path=data_path,
                                                 model_arch=model_arch, device=device, precision=precision,
                                                 recipe=recipe, workers=workers, download=download)}

    def prepare_outputs() -> None:  # main process, before any data is loaded
        for folder in (checkpoint_path, logpath, results_dir):
            ensure_dir(folder)
        for note in claim_files(files, resume_path, overwrite):
            print(note)

    session = open_session(dataset=info.name, data_path=data_path, model_arch=model_arch, device=device,
                           precision=precision, compile=compile, recipe=recipe, manual_seed=manual_seed,
                           workers=workers, download=download, num_classes=scores.get("num_classes"),
                           num_classes_of=f"score file {score_path}",
                           prepare=prepare_outputs)
    say = print if session.dist.is_main else (lambda *a, **k: None)
    ranked = scores["indices"]
    check_indices(ranked, len(session.train_source))
    labels = session.train_source.labels
    for c, idx in ranked.items():
        wrong = idx[labels[idx] != c]
        if wrong.size:
            raise UserError(f"score file {score_path} lists example {int(wrong[0])} under class {c}, but its "
                            f"label is {int(labels[wrong[0]])}; the file was made for another dataset")
    budget = class_budgets({c: len(v) for c, v in ranked.items()}, samples_per_class=samples_per_class,
                           fraction=fraction)
    coreset = select_coreset(ranked, scores.get("scores"), budget, order, int(manual_seed), float(ccs_beta),
                             hard_end=scores.get("hard_end", "top"))

    identity = {"stage": "coreset", "dataset": info.name, "model_arch": model_arch, "manual_seed": int(manual_seed),
                "coreset_size": int(len(coreset)), "coreset_hash": _digest(coreset), "world_size": session.dist.world}
    run = TrainingRun(session.model, session.trainer, session.scheduler, recipe, files, identity, config,
                      session.dist.is_main)
    seconds_before = 0.0
    if resume_path:
        seconds_before = float(run.resume(resume_path, overwrite, log=say).get("seconds", 0.0))
        say(f"resumed {resume_path} after epoch {run.epoch}")
    say(f"coreset of {len(coreset)} {info.name} examples ({order} of {method} scores by {score_arch}, "
        f"{'k=' if samples_per_class is not None else 'fraction='}{budget_token[1:]} per class); training {model_arch} on "
        f"{session.device} in {session.precision}")
    start = time.perf_counter()
    run.fit(session.train_batches(coreset, manual_seed), session.test_eval,
            extra_state=lambda: {"seconds": seconds_before + time.perf_counter() - start}, log=say)
    result = {
        "dataset": info.name, "model_arch": model_arch, "score_path": score_path, "method": method,
        "score_model_arch": score_arch, "order": order, "samples_per_class": samples_per_class,
        "fraction": fraction, "coreset_size": int(len(coreset)), "manual_seed": int(manual_seed),
        "epochs": recipe.epochs, "best_test_acc": round(run.best_acc, 4),
        "final_test_acc": round(float(run.rows[-1]["test_acc"]), 4),
        "seconds": round(seconds_before + time.perf_counter() - start, 2), "name": name, "config": config,
        "coreset_indices": coreset.tolist(),
    }
    with distributed.fail_together():  # every process returns once the result is written
        if session.dist.is_main:
            write_result(results_dir, name, result)
    if session.dist.is_main:
        say(f"best test accuracy {result['best_test_acc']:.2f}%, final {result['final_test_acc']:.2f}%; "
            f"result in {result_file}")
    distributed.teardown()
    return result


def _pick(flag: str | None, from_file: str | None, what: str, path: str) -> str:
    """The flag if given (it must agree with the file), else the file's value."""
    if flag and from_file and dataset_info(flag).name != dataset_info(from_file).name:
        raise UserError(f"score file {path} was made on {what} {from_file}, not {flag}")
    value = flag or from_file
    if not value:
        raise UserError(f"score file {path} does not say its {what}; pass --{what}")
    return value


def _digest(indices: np.ndarray) -> str:
    """A short fingerprint of the coreset, so a resume cannot silently train on another one."""
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


if __name__ == "__main__":
    sys.exit(run_cli(main))
