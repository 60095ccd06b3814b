"""Stage 3: train on the selected examples of each class of a score file and report test accuracy.

Implements the coreset evaluation of *Coresets from Trajectories: Selecting Data via Correlation
of Loss Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025). The model trained here may differ from
the one that produced the scores (the paper's transfer experiments), and ``order`` picks the top,
the near-zero scores, the bottom, the median ranks, a random draw from the same pool, or a CCS draw.
"""
from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from utils import paths, progress
from utils.cli.config import PAPER_TOPK, check_model
from utils.cli.flags import Settings
from utils.data.datasets import dataset_info
from utils.errors import UserError
from utils.files.scores import load_scores
from utils.scoring import methods
from utils.selection.coreset import SCORED_ORDERS, check_indices, class_budgets, select_coreset
from utils.selection.results import project_commit, write_result
from utils.train import distributed
from utils.train.options import Recipe, SessionOptions, recipe_identity
from utils.train.session import evaluate_checkpoint, open_session
from utils.train.state import RunState, claim_run, epoch_line, run_claims

PAPER_DATASET = "CIFAR100"  # the paper code's default, for its score files that do not say


def train_on_coreset(s: Settings) -> dict:
    """Run stage 3 with checked flags (``utils.cli.config.STAGE3``); returns the run's result."""
    recipe = Recipe.from_settings(s)
    options = SessionOptions.from_settings(s)
    if s.evaluate_only and s.dataset and s.model_arch:  # no score file needed to evaluate a model
        dataset = dataset_info(s.dataset).name
        return {"evaluated": evaluate_checkpoint(options, recipe, s.resume_path, dataset=dataset,
                                                 model_arch=check_model(s.model_arch, dataset))}
    score_path = s.score_path or paths.score_path(paths.SCORES_DIR, "cld", dataset_info(s.dataset or PAPER_DATASET).name,
                                                  s.model_arch or "resnet18", s.manual_seed)
    scores = _load(score_path)
    info = dataset_info(_dataset(s.dataset, scores, score_path))
    score_arch = scores.get("model_arch") or "unknown"
    model_arch = check_model(s.model_arch or scores.get("model_arch") or "resnet18", info.name)
    if s.evaluate_only:
        return {"evaluated": evaluate_checkpoint(options, recipe, s.resume_path, dataset=info.name,
                                                 model_arch=model_arch)}
    k = s.samples_per_class
    if k is None and s.fraction is None:
        k = PAPER_TOPK
        print(f"note: no budget given; training on the paper's default, the top {k} examples of each class "
              "(--samples_per_class K or --fraction F to choose)")
    if s.order in SCORED_ORDERS and scores.get("greedy"):
        raise UserError(f"order {s.order!r} reads scores, but {scores['method']}'s ranking is a greedy order (its "
                        "scores are the gains of each step); use top, bottom, middle or random")
    budget = ("samples_per_class", k) if k is not None else ("fraction", s.fraction)
    name = s.name or paths.coreset_run_name(info.name, model_arch, scores["method"], score_arch, s.order, budget,
                                            s.manual_seed)
    files = paths.RunFiles(s.checkpoint_path, s.logpath, name, paths.run_json(s.results_dir, name))
    with run_claims() as claims:
        def prepare() -> None:  # main process, before any data is loaded
            claims.append(claim_run(files, [s.checkpoint_path, s.logpath, s.results_dir], s.resume_path, s.overwrite))

        session = open_session(options, recipe, dataset=info.name, model_arch=model_arch,
                               num_classes=scores.get("num_classes"), num_classes_of=f"score file {score_path}",
                               prepare=prepare)
        coreset = _coreset(s, scores, score_path, session.train_source.labels, k)
        return _train(s, session, files, recipe, coreset, scores, score_path, model_arch, score_arch, budget)


def _load(score_path: str) -> dict:
    """The score file; a missing one names the stage-2 command that writes it."""
    if not os.path.exists(score_path):
        made_by = paths.source_of_score_file(score_path)
        if made_by is not None and os.path.exists(made_by[1]):
            hint = f"make it with: python compute_cld_scores.py --loss_path {made_by[1]} --method {made_by[0]}"
        elif made_by is not None:
            hint = (f"it is made by stage 2 from {made_by[1]}, which does not exist either: run "
                    "get_loss_values.py (stage 1), then compute_cld_scores.py (stage 2)")
        else:
            hint = "make one with compute_cld_scores.py (stage 2), or pass --score_path"
        raise UserError(f"score file {score_path} not found; {hint}")
    scores = load_scores(score_path)
    if scores["format"] != "legacy":  # a name from a file becomes part of file names: only a registered one
        scores["method"] = methods.get(scores["method"]).name
    return scores


def _dataset(flag: str | None, scores: dict, path: str) -> str:
    """The flag if given (it must agree with the file), else the file's, else the paper's default."""
    from_file = scores.get("dataset")
    if flag and from_file and dataset_info(flag).name != dataset_info(from_file).name:
        raise UserError(f"score file {path} was made on dataset {from_file}, not {flag}")
    if not flag and not from_file:
        print(f"note: score file {path} does not say its dataset; using the paper's default, {PAPER_DATASET} "
              "(--dataset to choose)")
    return flag or from_file or PAPER_DATASET


def _coreset(s: Settings, scores: dict, path: str, labels: np.ndarray, k: int | None) -> np.ndarray:
    """Check the rankings against the data and choose the coreset."""
    ranked = scores["indices"]
    check_indices(ranked, len(labels))
    for c, idx in ranked.items():
        wrong = idx[labels[idx] != c]
        if wrong.size:
            raise UserError(f"score file {path} lists example {int(wrong[0])} under class {c}, but its "
                            f"label is {int(labels[wrong[0]])}; the file was made for another dataset")
    missing = sorted(set(np.unique(labels).tolist()) - set(ranked))
    if missing and not s.allow_missing_classes:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise UserError(f"score file {path} ranks no example of class {shown} of the dataset; pass "
                        "--allow_missing_classes to train on the classes it ranks")
    budget = class_budgets({c: len(v) for c, v in ranked.items()}, samples_per_class=k, fraction=s.fraction)
    return select_coreset(ranked, scores.get("scores"), budget, s.order, s.manual_seed, s.ccs_beta,
                          hard_end=scores.get("hard_end", "top"))


def _train(s: Settings, session, files: paths.RunFiles, recipe: Recipe, coreset: np.ndarray, scores: dict,
           score_path: str, model_arch: str, score_arch: str, budget: tuple[str, float]) -> dict:
    info, is_main = session.data.info, session.dist.is_main
    say = progress.say if is_main else (lambda *a, **k: None)
    identity = {"stage": "coreset", "dataset": info.name, "model_arch": model_arch, "manual_seed": s.manual_seed,
                "coreset_size": int(len(coreset)), "coreset_hash": _digest(coreset), "world_size": session.dist.world,
                **recipe_identity(recipe, session.precision)}
    run = RunState(session.model, session.trainer, session.scheduler, files, identity, dict(s), is_main)
    seconds_before = 0.0
    if s.resume_path:
        seconds_before = float(run.resume(s.resume_path, recipe.epochs, s.overwrite, log=say).get("seconds", 0.0))
        say(f"resumed {s.resume_path} after epoch {run.epoch}")
    say(f"coreset of {len(coreset)} {info.name} examples ({s.order} of {scores['method']} scores by {score_arch}, "
        f"{budget[0].replace('_', ' ')} {budget[1]}); training {model_arch} on {session.device} in {session.precision}")
    start = time.perf_counter()
    eta = progress.Eta(recipe.epochs, run.epoch)
    for epoch in range(run.epoch, recipe.epochs):
        lr = run.learning_rate
        t0 = time.perf_counter()
        train_loss, train_acc = session.train_epoch(coreset, s.manual_seed, epoch)
        t1 = time.perf_counter()
        test_loss, test_acc = session.test_eval()
        t2 = time.perf_counter()
        run.scheduler.step()
        improved = run.end_epoch({
            "epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
            "test_acc": test_acc, "seconds_train": t1 - t0, "seconds_test": t2 - t1})
        with distributed.fail_together():  # a failed write (disk full) stops every process
            if is_main:
                run.save(improved, {"seconds": seconds_before + time.perf_counter() - start})
        eta.step()
        say(epoch_line(run.rows[-1], recipe.epochs, eta))
    # Accuracy on the coreset itself, in eval mode and without augmentation: has training converged?
    on_coreset = session.evaluate(session.train_source, coreset, desc="coreset accuracy")
    result = {
        "name": files.name, "dataset": info.name, "model_arch": model_arch, "score_path": score_path,
        "method": scores["method"], "score_model_arch": score_arch, "order": s.order,
        "samples_per_class": budget[1] if budget[0] == "samples_per_class" else None,
        "fraction": budget[1] if budget[0] == "fraction" else None, "coreset_size": int(len(coreset)),
        "manual_seed": s.manual_seed, **recipe.as_dict(),
        "precision": session.precision, "compile": str(s.compile), "world_size": session.dist.world,
        "commit": project_commit(), "best_test_acc": round(run.best_acc, 4),
        "final_test_acc": round(float(run.rows[-1]["test_acc"]), 4),
        "final_train_acc": round(100.0 * float(on_coreset["correct"].double().mean()), 4),
        "seconds": round(seconds_before + time.perf_counter() - start, 2), "config": dict(s),
        "coreset_indices": coreset.tolist(),
    }
    with distributed.fail_together():  # every process returns once the result is written
        if is_main:
            write_result(s.results_dir, files.name, result)
    say(f"best test accuracy {result['best_test_acc']:.2f}%, final {result['final_test_acc']:.2f}%; accuracy on "
        f"the coreset {result['final_train_acc']:.2f}%; result in {files.output}")
    distributed.teardown()
    return result


def _digest(indices: np.ndarray) -> str:
    """A short fingerprint of the coreset, so a resume cannot silently train on another one."""
    return hashlib.sha1(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]

