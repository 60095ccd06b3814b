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
from dataclasses import asdict, replace

import numpy as np

from utils import paths, progress
from utils.progress import warn
from utils.data.datasets import dataset_info
from utils.data.images import bad_images
from utils.errors import UserError, require
from utils.files.atomic import refuse_link
from utils.files.scores import load_scores
from utils.methods import registry as methods
from utils.coreset_training.options import PAPER_TOPK, CoresetOptions
from utils.core.selection import SCORED_ORDERS, check_indices, class_budgets, select_coreset
from utils.coreset_training.results import (foreign_results, has_row, project_commit, read_result, refresh_csv,
                                     write_result)
from utils.train import distributed
from utils.train.options import (MIN_STEPS, Recipe, SessionOptions, check_model, optimizer_steps, recipe_for_steps,
                                 recipe_identity)
from utils.train.session import evaluate_checkpoint, open_session, where
from utils.train.state import (RunState, claim_run, continue_interrupted, epoch_line, only_more_epochs,
                               recipe_differences, run_claims, schedule_note)

PAPER_DATASET = "CIFAR100"  # the paper code's default, for its score files that do not say
# The kind of the warning about a model that did not fit its coreset (progress.warn): a grid sums
# these up in one note instead of printing one per run (its table marks them).
UNFIT = "did not fit"


def train_on_coreset(s: CoresetOptions) -> dict:
    """Run stage 3; returns the run's result."""
    recipe = Recipe.from_options(s)
    options = SessionOptions.from_options(s)
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
                                            s.manual_seed, selection=_selection_model(scores) or "")
    files = paths.RunFiles(s.checkpoint_path, s.logpath, name, paths.run_json(s.results_dir, name))
    refuse_link(files.output)  # before it is read as this run's result
    if not s.overwrite and os.path.isfile(files.output) and not distributed.launched_by_torchrun():
        done = _already_complete(s, files, score_path, model_arch, budget)
        if done:
            return done
    weight_key = _weight_key(s, scores, score_path, budget)  # refused before any file is made
    # The same command run again after an interruption continues the run from its *_last.pth (its
    # recipe checked as for an explicit --resume_path); not under torchrun (see continue_interrupted).
    resume_path = continue_interrupted(files, s.resume_path, s.overwrite)
    continued = resume_path != s.resume_path
    s = replace(s, resume_path=resume_path)
    with run_claims() as claims:
        def prepare() -> None:  # main process, before any data is loaded
            claims.append(claim_run(files, [s.checkpoint_path, s.logpath, s.results_dir], s.resume_path, s.overwrite))
            _warn_foreign(s.results_dir)  # said now, not after training

        session = open_session(options, recipe, dataset=info.name, model_arch=model_arch,
                               num_classes=scores.get("num_classes"), num_classes_of=f"score file {score_path}",
                               prepare=prepare, check_train=False)
        coreset = _coreset(s, scores, score_path, session.train_source.labels, k)
        if not info.in_memory:  # only the coreset's files: the rest of the training set is not read
            with distributed.fail_together():
                bad = bad_images(session.data.train, s.workers, "coreset", coreset) if session.dist.is_main else []
                require(not bad, f"{len(bad)} file{'s' if len(bad) > 1 else ''} of the coreset cannot be read as "
                        f"images: {'; '.join(f'{p} ({why})' for _, p, why in bad[:5])}; rerun stages 1 and 2 with "
                        "--skip_bad_images, or replace them")
        coreset, weights = _weights(scores, score_path, coreset, weight_key)
        return _train(s, session, files, recipe, coreset, weights, scores, score_path, model_arch, score_arch, budget,
                      continued)


# What a rerun must repeat of a finished run to be the same run (and then merely reported).
SAME_RUN = ("epochs", "batch_size", "learning_rate", "momentum", "weight_decay", "disable_nesterov", "schedule",
            "gamma", "augment", "precision", "order", "ccs_beta", "manual_seed", "weighted")


def _already_complete(s: CoresetOptions, files: paths.RunFiles, score_path: str, model_arch: str,
                      budget: tuple[str, float]) -> dict:
    """The result of this very run exists: report it (restoring its ``results.csv`` row if a kill
    lost it) instead of training again; returns it ({} for a resume to more epochs, which goes on)."""
    result = read_result(files.output)
    recorded = result.get("config")
    differ = recipe_differences(recorded, asdict(s), SAME_RUN)
    resolved = {"model_arch": model_arch, "samples_per_class": budget[1] if budget[0] == "samples_per_class" else None,
                "fraction": budget[1] if budget[0] == "fraction" else None,
                "score_path": os.path.realpath(score_path)}
    recorded_resolved = {**result, "score_path": os.path.realpath(str(result.get("score_path", "")))}
    differ += recipe_differences(recorded_resolved, resolved, tuple(resolved))
    if s.resume_path and only_more_epochs(differ):
        return {}  # a resume that trains on, to more epochs: its result is replaced at the end
    if differ:
        raise UserError(f"{files.output} already exists, from a run with another recipe ({'; '.join(differ)}); pass "
                        "--overwrite to replace it, or give this run another --name or --results_dir")
    say = progress.say
    say(f"already complete: {files.output} (the same run; --overwrite to train it again)")
    if not has_row(s.results_dir, files.name):
        refresh_csv(s.results_dir)
        say(f"note: its row was missing from {paths.results_csv(s.results_dir)} and is restored")
    say(f"best test accuracy {result.get('best_test_acc')}%, final {result.get('final_test_acc')}%; accuracy on the "
        f"coreset {result.get('final_train_acc')}%")
    return result


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


def _coreset(s: CoresetOptions, scores: dict, path: str, labels: np.ndarray, k: int | None) -> np.ndarray:
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


def _weight_key(s: CoresetOptions, scores: dict, path: str, budget: tuple[str, float]) -> str | None:
    """Before any work: the budget key of the weights this run trains with, its weights checked
    (:func:`_check_weights`); None: unweighted, which for a weighted method (CRAIG, GradMatch:
    DeepCore's weighted subsets) is said in a note, and recorded as ``weighted`` false."""
    method, stored = scores["method"], scores.get("weights")
    record = methods.METHODS.get(method)
    weighted_method = record is not None and record.weighted
    if not s.weighted or s.order != "top":
        if weighted_method or stored is not None:
            why = "--weighted false" if not s.weighted else \
                f"its weights are those of the top of its ranking, and order {s.order}"
            progress.say(f"note: {method}'s coresets carry weights (DeepCore's weighted subsets), but {why} trains "
                         "this one unweighted; recorded as weighted false")
        return None
    key = paths.budget_token(budget)
    value = budget[1] if budget[0] == "fraction" else int(budget[1])
    rescore = (f"python compute_cld_scores.py --loss_path {scores.get('loss_path')} --method {method} "
               f"--budgets {value} --overwrite")
    if stored is None:
        if not weighted_method:
            return None
        raise UserError(f"score file {path} holds no {method} weights, and {method} trains weighted (DeepCore's "
                        f"weighted subsets); write them with: {rescore} (or pass --weighted false to train unweighted)")
    if key not in stored:
        raise UserError(f"score file {path} holds {method} weights for the budgets "
                        f"{', '.join(sorted(stored)) or 'none'}, not {key}; write them with: {rescore} "
                        "(or pass --weighted false)")
    _check_weights(s, method, path, key, stored[key])
    return key


def _check_weights(s: CoresetOptions, method: str, path: str, key: str, per_class: dict) -> None:
    """Weights the weighted loss can use: ``sum(w * loss) / sum(w)`` divides by zero when a batch's
    weights are all zero and overflows when their float32 sum does. (The score file's loader has
    refused NaN, infinite and negative weights.) A GradMatch class with no nonzero weight keeps no
    example (DeepCore trains on the nonzero ones): a missing class, refused as one."""
    total = np.float32(0)
    for c in sorted(per_class):
        w = per_class[c]
        if not (w > 0).any():
            if method == "gradmatch" and s.allow_missing_classes:
                progress.say(f"note: gradmatch gives no example of class {c} a nonzero weight (budget {key}); "
                             "training on the other classes (--allow_missing_classes)")
                continue
            if method == "gradmatch":
                raise UserError(f"score file {path}: every gradmatch weight of class {c} (budget {key}) is zero, so "
                                "gradmatch keeps no example of it; pass --allow_missing_classes to train on the "
                                "classes it keeps")
            raise UserError(f"score file {path}: every {method} weight of class {c} (budget {key}) is zero; its "
                            "examples would weigh nothing; rescore with compute_cld_scores.py, or pass --weighted false")
        with np.errstate(over="ignore"):
            part = w.astype(np.float32).sum(dtype=np.float32)
            total = np.float32(total + part)
        if not np.isfinite(total):
            raise UserError(f"score file {path}: the {method} weights of class {c} (budget {key}) sum beyond float32's "
                            f"range (up to {float(w.max()):.3g} each), so the weighted loss would overflow; rescore "
                            "with compute_cld_scores.py, or pass --weighted false")


def _weights(scores: dict, path: str, coreset: np.ndarray, key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The per-example weights of budget ``key`` (checked by :func:`_weight_key`) aligned with the
    coreset; GradMatch keeps only its examples of nonzero weight. None: unweighted."""
    if key is None:
        return coreset, None
    by_index = {}
    for c, w in scores["weights"][key].items():
        by_index.update(zip(scores["indices"][c][:len(w)].tolist(), w.tolist()))
    weights = np.array([by_index.get(int(i), np.nan) for i in coreset])
    if np.isnan(weights).any():
        raise UserError(f"score file {path}: its {key} weights do not cover the coreset; rescore with compute_cld_scores.py")
    if scores["method"] == "gradmatch":  # DeepCore trains on the examples OMP gave a nonzero weight
        keep = weights > 0
        progress.say(f"gradmatch keeps the {int(keep.sum())} of its {len(coreset)} selected examples whose weight is "
                     "nonzero")
        coreset, weights = coreset[keep], weights[keep]
        if not len(coreset):
            raise UserError(f"score file {path}: every gradmatch weight of budget {key} is zero; nothing to train on")
    return coreset, weights


def _train(s: CoresetOptions, session, files: paths.RunFiles, recipe: Recipe, coreset: np.ndarray,
           weights: np.ndarray | None, scores: dict, score_path: str, model_arch: str, score_arch: str,
           budget: tuple[str, float], continued: bool = False) -> dict:
    info, is_main = session.data.info, session.dist.is_main
    say = progress.say if is_main else (lambda *a, **k: None)
    identity = {"stage": "coreset", "dataset": info.name, "model_arch": model_arch, "manual_seed": s.manual_seed,
                "coreset_size": int(len(coreset)), "coreset_hash": _digest(coreset, weights),
                "world_size": session.dist.world,
                **recipe_identity(recipe, session.precision, s.cpu_kernels)}
    run = RunState(session.model, session.trainer, session.scheduler, files, identity, asdict(s), is_main)
    seconds_before = 0.0
    if s.resume_path:
        seconds_before = float(run.resume(s.resume_path, recipe.epochs, s.overwrite, log=say,
                                          continued=continued).get("seconds", 0.0))
        say(f"resumed {s.resume_path} after epoch {run.epoch}")
    say(f"coreset of {len(coreset)} {info.name} examples ({s.order} of {scores['method']} scores by {score_arch}, "
        f"{budget[0].replace('_', ' ')} {budget[1]}); training {model_arch} on {where(session)} in {session.precision}")
    _say_training_plan(session, len(coreset), say)
    if schedule_note(recipe):
        say(schedule_note(recipe))
    start = time.perf_counter()
    eta = progress.Eta(recipe.epochs, run.epoch)
    for epoch in range(run.epoch, recipe.epochs):
        improved = run.end_epoch(session.train_and_test(coreset, s.manual_seed, epoch, weights))
        with distributed.fail_together():  # a failed write (disk full) stops every process
            if is_main:
                run.save(improved, {"seconds": seconds_before + time.perf_counter() - start})
        eta.step()
        say(epoch_line(run.rows[-1], recipe.epochs, eta))
    # Accuracy on the coreset itself, in eval mode and without augmentation: has training converged?
    on_coreset = session.evaluate(session.train_source, coreset, desc="coreset accuracy")
    fit = 100.0 * float(on_coreset["correct"].double().mean())
    converged = fit >= s.fit_threshold
    if is_main and not converged:
        warn(f"the model fit only {fit:.2f}% of its own coreset (below --fit_threshold {s.fit_threshold:g}): it did "
             f"not learn it, so its test accuracy says little about the coreset; train longer (--epochs) or with "
             f"more steps per epoch (a smaller --batch_size); recorded as converged false{_few_steps(session, len(coreset))}",
             kind=UNFIT)
    result = {
        "name": files.name, "dataset": info.name, "model_arch": model_arch, "score_path": score_path,
        "method": scores["method"], "score_model_arch": score_arch, "order": s.order,
        "samples_per_class": budget[1] if budget[0] == "samples_per_class" else None,
        "fraction": budget[1] if budget[0] == "fraction" else None, "coreset_size": int(len(coreset)),
        "manual_seed": s.manual_seed, **recipe.as_dict(),
        "precision": session.precision, "compile": str(s.compile), "world_size": session.dist.world,
        "cpu_kernels": s.cpu_kernels, "machine": session.machine,
        "commit": project_commit(), "best_test_acc": round(run.best_acc, 4),
        "final_test_acc": round(float(run.rows[-1]["test_acc"]), 4),
        "final_train_acc": round(fit, 4), "converged": converged, "fit_threshold": s.fit_threshold,
        "optimizer_steps": session.optimizer_steps(len(coreset)),
        "seconds": round(seconds_before + time.perf_counter() - start, 2), "config": asdict(s),
        "coreset_indices": coreset.tolist(), "weighted": weights is not None,
        "coreset_weights": None if weights is None else weights.tolist(),
        "snapshot_epoch": scores.get("snapshot_epoch"), "selection_model": _selection_model(scores),
    }
    with distributed.fail_together():  # every process returns once the result is written
        if is_main:
            write_result(s.results_dir, files.name, result)
    say(f"best test accuracy {result['best_test_acc']:.2f}%, final {result['final_test_acc']:.2f}%; accuracy on "
        f"the coreset {result['final_train_acc']:.2f}%; result in {files.output}")
    distributed.teardown()
    return result


def _warn_foreign(results_dir: str) -> None:
    """One warning for the JSONs of ``runs/`` that are not results of stage 3, however many."""
    problems = list(foreign_results(results_dir).values())
    if len(problems) == 1:
        warn(f"{problems[0]}; results.csv leaves it out")
    elif problems:
        warn(f"{len(problems)} files of {paths.runs_dir(results_dir)} are not results of stage 3; results.csv leaves "
             f"them out: {'; '.join(problems[:3])}" + (f"; and {len(problems) - 3} more" if len(problems) > 3 else ""))


def _say_training_plan(session, examples: int, say) -> None:
    """How many SGD steps the run takes. Few steps are no warning by themselves (the demo's small
    coresets fit in fewer than 100): :func:`_few_steps` advises more only when the model did not fit."""
    r = session.recipe
    steps = session.optimizer_steps(examples)
    per_epoch = steps // r.epochs
    say(f"training plan: {steps} optimizer steps ({r.epochs} epochs x {per_epoch} batch{'es' if per_epoch != 1 else ''} "
        f"of at most {r.batch_size})")


def _few_steps(session, examples: int) -> str:
    """For the warning about a model that did not fit its coreset: '; it took only N optimizer steps
    ...' with a batch size (and, if need be, epochs) that gives enough, when it took fewer than
    ``MIN_STEPS``; '' otherwise."""
    r = session.recipe
    steps = session.optimizer_steps(examples)
    if steps >= MIN_STEPS:
        return ""
    batch, epochs = recipe_for_steps(-(-examples // session.dist.world), r.batch_size, r.epochs)
    return (f"; it took only {steps} optimizer steps (at least {MIN_STEPS} are advised): e.g. --batch_size {batch}"
            + (f" --epochs {epochs}" if epochs != r.epochs else "")
            + f" gives {optimizer_steps(examples, batch, epochs, session.dist.world)}")


def _selection_model(scores: dict) -> str | None:
    """What the weights of a model method's score file came from (None for trajectory methods)."""
    options = scores.get("options")
    if scores.get("snapshot_epoch") is None or not isinstance(options, dict):
        return None
    return str(options.get("selection_model", "snapshot"))


def _digest(indices: np.ndarray, weights: np.ndarray | None = None) -> str:
    """A short fingerprint of the coreset (and its weights), so a resume cannot silently train on
    another one."""
    h = hashlib.sha1(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    if weights is not None:
        h.update(np.ascontiguousarray(weights, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]

