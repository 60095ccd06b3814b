"""Running a grid's steps (``reproduce_table.py``): resuming a killed grid, sharing it with another
process running the same grid.

A step whose output exists is skipped; a step whose ``*_last.pth`` exists continues from it
(``--resume_path``); a step another process is running is waited for (stages 1 and 2) or left to it
(stage 3). Steps launched with ``python`` run inside this process (the same call their printed
command makes); others run as the printed command (e.g. under torchrun). ``--jobs N`` runs stage-3
steps in N worker processes.

A warning the grid's runs give is printed once, when first given, and counted: a grid of 460 runs
would otherwise repeat one about the same foreign file 460 times. That a stage-3 model did not fit
its coreset is no warning in a grid (the table marks its cell with †): one note at the end names
how many runs did not fit, and which.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import io
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

from utils import progress
from utils.coreset_training.results import read_result
from utils.errors import UserError
from utils.files.atomic import ensure_dir
from utils.files.locks import RunBusy, RunLock, busy, wait_for
from utils.cli.stages import STAGES
from utils.grid.plan import FLAGSETS, Step, command, decide, launcher_of


# ----------------------------------------------------------------------------- running

def run_stage(stage: int, flags: dict) -> Any:
    """``main(**flags)`` of a stage's script, in this process (the stages import torch on use)."""
    return STAGES[stage](FLAGSETS[stage].settings(flags))


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


class GridClock:
    """Progress of a grid: runs done of those to do, and the time left from the measured duration of
    each stage's runs (a stage-1 run takes minutes where a stage-3 run takes seconds, so one mean
    over all runs would mislead); stage-3 runs in ``jobs`` workers overlap."""

    def __init__(self, todo: dict[int, int], jobs: int = 1):
        self.todo, self.jobs = dict(todo), jobs
        self.total = sum(todo.values())
        self.finished = 0
        self.seconds: dict[int, list[float]] = {1: [], 2: [], 3: []}
        self.started = time.perf_counter()

    def done(self, stage: int, seconds: float) -> None:
        self.todo[stage] -= 1
        self.finished += 1
        self.seconds[stage].append(seconds)

    def text(self) -> str:
        """``elapsed 3m05s, ETA 1m12s``; the ETA is '?' until every stage with runs left has one timed."""
        left = 0.0
        for stage, n in sorted(self.todo.items()):
            if n <= 0:
                continue
            if not self.seconds[stage]:
                return f"elapsed {progress.duration(time.perf_counter() - self.started)}, ETA ? (no stage-{stage} " \
                       "run timed yet)"
            mean = sum(self.seconds[stage]) / len(self.seconds[stage])
            left += n * mean / (self.jobs if stage == 3 else 1)
        return f"elapsed {progress.duration(time.perf_counter() - self.started)}, ETA {progress.duration(left)}"


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
        self.warned: dict[str, list] = {}  # kind (or line) -> [its first line, how many runs gave it]
        todo = {stage: sum(1 for s in self.steps if s.stage == stage and not os.path.exists(s.output))
                for stage in (1, 2, 3)}
        self.clock = GridClock(todo, jobs)

    def dry_run(self) -> None:
        for step in self.steps:
            action, flags = decide(step)
            if action == "skip":
                self.say(f"# skip stage {step.stage} (done): {step.output}")
            else:
                self.say(command(step, flags, self.launcher) + ("  # continues a killed run" if action == "resume" else ""))

    def run(self) -> dict:
        # SIGTERM (a scheduler's stop) stops the grid as Ctrl-C does: no new run, workers ended.
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
        try:
            later = []
            for step in progress.bar(self.steps, "grid", unit="step"):
                if step.stage == 3 and self.jobs > 1:
                    later.append(step)
                elif not self._one(step):
                    later.append(step)  # another process runs it now
            if later:
                self._later(later)
            self._sum_up()
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
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
        self.say(f"\n=== [{self.clock.finished + 1}/{self.clock.total}] stage {step.stage}"
                 f"{'  (continues a killed run)' if action == 'resume' else ''}  {self.clock.text()}\n$ {cmd}")
        started = time.perf_counter()
        try:
            # Stages 1 and 3 lock their run themselves; stage 2 is locked here, for the grid.
            with _held(step) if step.stage == 2 else contextlib.nullcontext():
                if launcher_of(step.stage, self.launcher) == "python":
                    with progress.routed(self._warned):
                        run_stage(step.stage, flags)
                else:
                    run_subprocess(step, cmd)
        except RunBusy:
            return self._one(step) if step.stage != 3 else False
        self._done(step, time.perf_counter() - started)
        return True

    def _warned(self, kind: str, line: str) -> None:
        """A run's warning: printed the first time, counted after; a model that did not fit its
        coreset is left to the note of :meth:`_sum_up`."""
        from utils.coreset_training.train_on_coreset import UNFIT

        if kind == UNFIT:
            return
        seen = self.warned.setdefault(kind or line, [line, 0])
        seen[1] += 1
        if seen[1] == 1:
            print(line, file=sys.stderr, flush=True)

    def _sum_up(self) -> None:
        """After the grid: how many runs gave each warning printed once, and the note on the stage-3
        runs that did not fit their coreset."""
        for line, n in self.warned.values():
            if n > 1:
                text = line[len("warning: "):]
                progress.warn(f"{n} runs of the grid gave the warning printed once above "
                              f"({text[:60] + '...' if len(text) > 60 else text})")
        note = unfit_note(self.steps)
        if note:
            self.say(note)

    def _done(self, step: Step, seconds: float) -> None:
        if not os.path.exists(step.output):
            raise UserError(f"stage {step.stage} finished without writing {step.output}")
        self.counts["ran"][step.stage] += 1
        self.clock.done(step.stage, seconds)
        self.say(f"=== [{self.clock.finished}/{self.clock.total}] stage {step.stage} done in {seconds:.1f} s: "
                 f"{step.output}  ({self.clock.text()})")

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
        # Threads change a run's numbers (the order of each sum): OMP_NUM_THREADS, as make demo sets it,
        # holds on any machine; else the workers share the cores.
        omp = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(omp) if omp.isdigit() and int(omp) > 0 else max(1, (os.cpu_count() or 1) // self.jobs)
        context = multiprocessing.get_context("spawn")
        counter = context.Value("i", 0)
        pool = concurrent.futures.ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_worker_start,
                                                      initargs=(counter, threads))
        try:
            futures = {pool.submit(_worker_run, flags): step for step, flags in todo}
            bar = progress.bar(concurrent.futures.as_completed(futures), "grid", total=len(futures), unit="run")
            for future in bar:
                step = futures[future]
                outcome = future.result()
                if outcome == "busy":
                    held.append(step)
                    continue
                seconds, notes, warnings = outcome
                for note in notes:
                    self.say(note)
                for kind, line in warnings:
                    self._warned(kind, line)
                self._done(step, seconds)
        except BaseException:
            # Stopped (Ctrl-C, SIGTERM) or failed: start no queued run, and end the running ones
            # now; each keeps its last checkpoint, so a rerun continues them.
            workers = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.join(5)
            raise
        pool.shutdown()
        return held


def unfit_note(steps: Sequence[Step], shown: int = 6) -> str:
    """``note: N of M runs did not fit their coreset (marked † in the table): craig top k=5 (2 runs),
    ...`` over the results of the grid's stage-3 runs; '' when every one fit."""
    runs = []
    for step in steps:
        if step.stage == 3 and os.path.isfile(step.output):
            try:
                runs.append(read_result(step.output))
            except UserError:
                continue  # the table names it
    unfit = [r for r in runs if r.get("converged") is False]
    if not unfit:
        return ""
    models = {(r.get("score_model_arch"), r.get("model_arch")) for r in runs}
    groups: dict[str, list[dict]] = {}
    for r in unfit:
        label = f"{r.get('method')} {r.get('order')}"
        if len(models) > 1:
            label += f" {r.get('score_model_arch')}->{r.get('model_arch')}"
        groups.setdefault(label, []).append(r)
    parts = []
    for label, members in groups.items():
        ks = sorted({r["samples_per_class"] for r in members if r.get("samples_per_class") is not None})
        fractions = sorted({r["fraction"] for r in members if r.get("samples_per_class") is None and r.get("fraction")})
        sizes = ([f"k={','.join(str(k) for k in ks)}"] if ks else []) + [f"{100 * f:g}%" for f in fractions]
        parts.append(f"{label} {' '.join(sizes)} ({len(members)} run{'s' if len(members) > 1 else ''})")
    listed = ", ".join(parts[:shown]) + (f", and {len(parts) - shown} more" if len(parts) > shown else "")
    return f"note: {len(unfit)} of {len(runs)} runs did not fit their coreset (marked † in the table): {listed}"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
    """One stage-3 run in a worker: (seconds, its ``note:`` lines, its warnings as (kind, line)), or
    "busy". Its other output is dropped (its log and result are files), but a note is news the user
    must see (a results.csv kept aside, a run trained unweighted), and a warning too: the parent
    prints them (each warning once over the grid)."""
    import torch

    if flags.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available():
        flags = {**flags, "device": f"cuda:{_WORKER['index'] % torch.cuda.device_count()}"}
    started = time.perf_counter()
    out, warnings = io.StringIO(), []
    with contextlib.redirect_stdout(out), progress.routed(lambda kind, line: warnings.append((kind, line))):
        try:
            run_stage(3, flags)
        except RunBusy:
            return "busy"
    notes = [line for line in out.getvalue().splitlines() if line.startswith("note: ")]
    return time.perf_counter() - started, notes, warnings
