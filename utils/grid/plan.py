"""A grid of the three stages, as in the tables of *Coresets from Trajectories: Selecting Data via
Correlation of Loss Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025): its steps, and each step as
the exact shell command that runs it.

The grid: stage 1 once per scoring model (seed ``score_seed``), stage 2 once per (scoring model,
method), stage 3 once per (scoring model, method, order, size, training model, seed), the orders
being ``orders`` plus the method's own ``method_orders``. :mod:`utils.grid.runner` runs the steps;
:mod:`utils.grid.table` makes the table of their results.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any, Sequence

from utils import paths
from utils.cli import config
from utils.cli.flags import FlagSet, Settings
from utils.cli.kinds import check_no_controls
from utils.errors import UserError
from utils.files.atomic import atomic_write
from utils.methods import registry as methods
from utils.methods.record import default_snapshot

SCRIPTS = {1: "get_loss_values.py", 2: "compute_cld_scores.py", 3: "train_on_coresets.py"}
FLAGSETS: dict[int, FlagSet] = {1: config.STAGE1, 2: config.STAGE2, 3: config.STAGE3}
# Flags every printed command names even at their default values, so that a command says which
# run it is at a glance.
ALWAYS = ("dataset", "model_arch", "epochs", "manual_seed", "loss_path", "method", "score_path",
          "samples_per_class", "fraction", "order", "name")


@dataclass
class Step:
    """One run of one stage: the keyword flags of its stage, the file whose existence means done,
    the ``*_last.pth`` a killed run leaves (stages 1 and 3) and the lock a running one holds."""
    stage: int
    flags: dict
    output: str
    lock: str
    last: str = ""
    name: str = ""

    @property
    def script(self) -> str:
        return SCRIPTS[self.stage]


# ----------------------------------------------------------------------------- planning

def _forwarded(g: Settings, stage: int) -> dict:
    """The grid's values of the flags it forwards to ``stage`` under their own names."""
    own = config.GRID_SETS[stage]
    return {name: g[name] for name in FLAGSETS[stage].flags if name in config.GRID.flags and name not in own}


def sizes(g: Settings) -> list[tuple[str, Any]]:
    """[('samples_per_class', k), ...] or [('fraction', f), ...]."""
    if g.samples_per_class is not None:
        return [("samples_per_class", k) for k in g.samples_per_class]
    return [("fraction", f) for f in g.fractions]


def snapshot_epoch(g: Settings, epochs: int) -> int:
    """The weights the grid's model methods score from: ``--snapshot_epoch``, else the one snapshot
    stage 1 keeps (of several, the 40-epoch one), else its final weights."""
    if g.snapshot_epoch is not None:
        return g.snapshot_epoch
    kept = sorted(e for e in g.snapshot_epochs if e <= epochs)
    return default_snapshot(kept, epochs, f"stage 1 ({epochs} epochs, --snapshot_epochs {g.snapshot_epochs})")


# DeepCore's selection model (main.py's selection_* defaults and EarlyTrain): SGD with Nesterov,
# lr 0.1, momentum 0.9, weight decay 5e-4, a constant learning rate, no augmentation.
DEEPCORE_SELECTION = dict(learning_rate=0.1, momentum=0.9, weight_decay=5e-4, disable_nesterov=False, schedule=[],
                          augment=False, snapshot_epochs=[])


def _stage1(g: Settings, score_arch: str, recipe: dict, sub: str = "") -> Step:
    """A stage-1 step of ``score_arch`` with ``recipe``, its files under the grid's folders (or
    their subfolder ``sub``)."""
    folders = {k: os.path.join(g[k], sub) if sub else g[k] for k in ("scores_dir", "splits_dir", "checkpoint_path",
                                                                       "logpath")}
    run = paths.run_name(g.dataset, score_arch, g.score_seed)
    sums = g.trajectories == "sums" and not sub
    loss = (paths.sums_path if sums else paths.loss_path)(folders["scores_dir"], g.dataset, score_arch, g.score_seed)
    files = paths.RunFiles(folders["checkpoint_path"], folders["logpath"], run, loss)
    flags = {**_forwarded(g, 1), **recipe, **folders, "dataset": g.dataset, "model_arch": score_arch,
             "manual_seed": g.score_seed}
    if sub:
        flags["trajectories"] = "full"
    return Step(1, flags, loss, files.lock, files.last, run)


def plan(g: Settings) -> list[Step]:
    """Every step of the grid, stage 1 steps first, then stage 2, then stage 3."""
    ones, twos, threes = [], [], []
    recipe1 = {name: g[name] if g[f"score_{name}"] is None else g[f"score_{name}"] for name in config.STAGE1_RECIPE}
    deepcore = g.selection_model == "deepcore"
    for score_arch in g.score_model_arch:
        trajectories = _stage1(g, score_arch, recipe1)
        ones.append(trajectories)
        if deepcore:  # one more run: the model-based methods score from its final weights
            selection = _stage1(g, score_arch, {**recipe1, **DEEPCORE_SELECTION, "epochs": g.selection_epochs},
                                paths.SELECTION_RUNS)
            ones.append(selection)
        for method in g.methods:
            record = methods.get(method)
            source = selection if deepcore and record.uses_model else trajectories
            scores_dir = os.path.dirname(source.output)
            score = paths.score_path(scores_dir, method, g.dataset, score_arch, g.score_seed)
            # A method's options go to it alone (stage 2 refuses another method's option).
            scoring = {**{k: v for k, v in _forwarded(g, 2).items() if not methods.readers(k) or k in record.options},
                       "loss_path": source.output, "method": method}
            if record.uses_model:  # the weights a model method scores from, named in its command
                scoring["snapshot_epoch"] = g.selection_epochs if deepcore else snapshot_epoch(g, recipe1["epochs"])
                scoring["selection_model"] = g.selection_model
            if record.weighted:  # the weights of the grid's own budgets
                scoring["budgets"] = list(g.samples_per_class or g.fractions)
            twos.append(Step(2, scoring, score, paths.lock_of(score)))
            extra = [pair.split(":")[1] for pair in g.method_orders if pair.split(":")[0] == method]
            for order in dict.fromkeys(g.orders + extra):
                if order == "random" and method != g.methods[0]:
                    # A uniform draw within each class's pool does not depend on the method's
                    # ranking: one random baseline (over the first method's file) serves them all.
                    continue
                tag = g.selection_model if record.uses_model else ""
                for size in sizes(g):
                    for model_arch in g.model_archs:
                        for seed in g.seeds:
                            name = paths.coreset_run_name(g.dataset, model_arch, method, score_arch, order, size,
                                                          seed, g.tag, selection=tag)
                            files = paths.RunFiles(g.checkpoint_path, g.logpath, name, paths.run_json(g.results_dir, name))
                            threes.append(Step(3, {**_forwarded(g, 3), "score_path": score, size[0]: size[1],
                                                   "order": order, "dataset": g.dataset, "model_arch": model_arch,
                                                   "manual_seed": seed, "name": name},
                                               files.output, files.lock, files.last, name))
    return ones + twos + threes


# ----------------------------------------------------------------------------- commands

def launcher_of(stage: int, launcher: str) -> str:
    """Stages 1 and 3 train (and may be distributed); stage 2 is one process on one machine."""
    return "python" if stage == 2 else launcher


def command(step: Step, flags: dict | None = None, launcher: str = "python") -> str:
    """The shell command that runs ``step`` (with ``flags`` instead of its own, if given): every
    word quoted, the launcher's too (the runner runs it without a shell, so the script must mean
    the same words, never a ``;`` or ``$(...)`` of theirs)."""
    try:
        words = " ".join(shlex.quote(word) for word in shlex.split(launcher_of(step.stage, launcher)))
    except ValueError as exc:  # an unbalanced quote
        raise UserError(f"--launcher {launcher!r} is not a command line ({exc})") from None
    return FLAGSETS[step.stage].render(step.script, step.flags if flags is None else flags, words, keep=ALWAYS)


def decide(step: Step) -> tuple[str, dict]:
    """('skip' | 'resume' | 'run', flags to run with) from the files on disk now.

    A finished output means skip. A ``*_last.pth`` means a killed run: it continues with
    ``--resume_path`` (one that already holds every epoch, killed while writing its output, just
    writes it). The stage itself refuses a checkpoint of another run or recipe, with the reason;
    the grid then stops there rather than discard that checkpoint.
    """
    if os.path.exists(step.output):
        return "skip", step.flags
    if step.last and os.path.exists(step.last):
        return "resume", {**step.flags, "resume_path": step.last}
    return "run", step.flags


def tag(stage: int | str) -> str:
    """The end of every command line of stage ``stage`` in an emitted script (``'table'`` for the
    last). The array-job recipe selects a stage's lines by it, anchored at the line's end: every
    value is quoted and holds no line break, so a quoted value can never end a line and the tag
    occurs only where the script put it."""
    return f"  # {stage if stage == 'table' else f'stage{stage}'}"


def recipe(script: str, stage: int) -> str:
    """The array-job recipe of one stage: task i runs the i-th command line of that stage."""
    return f"grep '{tag(stage).strip()}$' {shlex.quote(script)} | sed -n \"${{SLURM_ARRAY_TASK_ID}}p\" | bash"


def guarded(step: Step, launcher: str = "python") -> str:
    """One script line: skip when done, continue from ``*_last.pth`` when one exists."""
    out = shlex.quote(step.output)
    cmd = command(step, launcher=launcher)
    if step.last:  # the flag as one word, whatever the path holds (a space would split an $(echo ...))
        last = shlex.quote(step.last)
        line = f"[ -e {out} ] || {{ r=(); [ -e {last} ] && r=(--resume_path {last}); {cmd} \"${{r[@]}}\"; }}"
    else:
        line = f"[ -e {out} ] || {cmd}"
    # The flags refuse control characters; a line break here would split the line and let the
    # recipe run its pieces as commands, so a step built around the flags is refused too.
    check_no_controls(line, f"the stage-{step.stage} command of {step.output!r}")
    return line + tag(step.stage)


def stage_counts(steps: Sequence[Step]) -> dict[int, int]:
    """{stage: number of its steps} for stages 1, 2 and 3."""
    return {s: sum(1 for x in steps if x.stage == s) for s in (1, 2, 3)}


def write_script(path: str, steps: Sequence[Step], table_command: str, launcher: str = "python") -> None:
    """Write the grid as a bash script: one command per line, each ending in its stage's :func:`tag`;
    the header's counts are those the header's recipes select (checked before writing)."""
    counts = stage_counts(steps)
    name = os.path.basename(path)
    recipes = "\n".join(f"#     stage{s} (tasks 1..{counts[s]}):  {recipe(name, s)}" for s in (1, 2, 3))
    head = f"""#!/usr/bin/env bash
# Grid written by reproduce_table.py; run from the repository root.
# Stages depend on each other: every 'stage1' line must finish before any 'stage2' line starts,
# and every 'stage2' line before any 'stage3' line. Lines of one stage are independent.
#   all at once, in order:     bash {shlex.quote(name)}
#   as cluster array jobs, one array per stage, chained with --dependency=afterok:
{recipes}
#   then the table:            the last line (every run is found done and skipped).
# Each line skips a finished run and continues a killed one from its *_last.pth, exactly as a rerun
# of reproduce_table.py would.
set -e
"""
    check_no_controls(table_command, "the table's command")
    lines = [guarded(s, launcher) for s in steps] + [table_command + tag("table")]
    text = head + "\n".join(lines) + "\n"
    for stage in (1, 2, 3):  # what each recipe selects is what its header line counts
        selected = sum(line.endswith(tag(stage).strip()) for line in text.split("\n"))
        if selected != counts[stage]:
            raise AssertionError(f"stage{stage}: the recipe selects {selected} lines, the header says {counts[stage]}")
    atomic_write(path, lambda f: f.write(text.encode()), replace=False)  # a script is never replaced
    os.chmod(path, 0o755)
