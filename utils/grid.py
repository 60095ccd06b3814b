"""A grid of the three stages, as in the tables of *Coresets from Trajectories: Selecting Data via
Correlation of Loss Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025), and the table it yields.

``reproduce_table.py`` is the thin script; this module plans the grid, runs it (resuming a killed
grid), renders every step as the exact shell command that does the same, and summarises the
results into ``table.csv``, ``table.md`` and ``accuracy_vs_size.png``.

The grid: stage 1 once per scoring model (seed ``score_seed``), stage 2 once per (scoring model,
method), stage 3 once per (scoring model, method, order, size, training model, seed). A step whose
output exists is skipped; a step whose ``*_last.pth`` exists continues from it (``--resume_path``).
"""
from __future__ import annotations

import ast
import csv
import importlib
import io
import json
import keyword
import math
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from utils import paths
from utils.cli import UserError
from utils.formats import atomic_write, ensure_dir
from utils.results import run_json_path

SCRIPTS = {1: "get_loss_values.py", 2: "compute_cld_scores.py", 3: "train_on_coresets.py"}
TABLE_COLUMNS = ("method", "order", "score_model_arch", "model_arch", "samples_per_class", "fraction",
                 "coreset_size", "n_seeds", "mean_test_acc", "std_test_acc")
# The table averages the accuracy after the last epoch. best_test_acc is the maximum over epochs
# of the *test* accuracy, i.e. chosen on the test set, and so optimistically biased.
ACCURACY_KEY = "final_test_acc"


@dataclass(frozen=True)
class GridSpec:
    """Everything that defines a grid (validated by ``reproduce_table.main``)."""
    dataset: str
    score_model_archs: tuple[str, ...]
    model_archs: tuple[str, ...]
    methods: tuple[str, ...]
    orders: tuple[str, ...]
    samples_per_class: tuple[int, ...] | None
    fractions: tuple[float, ...] | None
    seeds: tuple[int, ...]
    score_seed: int
    score_epochs: int
    epochs: int
    score_schedule: tuple[int, ...]
    schedule: tuple[int, ...]
    common: dict = field(default_factory=dict)  # flags passed to stages 1 and 3 alike
    scores_dir: str = "./Scores"
    splits_dir: str = "./Splits"
    checkpoint_path: str = "./Data/Checkpoint"
    logpath: str = "./Logs"
    results_dir: str = "./Results"
    tag: str = ""

    @property
    def sizes(self) -> list[tuple[str, Any]]:
        """[('samples_per_class', k), ...] or [('fraction', f), ...]."""
        if self.samples_per_class is not None:
            return [("samples_per_class", k) for k in self.samples_per_class]
        return [("fraction", f) for f in self.fractions]


@dataclass
class Step:
    """One run of one stage.

    ``flags`` are the keyword arguments of the stage's ``main`` and, rendered by
    :func:`command`, its command-line flags; ``output`` is the file whose existence means done;
    ``last`` the run-state checkpoint a killed run leaves (stages 1 and 3); ``epochs`` the epochs
    the run trains.
    """
    stage: int
    flags: dict
    output: str
    last: str = ""
    epochs: int = 0
    name: str = ""

    @property
    def script(self) -> str:
        return SCRIPTS[self.stage]


# ----------------------------------------------------------------------------- planning

def run_name(spec: GridSpec, model_arch: str, method: str, score_arch: str, order: str, size: tuple[str, Any],
             seed: int) -> str:
    """Stage 3's own default name (``train_on_coresets.py``), plus ``_{tag}`` when a tag is set."""
    budget = f"k{size[1]}" if size[0] == "samples_per_class" else f"f{size[1]:g}"
    source = method if score_arch == model_arch else f"{method}-{score_arch}"
    name = f"{spec.dataset}_{model_arch}_coreset_{source}_{order}_{budget}_seed{seed}"
    return f"{name}_{spec.tag}" if spec.tag else name


def plan(spec: GridSpec) -> list[Step]:
    """Every step of the grid, stage 1 steps first, then stage 2, then stage 3."""
    ones, twos, threes = [], [], []
    for score_arch in spec.score_model_archs:
        loss = paths.loss_path(spec.scores_dir, spec.dataset, score_arch, spec.score_seed)
        stem = paths.run_name(spec.dataset, score_arch, spec.score_seed)
        ones.append(Step(1, {
            "dataset": spec.dataset, "model_arch": score_arch, "epochs": spec.score_epochs,
            "schedule": list(spec.score_schedule), "manual_seed": spec.score_seed, **spec.common,
            "checkpoint_path": spec.checkpoint_path, "logpath": spec.logpath,
            "scores_dir": spec.scores_dir, "splits_dir": spec.splits_dir,
        }, output=loss, last=os.path.join(spec.checkpoint_path, f"{stem}_last.pth"), epochs=spec.score_epochs))
        for method in spec.methods:
            score = paths.score_path(os.path.dirname(loss), method, spec.dataset, score_arch, spec.score_seed)
            twos.append(Step(2, {"loss_path": loss, "method": method}, output=score))
            for order in spec.orders:
                if order == "random" and method != spec.methods[0]:
                    # A uniform draw within each class's pool does not depend on the method's
                    # ranking: one random baseline (over the first method's file) serves them all.
                    continue
                for size in spec.sizes:
                    for model_arch in spec.model_archs:
                        for seed in spec.seeds:
                            name = run_name(spec, model_arch, method, score_arch, order, size, seed)
                            threes.append(Step(3, {
                                "score_path": score, size[0]: size[1], "order": order,
                                "dataset": spec.dataset, "model_arch": model_arch, "epochs": spec.epochs,
                                "schedule": list(spec.schedule), "manual_seed": seed, **spec.common,
                                "checkpoint_path": spec.checkpoint_path, "logpath": spec.logpath,
                                "results_dir": spec.results_dir, "name": name,
                            }, output=run_json_path(spec.results_dir, name),
                                last=os.path.join(spec.checkpoint_path, f"{name}_last.pth"),
                                epochs=spec.epochs, name=name))
    steps = ones + twos + threes
    for step in steps:
        step.flags = _drop_defaults(step.stage, step.flags)
    return steps


def stage_main(stage: int) -> Callable[..., Any]:
    """The ``main`` of a stage's script (imported on first use: the scripts import torch)."""
    return importlib.import_module(SCRIPTS[stage][:-3]).main


# Flags every printed command names even at their default values, so that a command says which
# run it is at a glance.
_ALWAYS = ("dataset", "model_arch", "epochs", "manual_seed", "loss_path", "method", "score_path",
           "samples_per_class", "fraction", "order", "name")


def _drop_defaults(stage: int, flags: dict) -> dict:
    return drop_defaults(stage_main(stage), flags, SCRIPTS[stage], keep=_ALWAYS)


def drop_defaults(fn: Callable[..., Any], flags: dict, script: str, keep: Sequence[str] = ()) -> dict:
    """Keep the flags that differ from ``fn``'s defaults (shorter commands, same meaning)."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()}
    unknown = [k for k in flags if k not in defaults]
    if unknown:
        raise UserError(f"{script} has no flag {unknown[0]!r}")

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return list(a) == list(b)
        return type(a) is type(b) and a == b or (a is None and b is None)

    return {k: v for k, v in flags.items() if k in keep or not same(v, defaults[k])}


# ----------------------------------------------------------------------------- resuming

def decide(step: Step) -> tuple[str, dict]:
    """('skip' | 'resume' | 'run', flags to run with) from the files on disk now.

    A finished output means skip. A ``*_last.pth`` means a killed run: it continues with
    ``--resume_path`` (one that already holds every epoch, killed while writing its output, just
    writes it). The stage itself refuses a checkpoint of another run or of more epochs, with the
    reason; the grid then stops there rather than discard that checkpoint.
    """
    if os.path.exists(step.output):
        return "skip", step.flags
    if step.last and os.path.exists(step.last):
        return "resume", {**step.flags, "resume_path": step.last}
    return "run", step.flags


# ----------------------------------------------------------------------------- commands

def _value(v: Any) -> str:
    """A value as one shell word that Fire parses back to ``v``."""
    from fire import parser

    if isinstance(v, (list, tuple)):
        return shlex.quote("[" + ",".join(_literal(x) for x in v) + "]")
    if isinstance(v, str):
        # Fire turns '1234', 'True' or 'a,b' into literals; quote those so they stay strings.
        word = v if parser.DefaultParseValue(v) == v and isinstance(parser.DefaultParseValue(v), str) else repr(v)
        return shlex.quote(word)
    return shlex.quote(_literal(v))


def _literal(v: Any) -> str:
    if isinstance(v, str):
        # Fire reads a bare word inside a list as a string: [top,random].
        bare = v.isidentifier() and v not in ("True", "False", "None") and not keyword.iskeyword(v)
        return v if bare else repr(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def launcher_of(stage: int, launcher: str) -> str:
    """Stages 1 and 3 train (and may be distributed); stage 2 is one process on one machine."""
    return "python" if stage == 2 else launcher


def command(step_or_script: Step | str, flags: dict | None = None, launcher: str = "python") -> str:
    """The shell command that runs ``main(**flags)`` of a script (a step: with its own flags)."""
    if isinstance(step_or_script, Step):
        script, flags = step_or_script.script, step_or_script.flags if flags is None else flags
        launcher = launcher_of(step_or_script.stage, launcher)
    else:
        script = step_or_script
    words = [launcher, script]
    for key, v in flags.items():
        if isinstance(v, bool):
            words.append(f"--{key}" if v else f"--no{key}")
        else:
            words += [f"--{key}", _value(v)]
    return " ".join(words)


def parse_command_flags(cmd: str) -> dict:
    """Fire's reading of a command's ``--flag value`` / ``--flag`` / ``--noflag`` words (for tests)."""
    from fire import parser

    words, out, i = shlex.split(cmd), {}, 2
    while i < len(words):
        key = words[i][2:]
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            out[key] = parser.DefaultParseValue(words[i + 1])
            i += 2
        else:
            out[key[2:] if key.startswith("no") else key] = not key.startswith("no")
            i += 1
    return out


def guarded(step: Step, launcher: str = "python") -> str:
    """One script line: skip when done, continue from ``*_last.pth`` when one exists."""
    out = shlex.quote(step.output)
    cmd = command(step, launcher=launcher)
    if step.last:
        last = shlex.quote(step.last)
        cmd += f' $([ -e {last} ] && echo --resume_path {last})'
    return f"[ -e {out} ] || {cmd}  # stage{step.stage}"


def write_script(path: str, steps: Sequence[Step], table_command: str, launcher: str = "python") -> None:
    """Write the grid as a bash script: one command per line, tagged ``# stage1/2/3`` / ``# table``."""
    counts = {s: sum(1 for x in steps if x.stage == s) for s in (1, 2, 3)}
    head = f"""#!/usr/bin/env bash
# Grid written by reproduce_table.py; run from the repository root.
# Stages depend on each other: every 'stage1' line must finish before any 'stage2' line starts,
# and every 'stage2' line before any 'stage3' line. Lines of one stage are independent.
#   all at once, in order:     bash {os.path.basename(path)}
#   as cluster array jobs:     grep '# stage3$' {os.path.basename(path)} | sed -n "${{SLURM_ARRAY_TASK_ID}}p" | bash
#                              (stage1: {counts[1]} lines, stage2: {counts[2]}, stage3: {counts[3]}; tasks 1..N;
#                               chain the three arrays with --dependency=afterok)
#   then the table:            the last line (every run is found done and skipped).
# Each line skips a finished run and continues a killed one from its *_last.pth, exactly as a rerun
# of reproduce_table.py would.
set -e
"""
    lines = [guarded(s, launcher) for s in steps] + [f"{table_command}  # table"]
    text = head + "\n".join(lines) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    os.chmod(path, 0o755)


# ----------------------------------------------------------------------------- running

def run_in_process(step: Step, flags: dict) -> None:
    stage_main(step.stage)(**flags)


def run_subprocess(step: Step, cmd: str) -> None:
    """Run the printed command itself (e.g. under torchrun)."""
    status = subprocess.call(shlex.split(cmd))
    if status != 0:
        raise UserError(f"stage {step.stage} failed (exit status {status}): {cmd}")


def execute(steps: Sequence[Step], launcher: str = "python", dry_run: bool = False,
            say: Callable[[str], None] = print) -> dict:
    """Run (or with ``dry_run`` only print) every step not yet done, in order.

    Steps whose command starts with ``python`` run inside this process (``main(**flags)``, the
    same call the command makes, without a new interpreter each time); others (a ``--launcher``
    such as torchrun) run as the printed command. Returns counts of skipped / run steps per stage.
    """
    counts = {"skipped": {1: 0, 2: 0, 3: 0}, "ran": {1: 0, 2: 0, 3: 0}}
    todo = sum(1 for s in steps if not os.path.exists(s.output))
    position = 0
    note = {"resume": "  # continues a killed run"}
    for step in steps:
        action, flags = decide(step)
        if action == "skip":
            counts["skipped"][step.stage] += 1
            say(f"# skip stage {step.stage} (done): {step.output}")
            continue
        cmd = command(step, flags, launcher)
        if dry_run:
            say(cmd + note.get(action, ""))
            continue
        position += 1
        say(f"\n=== [{position}/{todo}] stage {step.stage}{note.get(action, '')}\n$ {cmd}")
        started = time.perf_counter()
        if launcher_of(step.stage, launcher) == "python":
            run_in_process(step, flags)
        else:
            run_subprocess(step, cmd)
        counts["ran"][step.stage] += 1
        if not os.path.exists(step.output):
            raise UserError(f"stage {step.stage} finished without writing {step.output}: {cmd}")
        say(f"=== stage {step.stage} done in {time.perf_counter() - started:.1f} s")
    return counts


# ----------------------------------------------------------------------------- the table

def load_runs(steps: Iterable[Step]) -> list[dict]:
    """The result JSONs of this grid's stage-3 runs (only these: other runs in the folder stay out)."""
    runs = []
    for step in steps:
        if step.stage == 3 and os.path.exists(step.output):
            with open(step.output) as f:
                runs.append(json.load(f))
    return runs


def _key(r: dict) -> tuple:
    return (r["method"], r["order"], r["score_model_arch"], r["model_arch"], r.get("samples_per_class"),
            r.get("fraction"))


def summarise(runs: Sequence[dict]) -> list[dict]:
    """One row per (method, order, scoring model, training model, size): mean and sample std
    (ddof=1; empty for a single seed) of the final-epoch test accuracy over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(_key(r), []).append(r)
    rows = []
    for key, members in groups.items():
        acc = [float(m[ACCURACY_KEY]) for m in members]
        n = len(acc)
        mean = sum(acc) / n
        std = math.sqrt(sum((a - mean) ** 2 for a in acc) / (n - 1)) if n > 1 else None
        sizes = sorted({int(m["coreset_size"]) for m in members})
        rows.append(dict(zip(TABLE_COLUMNS, (*key, sizes[0] if len(sizes) == 1 else round(sum(sizes) / len(sizes)),
                                             n, round(mean, 4), None if std is None else round(std, 4)))))
    return rows


def order_rows(rows: list[dict], spec: GridSpec) -> list[dict]:
    """Rows in the grid's own order (methods, orders, models as given; sizes ascending)."""
    def rank(values: Sequence, v: Any) -> int:
        return list(values).index(v) if v in values else len(values)

    return sorted(rows, key=lambda r: (rank(spec.score_model_archs, r["score_model_arch"]),
                                       rank(spec.model_archs, r["model_arch"]), rank(spec.methods, r["method"]),
                                       rank(spec.orders, r["order"]), r["samples_per_class"] or 0, r["fraction"] or 0))


def write_table_csv(path: str, rows: Sequence[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def _size_label(r: dict) -> str:
    return f"k={r['samples_per_class']}" if r["samples_per_class"] is not None else f"{100 * r['fraction']:g}%"


def _cell(r: dict) -> str:
    return f"{r['mean_test_acc']:.2f}" + ("" if r["std_test_acc"] is None else f" ± {r['std_test_acc']:.2f}")


def table_markdown(rows: Sequence[dict], spec: GridSpec) -> str:
    """Paper-style tables: one per (scoring model, training model); method (order) rows, size columns."""
    parts = []
    for score_arch in spec.score_model_archs:
        for model_arch in spec.model_archs:
            sub = [r for r in rows if r["score_model_arch"] == score_arch and r["model_arch"] == model_arch]
            if not sub:
                continue
            sizes = sorted({(r["samples_per_class"] or 0, r["fraction"] or 0, _size_label(r), r["coreset_size"])
                            for r in sub})
            labels = []
            for _, _, label, n in sizes:
                if label not in [x[0] for x in labels]:
                    labels.append((label, n))
            seeds = sorted({r["n_seeds"] for r in sub})
            parts.append(
                f"### {spec.dataset}: test accuracy (%) of {model_arch} trained on coresets "
                f"(scores from {score_arch}, {spec.score_epochs} epochs, seed {spec.score_seed}; "
                f"{spec.epochs} training epoch{'s' if spec.epochs > 1 else ''})\n\n"
                f"Final-epoch test accuracy, mean ± sample std over {'/'.join(map(str, seeds))} seed(s); "
                "column: budget per class (coreset size).\n")
            header = "| method (order) | " + " | ".join(f"{label} ({n})" for label, n in labels) + " |"
            lines = [header, "|---|" + "---:|" * len(labels)]
            row_keys = []
            for r in sub:
                if (r["method"], r["order"]) not in row_keys:
                    row_keys.append((r["method"], r["order"]))
            for method, order in row_keys:
                cells = []
                for label, _ in labels:
                    hit = [r for r in sub if (r["method"], r["order"]) == (method, order) and _size_label(r) == label]
                    cells.append(_cell(hit[0]) if hit else "")
                lines.append(f"| {method} ({order}) | " + " | ".join(cells) + " |")
            parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def plot(path: str, rows: Sequence[dict], spec: GridSpec) -> None:
    """Accuracy against coreset budget, one line per method/order (and model), with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_fraction = spec.samples_per_class is None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    lines: dict[tuple, list[dict]] = {}
    for r in rows:
        lines.setdefault((r["method"], r["order"], r["score_model_arch"], r["model_arch"]), []).append(r)
    for (method, order, score_arch, model_arch), members in lines.items():
        members = sorted(members, key=lambda r: r["fraction"] if by_fraction else r["samples_per_class"])
        x = [100 * r["fraction"] if by_fraction else r["samples_per_class"] for r in members]
        y = [r["mean_test_acc"] for r in members]
        err = [r["std_test_acc"] or 0.0 for r in members]
        label = f"{method} ({order})"
        if len(spec.model_archs) > 1 or len(spec.score_model_archs) > 1:
            label += f", {model_arch}" + (f" / scores {score_arch}" if len(spec.score_model_archs) > 1 else "")
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xlabel("coreset size (% of each class)" if by_fraction else "coreset size (examples per class)")
    ax.set_ylabel("final test accuracy (%)")
    seeds = len(spec.seeds)
    ax.set_title(f"{spec.dataset}: accuracy vs coreset size ({seeds} seed{'s' if seeds > 1 else ''}, "
                 f"mean ± std)")
    ticks = sorted({100 * f for f in spec.fractions} if by_fraction else set(spec.samples_per_class))
    if ticks[-1] / max(ticks[0], 1e-9) >= 4:  # budgets usually grow geometrically
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def write_outputs(spec: GridSpec, steps: Sequence[Step], say: Callable[[str], None] = print) -> list[dict]:
    """table.csv, table.md and accuracy_vs_size.png in ``results_dir`` from this grid's runs."""
    runs = load_runs(steps)
    wanted = sum(1 for s in steps if s.stage == 3)
    if len(runs) < wanted:
        say(f"warning: {wanted - len(runs)} of the grid's {wanted} coreset runs have no result yet; "
            "the table holds the others")
    rows = order_rows(summarise(runs), spec)
    if not rows:
        raise UserError(f"no results of this grid in {spec.results_dir}/runs; run the grid first")
    ensure_dir(spec.results_dir)
    files = {k: os.path.join(spec.results_dir, v) for k, v in
             (("csv", "table.csv"), ("md", "table.md"), ("png", "accuracy_vs_size.png"))}
    write_table_csv(files["csv"], rows)
    md = table_markdown(rows, spec)
    atomic_write(files["md"], lambda f: f.write(md.encode()))
    plot(files["png"], rows, spec)
    say("\n" + md)
    say(f"wrote {files['csv']}, {files['md']}, {files['png']}")
    return rows


def as_list(value: Any, what: str) -> list:
    """Fire gives 'a' for one value, ('a', 'b') for a,b and ['a', 'b'] for [a,b]; always a list."""
    if value is None:
        return []
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise UserError(f"--{what} {value!r} is not a list") from None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    seen = []
    for v in items:
        if v not in seen:
            seen.append(v)
    return seen

