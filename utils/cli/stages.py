"""What the scripts (and the grid) run: a stage's checked flags mapped onto its typed options, the
stage itself, and what the command line prints after it.

Each stage takes its own option record (:class:`utils.collect.options.CollectOptions`,
:class:`utils.scoring.options.ScoreOptions`, :class:`utils.coreset_training.options.CoresetOptions`),
whose fields are the flags of its script; the stages never see the command line. Torch is
imported when a stage runs, after every flag was checked.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, TypeVar

from utils.cli.config import STAGE2, STAGE3
from utils.errors import UserError
from utils.train.options import optimizer_steps, recipe_for_steps

T = TypeVar("T")
# What the printed stage-3 command repeats of stage 1's flags when they differ from the defaults.
_CARRIED = ("data_path", "epochs", "batch_size", "test_batch_size", "learning_rate", "momentum", "weight_decay",
            "disable_nesterov", "schedule", "gamma", "augment", "device", "precision", "compile", "threads", "cpu_kernels", "workers")


def options_of(cls: type[T], settings: Mapping[str, Any]) -> T:
    """The option record ``cls`` from a script's checked settings: every field from the flag of its
    name (the two lists are the same; a test holds them together)."""
    return cls(**{f.name: settings[f.name] for f in fields(cls)})


def run_stage1(settings: Mapping[str, Any]) -> str:
    """Stage 1; returns the loss (or sums) file ('' with --evaluate_only)."""
    from utils.collect.collect_losses import collect_losses
    from utils.collect.options import CollectOptions

    return collect_losses(options_of(CollectOptions, settings))


def run_stage2(settings: Mapping[str, Any]) -> str:
    """Stage 2, then the stage-3 command to run next; returns the score file."""
    from utils.scoring.compute_scores import score
    from utils.scoring.options import ScoreOptions

    scored = score(options_of(ScoreOptions, settings))
    if scored.record.get("source") == "recorder":
        _next_for_recorded(settings, scored)
        return scored.path
    command, comment = next_command(scored.record, scored.path, scored.run_config)
    print("\nnext (k = 10% of the smallest class; choose your own budget; the recipe is stage 1's):")
    if comment:
        print(f"  {comment}")
    print(f"  {command}")
    return scored.path


def _next_for_recorded(settings: Mapping[str, Any], scored: Any) -> None:
    """A recorded loss file names no dataset stage 3 could train on: the next step is the coreset's
    ids, which the user trains on in their own loop."""
    from utils.scoring.export import default_export_path

    if settings["export_coreset"]:
        print(f"\nnext: train on the examples of {settings['export_coreset']} in your own training loop")
        return
    text_ids = scored.record["train_ids"].dtype.kind == "U"
    # The same scoring flags (so the same ranking), figures and tables left out; --overwrite
    # because the score file now exists (it is rewritten with the same rankings).
    unused = ("stability", "stability_epochs", "stability_k", "figure", "figure_class")
    values = {**settings, **{name: STAGE2[name].default for name in unused}, "overwrite": True,
              "loss_path": settings["loss_path"] or scored.record["loss_path"],
              "export_coreset": default_export_path(scored.path, text_ids), "fraction": 0.1}
    command = STAGE2.render("compute_cld_scores.py", values, keep=("loss_path", "method", "export_coreset", "fraction"))
    print("\nnext: this file was recorded from your own loop, so there is no dataset here to train on: write the ids "
          "of the coreset (10% of each group; choose your own budget) and train on them in your own loop:")
    print(f"  {command}")


def run_stage3(settings: Mapping[str, Any]) -> dict:
    """Stage 3; returns the run's result."""
    from utils.coreset_training.options import CoresetOptions
    from utils.coreset_training.train_on_coreset import train_on_coreset

    return train_on_coreset(options_of(CoresetOptions, settings))


STAGES = {1: run_stage1, 2: run_stage2, 3: run_stage3}


def next_command(record: dict, out: str, config: dict) -> tuple[str, str]:
    """The stage-3 command for a score file, and a comment on it ('' when there is none).

    It repeats stage 1's recipe (``config``, what the loss file recorded) where it differs from the
    defaults, so that copying it trains as stage 1 did, except where that recipe would take fewer
    than :data:`utils.train.options.MIN_STEPS` SGD steps on the small coreset: then the batch size
    is lowered (and if need be the epochs raised), and the comment says why.
    """
    from utils.scoring.compute_scores import suggested_k

    sizes = [v.size for v in record["indices"].values()]
    k = suggested_k(sizes)
    values: dict[str, Any] = {"score_path": out, "dataset": record["dataset"], "model_arch": record["model_arch"],
                              "samples_per_class": k}
    for name in _CARRIED:
        if name in config:
            try:
                values[name] = STAGE3[name].kind.check(config[name], name)
            except UserError:
                continue  # a value the file garbled is left out, not printed
    examples = k * len(sizes)
    batch, epochs = (values.get(name, STAGE3[name].default) for name in ("batch_size", "epochs"))
    new_batch, new_epochs = recipe_for_steps(examples, batch, epochs)
    comment = ""
    if (new_batch, new_epochs) != (batch, epochs):
        values.update(batch_size=new_batch, epochs=new_epochs)
        changed = f"--batch_size {new_batch}" + (f" --epochs {new_epochs}" if new_epochs != epochs else "")
        comment = (f"# {examples} examples at batch {batch} for {epochs} epochs would be "
                   f"{optimizer_steps(examples, batch, epochs)} SGD steps, too few to fit a model; {changed} gives "
                   f"{optimizer_steps(examples, new_batch, new_epochs)}")
    keep = ("score_path", "dataset", "model_arch", "samples_per_class")
    return STAGE3.render("train_on_coresets.py", values, keep=keep), comment
