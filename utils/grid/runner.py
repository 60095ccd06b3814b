"""A grid of the three stages, as in the tables of *Coresets from Trajectories: Selecting Data via
Correlation of Loss Differences* (Nagaraj, Ravikumar, Roy, TMLR 2025).

``reproduce_table.py`` is the thin script; this module plans the grid from its checked flags
(``utils.cli.config.GRID``), runs it (resuming a killed grid, sharing it with another process running
the same grid), and renders every step as the exact shell command that does the same. The table it
yields is :mod:`utils.grid.table`'s.

The grid: stage 1 once per scoring model (seed ``score_seed``), stage 2 once per (scoring model,
method), stage 3 once per (scoring model, method, order, size, training model, seed), the orders
being ``orders`` plus the method's own ``method_orders``. A step whose
output exists is skipped; a step whose ``*_last.pth`` exists continues from it (``--resume_path``);
a step another process is running is waited for (stages 1 and 2) or left to it (stage 3).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from utils import paths, progress
from utils.cli import config
from utils.cli.flags import FlagSet, Settings
from utils.errors import UserError
from utils.files.atomic import atomic_write, ensure_dir
from utils.files.locks import RunBusy, RunLock, busy, wait_for

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


def plan(g: Settings) -> list[Step]:
    """Every step of the grid, stage 1 steps first, then stage 2, then stage 3."""
    ones, twos, threes = [], [], []
    recipe1 = {name: g[name] if g[f"score_{name}"] is None else g[f"score_{name}"] for name in config.STAGE1_RECIPE}
    for score_arch in g.score_model_arch:
        run = paths.run_name(g.dataset, score_arch, g.score_seed)
        sums = g.trajectories == "sums"
        loss = (paths.sums_path if sums else paths.loss_path)(g.scores_dir, g.dataset, score_arch, g.score_seed)
        files = paths.RunFiles(g.checkpoint_path, g.logpath, run, loss)
        ones.append(Step(1, {**_forwarded(g, 1), **recipe1, "dataset": g.dataset, "model_arch": score_arch,
                             "manual_seed": g.score_seed}, loss, files.lock, files.last, run))
        for method in g.methods:
            score = paths.score_path(g.scores_dir, method, g.dataset, score_arch, g.score_seed)
            twos.append(Step(2, {**_forwarded(g, 2), "loss_path": loss, "method": method}, score,
                             paths.lock_of(score)))
            extra = [pair.split(":")[1] for pair in g.method_orders if pair.split(":")[0] == method]
            for order in dict.fromkeys(g.orders + extra):
                if order == "random" and method != g.methods[0]:
                    # A uniform draw within each class's pool does not depend on the method's
                    # ranking: one random baseline (over the first method's file) serves them all.
                    continue
                for size in sizes(g):
                    for model_arch in g.model_archs:
                        for seed in g.seeds:
                            name = paths.coreset_run_name(g.dataset, model_arch, method, score_arch, order, size,
                                                          seed, g.tag)
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
    """The shell command that runs ``step`` (with ``flags`` instead of its own, if given)."""
    return FLAGSETS[step.stage].render(step.script, step.flags if flags is None else flags,
                                       launcher_of(step.stage, launcher), keep=ALWAYS)


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


def guarded(step: Step, launcher: str = "python") -> str:
    """One script line: skip when done, continue from ``*_last.pth`` when one exists."""
    out = shlex.quote(step.output)
    cmd = command(step, launcher=launcher)
    if step.last:
        last = shlex.quote(step.last)
        cmd += f' $([ -e {last} ] && echo --resume_path {last})'
    return f"[ -e {out} ] || {cmd}  # stage{step.stage}"


def stage_counts(steps: Sequence[Step]) -> dict[int, int]:
    """{stage: number of its steps} for stages 1, 2 and 3."""
    return {s: sum(1 for x in steps if x.stage == s) for s in (1, 2, 3)}


def write_script(path: str, steps: Sequence[Step], table_command: str, launcher: str = "python") -> None:
    """Write the grid as a bash script: one command per line, tagged ``# stage1/2/3`` / ``# table``."""
    counts = stage_counts(steps)
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

def run_stage(stage: int, flags: dict) -> Any:
    """``main(**flags)`` of a stage's script, in this process (the stages import torch on use)."""
    settings = FLAGSETS[stage].settings(flags)
    if stage == 1:
        from utils.collect.stage import collect_losses
        return collect_losses(settings)
    if stage == 2:
        from utils.scoring.stage import score
        return score(settings)
    from utils.selection.stage import train_on_coreset
    return train_on_coreset(settings)


def run_subprocess(step: Step, cmd: str) -> None:
    """Run the printed command itself (e.g. under torchrun)."""
    status = subprocess.call(shlex.split(cmd))
    if status != 0:
        raise UserError(f"stage {step.stage} failed (exit status {status}): {cmd}")


@contextlib.contextmanager
def _held(step: Step):
    ensure_dir(os.path.dirname(os.path.abspath(step.lock)))
    lock = RunLock(step.lock, f"stage 2 for {step.output}")
    try:
        yield
    finally:
        lock.release()


class Runner:
    """Runs the steps of a grid not yet done, in order, and counts what it did.

    Steps whose launcher is ``python`` run inside this process (the same call the printed command
    makes, without a new interpreter each time); others run as the printed command. Stage-3 steps
    run ``jobs`` at a time in worker processes when ``jobs > 1``.
    """

    def __init__(self, steps: Sequence[Step], launcher: str = "python", jobs: int = 1,
                 say: Callable[[str], None] = progress.say):
        self.steps, self.launcher, self.jobs, self.say = list(steps), launcher, jobs, say
        self.counts = {"skipped": {1: 0, 2: 0, 3: 0}, "ran": {1: 0, 2: 0, 3: 0}}
        self.eta = progress.Eta(sum(1 for s in self.steps if not os.path.exists(s.output)))

    def dry_run(self) -> None:
        for step in self.steps:
            action, flags = decide(step)
            if action == "skip":
                self.say(f"# skip stage {step.stage} (done): {step.output}")
            else:
                self.say(command(step, flags, self.launcher) + ("  # continues a killed run" if action == "resume" else ""))

    def run(self) -> dict:
        later = []
        for step in progress.bar(self.steps, "grid", unit="step"):
            if step.stage == 3 and self.jobs > 1:
                later.append(step)
            elif not self._one(step):
                later.append(step)  # another process runs it now
        if later:
            self._later(later)
        return self.counts

    def _one(self, step: Step) -> bool:
        """Run one step here unless done; False when another process is running it."""
        action, flags = decide(step)
        if action == "skip":
            self.counts["skipped"][step.stage] += 1
            return True
        if busy(step.lock):
            if step.stage == 3:
                return False
            self.say(f"# waiting for the process that holds {step.lock}")
            wait_for(step.lock)  # stages 2 and 3 need this output
            return self._one(step)
        cmd = command(step, flags, self.launcher)
        self.say(f"\n=== [{self.eta.done + 1}/{self.eta.total}] stage {step.stage}"
                 f"{'  (continues a killed run)' if action == 'resume' else ''}  "
                 f"elapsed {progress.duration(self.eta.elapsed)}, {self.eta.text()}\n$ {cmd}")
        started = time.perf_counter()
        try:
            # Stages 1 and 3 lock their run themselves; stage 2 is locked here, for the grid.
            with _held(step) if step.stage == 2 else contextlib.nullcontext():
                if launcher_of(step.stage, self.launcher) == "python":
                    run_stage(step.stage, flags)
                else:
                    run_subprocess(step, cmd)
        except RunBusy:
            return self._one(step) if step.stage != 3 else False
        self._done(step, time.perf_counter() - started)
        return True

    def _done(self, step: Step, seconds: float) -> None:
        if not os.path.exists(step.output):
            raise UserError(f"stage {step.stage} finished without writing {step.output}")
        self.counts["ran"][step.stage] += 1
        self.eta.step()
        self.say(f"=== stage {step.stage} done in {seconds:.1f} s: {step.output}")

    def _later(self, steps: list[Step]) -> None:
        """Stage-3 steps in parallel workers, then those another process held: wait for each."""
        if self.jobs > 1:
            steps = self._parallel(steps)
        for step in steps:
            if busy(step.lock):
                self.say(f"# waiting for the process that holds {step.lock}")
                wait_for(step.lock)
            if not self._one(step):
                raise UserError(f"run {step.name} is still held by another process")

    def _parallel(self, steps: list[Step]) -> list[Step]:
        todo = []  # (step, the flags it runs with)
        for step in steps:
            action, flags = decide(step)
            if action != "skip":
                todo.append((step, flags))
        self.counts["skipped"][3] += len(steps) - len(todo)
        if not todo:
            return []
        held = []
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        context = multiprocessing.get_context("spawn")
        counter = context.Value("i", 0)
        with concurrent.futures.ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_worker_start,
                                                    initargs=(counter, threads)) as pool:
            futures = {pool.submit(_worker_run, flags): step for step, flags in todo}
            bar = progress.bar(concurrent.futures.as_completed(futures), "grid", total=len(futures), unit="run")
            for future in bar:
                step = futures[future]
                outcome = future.result()
                if outcome == "busy":
                    held.append(step)
                    continue
                self._done(step, outcome)
        return held


# ----------------------------------------------------------------------------- worker processes

_WORKER: dict = {}


def _worker_start(counter, threads: int) -> None:
    """A worker of ``--jobs``: its number picks its GPU; its threads share the CPU with the others."""
    import torch

    with counter.get_lock():
        _WORKER["index"] = counter.value
        counter.value += 1
    torch.set_num_threads(threads)


def _worker_run(flags: dict) -> Any:
    """One stage-3 run in a worker, its output discarded (its log and result are files)."""
    import torch

    if flags.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available():
        flags = {**flags, "device": f"cuda:{_WORKER['index'] % torch.cuda.device_count()}"}
    started = time.perf_counter()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        try:
            run_stage(3, flags)
        except RunBusy:
            return "busy"
    return time.perf_counter() - started
