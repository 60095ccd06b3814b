"""Stage 2: what stage 1 recorded -> a score file ranking every class, best first.

Trajectory methods (CLD and the training-dynamics baselines) read the loss file, or CLD's running
sums, with numpy alone; model methods (:mod:`utils.scoring.snapshot`) evaluate a weight snapshot of the
same run once. Every method writes the same score file (docs/formats.md), and the summary ends
with the stage-3 command that trains with the recipe of stage 1. A loss file recorded from the
user's own loop (:mod:`utils.scoring.export`) names no dataset of ours and holds no weights: it is
scored by the trajectory methods, and its coreset is exported as ids (``--export_coreset``).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from utils import paths
from utils.data.datasets import dataset_info
from utils.errors import UserError, require
from utils.files.atomic import atomic_write, check_new_output, check_output_free
from utils.files.losses import load_losses, load_sums
from utils.files.scores import load_scores, save_scores
from utils.paths import check_safe_name
from cld_recorder import CLDSums
from utils.core import cld as S
from utils.core.ranking import rank_per_class
from utils.core.selection import budgets_of, fraction_k, smallest_class
from utils.methods import registry as methods
from utils.methods.record import Method
from utils.scoring import export
from utils.scoring.options import ScoreOptions
from utils.train.options import COLLECT_PRECISIONS, PRECISIONS, Recipe

LEGACY_DEFAULT_SEED = 1234  # the paper code's default manual_seed
# The paper's run: the dataset and model of a legacy loss file that records none (and of the
# default --loss_path) when --dataset / --model_arch are not given.
DEFAULT_DATASET, DEFAULT_MODEL_ARCH = "CIFAR100", "resnet18"


@dataclass(frozen=True)
class Scored:
    """What stage 2 wrote: the score file, its record, and the stage-1 config the loss file recorded
    (from which the command line prints the stage-3 command that trains with stage 1's recipe)."""
    path: str
    record: dict
    run_config: dict


def score(s: ScoreOptions) -> Scored:
    """Run stage 2: score, rank and write the score file; prints a summary. When only --figure,
    --stability or --export_coreset is new and the score file already holds this loss file's
    ranking by the same method and options, that file is used as it is and only those are written."""
    method = methods.get(s.method)
    if s.output_path and not _adds_outputs(s):
        check_output_free(s.output_path, s.overwrite)  # before reading a possibly large loss file
    if s.export_coreset:
        check_output_free(s.export_coreset, s.overwrite)
        export.check_request(s, method)
    loss_path = s.loss_path or paths.loss_path(paths.SCORES_DIR, s.dataset or DEFAULT_DATASET,
                                               s.model_arch or DEFAULT_MODEL_ARCH, LEGACY_DEFAULT_SEED)
    started = time.perf_counter()
    losses = _read(loss_path, s, method)
    ds, arch, seed, n_cls = _run_metadata(losses, loss_path, s.dataset, s.model_arch)
    out = s.output_path or paths.score_path(os.path.dirname(loss_path), method.name, ds, arch, seed)
    require(os.path.abspath(out) != os.path.abspath(loss_path),
            f"--output_path {out} is the loss file itself; choose another output path")
    require(not s.export_coreset or os.path.abspath(s.export_coreset) not in (os.path.abspath(out),
            os.path.abspath(loss_path)), f"--export_coreset {s.export_coreset} is the score or loss file; choose "
            "another path")
    S.check_labels(losses, n_cls)
    options = _options(method, s, seed, losses.get("config") or {})
    budgets = _model_budgets(method, s, losses, loss_path, options)
    existing = _existing(s, method, out, loss_path, options)
    _check_outputs(s, losses, out, score_file=existing is None)
    ids = export.train_ids(losses, loss_path)
    export.check_ids(s, ids, losses["tr_lbl"])
    recorded = export.recorded_fields(losses, ids, n_cls, loss_path)
    if existing is not None:
        record, values = existing, _values_of(existing, losses) if s.stability else None
        print(f"using the existing score file {out} (the same method and options)")
    else:
        record, values = _score_and_save(s, method, losses, loss_path, options, budgets, out,
                                         (ds, arch, seed, n_cls), recorded)
        print(_summary(record, method, out, time.perf_counter() - started))
    _write_outputs(s, method, losses, options, out, values, record, ids)
    return Scored(out, record, losses.get("config") or {})


def _score_and_save(s: ScoreOptions, method: Method, losses: dict, loss_path: str, options: dict, budgets: tuple,
                    out: str, run: tuple[str, str, int, int], recorded: dict) -> tuple[dict, np.ndarray | None]:
    """Score and rank every class, write the score file; returns its record and, for a trajectory
    method, every training column's score."""
    ds, arch, seed, n_cls = run
    values = None
    if method.family == "trajectory":
        values, extra = _score_trajectories(losses, method, s, options)
        indices, per_class = rank_per_class(values, losses["tr_lbl"], losses["train_indices"])
    else:
        from utils.scoring import snapshot  # torch, only for the model methods

        evaluation = snapshot.Evaluation(s.snapshot_epoch, s.device, s.collect_precision, s.data_path, s.save_features,
                                      s.threads, budgets, s.cpu_kernels)
        indices, per_class, extra = snapshot.score_classes(method, losses, loss_path, evaluation, options)
    record = {
        "method": method.name, "dataset": ds, "model_arch": arch, "manual_seed": seed, "num_classes": n_cls,
        "loss_path": os.path.abspath(loss_path), "options": options,
        "top_means": method.top_means, "hard_end": method.hard_end, "greedy": method.greedy,
        "indices": indices, "scores": per_class, **extra, **recorded,
    }
    save_scores(out, record, replace=s.overwrite)  # two racing runs: one writes, the other is refused
    return record, values


def _model_budgets(method: Method, s: ScoreOptions, losses: dict, loss_path: str, options: dict) -> tuple:
    """A model method: the selection recipe checked, and a weighted method's budgets (recorded in
    ``options``), refused before the evaluation pass if one does not fit."""
    if method.family == "trajectory":
        return ()
    _check_selection_model(s.selection_model, losses.get("config"), loss_path)
    if not method.weighted:
        return ()
    budgets = budgets_of(s.budgets) or (("samples_per_class", suggested_k(np.bincount(losses["tr_lbl"]))),)
    _check_budgets(budgets, losses["tr_lbl"])
    options["budgets"] = [value for _, value in budgets]
    return budgets


def _adds_outputs(s: ScoreOptions) -> bool:
    """Whether the command asks for outputs that an existing score file can be given without
    rescoring (--figure, --stability, --export_coreset)."""
    return bool(s.figure or s.stability or s.export_coreset)


def _existing(s: ScoreOptions, method: Method, out: str, loss_path: str, options: dict) -> dict | None:
    """The existing score file ``out`` when this command only adds outputs to it: it ranks this loss
    file by the same method and recorded options (without --overwrite). None otherwise (a file that
    does not match is then refused as any existing output)."""
    if s.overwrite or not _adds_outputs(s) or not os.path.isfile(out):
        return None
    try:
        record = load_scores(out)
    except UserError:
        return None
    same = (record.get("method") == method.name and record.get("loss_path") == os.path.abspath(loss_path)
            and _same_options(record.get("options"), options))
    return record if same else None


def _same_options(recorded: Any, options: dict) -> bool:
    try:
        return isinstance(recorded, dict) and bool(recorded == options)
    except (TypeError, ValueError):  # an array in a hand-made file: not the flags' values
        return False


def _values_of(record: Mapping[str, Any], losses: dict) -> np.ndarray | None:
    """Every training column's score, read back from a score file's per-class rankings (None when
    they do not rank every column once)."""
    train = np.asarray(losses["train_indices"])
    idx = np.concatenate([np.asarray(v) for v in record["indices"].values()]) if record["indices"] else np.empty(0)
    if record.get("scores") is None or idx.size != train.size:
        return None
    order = np.argsort(train, kind="stable")
    pos = np.searchsorted(train[order], idx)
    if (pos >= train.size).any() or not np.array_equal(train[order][np.minimum(pos, train.size - 1)], idx):
        return None
    values = np.empty(train.size, dtype=np.float64)
    values[order[pos]] = np.concatenate([np.asarray(record["scores"][c]) for c in record["indices"]])
    return values


def _write_outputs(s: ScoreOptions, method: Method, losses: dict, options: dict, out: str,
                   values: np.ndarray | None, record: dict, ids: np.ndarray) -> None:
    """The outputs beside the score file: the coreset's ids, the stability table, the figure."""
    if s.export_coreset:
        print(export.export_coreset(s, record, ids))
    if s.stability:
        _stability(s, method, losses, options, out, values)
    elif s.figure:
        from utils.scoring.overview_figure import overview  # matplotlib, only when a figure is asked for

        overview(s.figure, losses, record, s.figure_class, s.data_path or losses.get("data_path") or "",
                 replace=s.overwrite)
        print(f"figure        {s.figure}")


def stability_csv(out: str) -> str:
    """The stability table's CSV, beside the score file ``out``."""
    return os.path.splitext(out)[0] + "_stability.csv"


def _check_outputs(s: ScoreOptions, losses: dict, out: str, score_file: bool = True) -> None:
    """Every file stage 2 will write, and every flag that shapes one, checked against the loss file
    before the first is written: a refusal leaves nothing behind, and none replaces a file without
    --overwrite (``score_file=False``: the score file exists and is used as it is)."""
    from utils.core.stability import check_budgets_below_classes, check_grid, default_grid

    outputs = [(out if score_file else "", "--output_path"), (s.export_coreset, "--export_coreset"), (s.figure, "--figure"),
               (stability_csv(out) if s.stability else "", "--stability table")]
    for path, what in outputs:
        if path:
            check_new_output(path, s.overwrite, what)
    if s.figure and s.figure_class is not None:
        present = np.unique(losses["tr_lbl"])
        require(s.figure_class in present, f"--figure_class {s.figure_class} is not a class of this run (its classes "
                f"are {int(present.min())}..{int(present.max())})")
    if s.stability:
        check_grid(sorted(s.stability_epochs) or default_grid(len(losses["epoch"])), len(losses["epoch"]))
        check_budgets_below_classes(s.stability_k, losses["tr_lbl"], "--stability_k")


def _stability(s: ScoreOptions, method: Method, losses: dict, options: dict, out: str,
               full: np.ndarray | None) -> None:
    """The ranking from the first E recorded epochs against all of them (``full``: the scores from
    all of them): a table, a CSV beside the score file, and with --figure its curve."""
    from utils.core.stability import STABILITY_COLUMNS, default_grid, stability

    n = int(len(losses["epoch"]))
    grid = sorted(s.stability_epochs) or default_grid(n)
    rows = stability(losses, lambda used: method.score(used, **options), grid, s.stability_k, full)
    path = stability_csv(out)
    text = ",".join(STABILITY_COLUMNS) + "\n" + "".join(
        f"{r['epochs']},{r['k']},{r['mean_jaccard']!r},{r['min_jaccard']!r},{r['spearman']!r}\n" for r in rows)
    atomic_write(path, lambda f: f.write(text.encode()), replace=s.overwrite)
    print(f"\nstability of {method.name}: its ranking from the first E of {n} recorded epochs against all {n}")
    print(f"  {'E':>5}  {'k':>6}  {'mean Jaccard':>12}  {'min Jaccard':>11}  {'Spearman':>8}")
    for r in rows:
        print(f"  {r['epochs']:>5}  {r['k']:>6}  {r['mean_jaccard']:>12.4f}  {r['min_jaccard']:>11.4f}  "
              f"{r['spearman']:>8.4f}")
    print(f"wrote         {path}")
    if s.figure:
        from utils.scoring.overview_figure import stability_curve

        stability_curve(s.figure, rows, method.name, n, replace=s.overwrite)
        print(f"figure        {s.figure}")


def _check_budgets(budgets: tuple[tuple[str, float], ...], labels: np.ndarray) -> None:
    """Every per-class count of ``--budgets`` fits every class: refused before the evaluation pass,
    not after it (a fraction always fits)."""
    smallest, size = smallest_class(labels)
    for kind, value in budgets:
        require(kind != "samples_per_class" or value <= size, f"--budgets {value}: class {smallest} has "
                f"only {size} training examples; give a smaller count or a fraction")


def suggested_k(class_sizes) -> int:
    """The budget of the stage-3 command stage 2 prints: 10% of the smallest class (at least 1)."""
    sizes = [int(n) for n in class_sizes if n > 0]
    return fraction_k(0.1, min(sizes))


def _check_selection_model(selection_model: str, config, loss_path: str) -> None:
    """``--selection_model deepcore`` is recorded only for a run of DeepCore's selection recipe, so
    that a table saying so is true: constant learning rate (no schedule) and no augmentation."""
    if selection_model != "deepcore":
        return
    config = config if isinstance(config, dict) else {}
    require(config.get("schedule") == [] and config.get("augment") is False,
            f"--selection_model deepcore names a run of DeepCore's selection recipe (a constant learning rate: "
            f"--schedule [], and --augment false), but {loss_path} was trained with schedule "
            f"{config.get('schedule')!r} and augment {config.get('augment')!r}")


def _options(method: Method, s: ScoreOptions, seed: int, config: dict) -> dict:
    """The flags ``method`` reads (recorded in the score file), the seed first: the run's unless
    ``--seed`` is given; an unset flag the method takes from the run (``run_defaults``) gets the
    run's value."""
    options = {"seed": seed if s.seed is None else s.seed, **{n: getattr(s, n) for n in method.options if n != "seed"}}
    for name, key in method.run_defaults:
        if options[name] is None:
            options[name] = float(config.get(key, getattr(Recipe(), key)))
    return options


def _read(path: str, s: ScoreOptions, method: Method) -> dict:
    """The loss file (or legacy loss pickle), or a sums file, checked against what the method needs."""
    if not os.path.exists(path):
        raise UserError(f"loss file {path} not found; {_made_by(path)}")
    if path.endswith(".npz"):
        sums = load_sums(path)
        # how to get the full trajectories: stage 1's flag, or the recorder's argument
        full = ('record it again with LossRecorder(..., trajectories="full")' if sums.get("source") == "recorder"
                else "rerun stage 1 with --trajectories full")
        require(not s.stability, f"{path} holds CLD's running sums of all {len(sums['epoch'])} epochs only, so "
                f"--stability has one E available ({len(sums['epoch'])}); {full} to compare earlier epochs")
        require(not s.figure, f"{path} holds CLD's running sums only; --figure draws the loss trajectories: {full}")
        require(method.name == "cld", f"{path} holds CLD's running sums only; method {method.name!r} needs the full "
                f"trajectories or a model: {full}")
        require(s.first_epochs == 0 and s.epoch_stride == 1, "--first_epochs and --epoch_stride need the full "
                "trajectories; a sums file holds only the sums over every epoch")
        _check_config(sums.get("config"), path)
        return sums
    losses = load_losses(path, s.split_path)
    require(method.family == "trajectory" or not export.is_recorded(losses), f"method {method.name!r} scores from "
            f"the model's weights, and {path} was recorded from your own loop without them; use a trajectory method "
            f"({', '.join(m.name for m in methods.METHODS.values() if m.family == 'trajectory')})")
    _check_config(losses.get("config"), path)
    if method.family == "trajectory":
        check_signals(losses, method)
    return losses


# The stage-1 values stage 2 reads from a loss file's recorded config, and what each must be.
_RECORDED = {
    "precision": lambda v: v in PRECISIONS, "collect_precision": lambda v: v in COLLECT_PRECISIONS,
    "learning_rate": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf"),
    "test_batch_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "workers": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "decode": lambda v: v in ("cpu", "gpu"), "data_path": lambda v: isinstance(v, str),
    "augment": lambda v: isinstance(v, bool),
    "schedule": lambda v: isinstance(v, list) and all(isinstance(m, int) and not isinstance(m, bool) for m in v),
}


def _check_config(config: Mapping[str, Any] | None, path: str) -> None:
    """The recorded stage-1 values that stage 2 reads must be values stage 1 takes (the precision
    and batch of the evaluation pass, GLISTER's default step size, the selection recipe)."""
    for name, ok in _RECORDED.items():
        if name in (config or {}) and not ok(config[name]):
            raise UserError(f"loss file {path}: its recorded config is corrupt ({name} = {config[name]!r})")


def check_signals(losses: Mapping[str, Any], method: Method) -> None:
    """Raise a user error if the loss dict lacks an array that ``method`` reads."""
    for key in method.inputs:
        if losses.get(key) is None:
            legacy = " (legacy loss files of the paper's code record losses only)" if losses.get("legacy") else ""
            usable = [m.name for m in methods.METHODS.values() if m.family == "trajectory"
                      and all(losses.get(k) is not None for k in m.inputs)]
            again = ("record it in your loop (cld_recorder.py)" if export.is_recorded(losses)
                     else "record it by rerunning stage 1 of this project")
            raise UserError(f"method {method.name!r} needs the signal {key!r}, which the loss file lacks{legacy}; "
                            f"use one of {', '.join(usable)}, or {again}")


def _made_by(path: str) -> str:
    """How to make a missing loss (or sums) file: the stage-1 command that writes it."""
    source = paths.source_of_loss_file(path)
    if source is None:
        return "it is written by stage 1 (get_loss_values.py); pass --loss_path with its file"
    dataset, arch, seed, sums = source
    words = ["python get_loss_values.py", "--dataset", dataset, "--model_arch", arch, "--manual_seed", str(seed)]
    folder = os.path.dirname(path)
    if os.path.normpath(folder) != os.path.normpath(paths.SCORES_DIR):
        words += ["--scores_dir", folder or "."]
    if sums:
        words += ["--trajectories", "sums"]
    return "make it with stage 1: " + " ".join(words) + " (with your recipe flags)"


def _run_metadata(losses: dict, loss_path: str, dataset: str | None,
                  model_arch: str | None) -> tuple[str, str, int, int]:
    """dataset, model_arch, manual_seed, num_classes: from the file; the flags only fill the gaps
    of legacy files (whose split file may carry them), and a flag given that differs from what the
    file records is refused (it would be ignored)."""
    recorded_ds, recorded_arch = losses.get("dataset"), losses.get("model_arch")
    if export.is_recorded(losses):  # the user's own data: its safe name, no dataset of ours
        ds = check_safe_name(recorded_ds, f"dataset of {loss_path}")
        given = dataset
    else:
        ds = dataset_info(recorded_ds or dataset or DEFAULT_DATASET).name
        given = None if dataset is None else dataset_info(dataset).name
    _check_given("dataset", given, ds if recorded_ds else None, loss_path)
    _check_given("model_arch", model_arch, recorded_arch, loss_path)
    arch = check_safe_name(recorded_arch or model_arch or DEFAULT_MODEL_ARCH, f"model of {loss_path}")
    seed = losses.get("manual_seed")
    if seed is None:
        found = re.search(r"_seed(\d+)_", os.path.basename(loss_path))
        seed = int(found.group(1)) if found else LEGACY_DEFAULT_SEED
    n_cls = losses.get("num_classes")
    if n_cls is None:
        n_cls = int(max(losses["tr_lbl"].max(initial=-1), losses["val_lbl"].max(initial=-1))) + 1
    return ds, arch, int(seed), int(n_cls)


def _check_given(flag: str, given: str | None, recorded: str | None, loss_path: str) -> None:
    """A --dataset or --model_arch given for a loss file that records another is refused."""
    require(given is None or not recorded or given == recorded, f"--{flag} {given}: {loss_path} records {flag} "
            f"{recorded}; leave --{flag} out (a file that records its {flag} is scored as it) or give the loss "
            f"file of {given}")


def _score_trajectories(losses: dict, method: Method, s: ScoreOptions, options: dict) -> tuple[np.ndarray, dict]:
    """Every training example's score from the loss trajectories (or CLD's sums), and the epochs used."""
    if "sums" in losses:
        sums = CLDSums(losses["tr_lbl"], losses["val_lbl"], int(losses["num_classes"]))
        sums.restore(losses["sums"])
        require(sums.epochs >= S.MIN_EPOCHS, f"the sums hold {sums.epochs} epochs; CLD needs at least "
                f"{S.MIN_EPOCHS} (train longer in stage 1)")
        values, epochs = sums.scores(), np.asarray(losses["epoch"][:sums.epochs], dtype=np.int64)
    else:
        used = S.select_epochs(losses, s.first_epochs, s.epoch_stride)
        values, epochs = method.score(used, **options), np.asarray(used["epoch"], dtype=np.int64)
    return values, {"epochs_used": epochs}


def _summary(record: dict, method: Method, out: str, seconds: float) -> str:
    sizes = np.array([v.size for v in record["indices"].values()])
    all_scores = np.concatenate(list(record["scores"].values()))
    lines = [
        f"method        {record['method']}  (top of each ranking = {method.top_means})",
        f"run           {record['dataset']} / {record['model_arch']} / seed {record['manual_seed']}",
        f"classes       {sizes.size} ranked (of {record['num_classes']}); examples per class "
        f"min {sizes.min()} / median {int(np.median(sizes))} / max {sizes.max()}",
    ]
    if "epochs_used" in record:
        ep = record["epochs_used"]
        stride = record["options"].get("epoch_stride", 1)
        # The file numbers epochs from 0; stage 1 prints "epoch 1/E" after the first.
        lines.append(f"epochs used   {ep.size}: after epoch {ep[0] + 1} .. {ep[-1] + 1}"
                     + (f" (stride {stride})" if stride > 1 else ""))
    if "snapshot" in record:
        lines.append(f"weights       {record['snapshot']} (after epoch {record['snapshot_epoch']}), evaluated in "
                     f"{record['options']['collect_precision']}")
    lines.append(f"{'greedy gains' if method.greedy else 'score range '}  {all_scores.min():.4g} .. "
                 f"{all_scores.max():.4g}")
    if record["method"] == "cld":
        lines.append(f"positive CLD  {100.0 * np.mean(all_scores > 0):.1f}% of examples")
    lines.append(f"wrote         {out}  ({seconds:.1f} s)")
    return "\n".join(lines)
