"""The GPU check's processes: a supervisor that keeps the time budget and writes the report, and workers
that run the steps (a fresh worker after a failed step, so that a crashed CUDA context cannot spoil the
next one).

A worker runs the steps named by ``--steps`` in order; each writes ``{results}/{step}.json`` when it
ends. A step that raises is recorded and ends the worker (exit status 3): the supervisor starts a
fresh process for the remaining steps.
"""
from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from bench.gpu.config import CPU, GPU, MIN_STEP_S, STEPS, TAIL_LINES, say
from bench.gpu.fidelity import step_collection, step_fidelity
from bench.gpu.report import check_targets, new_report, overall_ok, previous_report, print_summary, read_json, \
    skipped_steps, write_json
from bench.gpu.steps import Context, environment, step_bench, step_precision, step_pytest
from utils.cli.flags import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.py")


STEP_FUNCTIONS: dict[str, Callable[[Context], dict]] = {
    "pytest": step_pytest, "bench": step_bench, "precision": step_precision, "collection": step_collection,
    "fidelity": step_fidelity}

def run_worker(args: Settings) -> int:
    """Run the steps of ``--steps`` in order, each writing ``{results}/{step}.json``.

    Returns:
        0 when every step succeeded, 3 after the first failing step (the rest is left to a new worker).
    """
    mode = CPU if args.cpu else GPU
    if args.cpu:
        import torch

        torch.set_num_threads(1)  # tiny work: on a busy machine a second thread only spins against other jobs
    write_json(os.path.join(args.results, "env.json"), environment(mode))
    ctx = Context(mode, args.workdir, args.data_path or os.path.join(args.workdir, "data"), not args.data_path,
                  args.timeout, {})
    for name in args.steps:
        t0 = time.perf_counter()
        try:
            result = {**STEP_FUNCTIONS[name](ctx), "status": "ok"}
        except (Exception, SystemExit) as exc:  # recorded, then a fresh process takes the remaining steps
            lines = traceback.format_exc().rstrip().splitlines()
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}".strip()[:2000],
                      "traceback": lines[-12:]}
            print("\n".join(lines[-12:]), flush=True)
        result["seconds"] = time.perf_counter() - t0
        write_json(os.path.join(args.results, f"{name}.json"), result)
        if result["status"] != "ok":
            return 3
    return 0

class Worker:
    """A worker process; its output is echoed line by line and the last lines are kept."""

    def __init__(self, cmd: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace", bufsize=1, start_new_session=True)
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            self.tail.append(line.rstrip("\n"))

    def wait_for(self, path: str, deadline: float) -> dict:
        """The step result written to ``path``, or a failure record when the worker dies or the deadline passes."""
        while True:
            if os.path.exists(path):
                return read_json(path) or {"status": "error", "error": f"unreadable result file {path}"}
            code = self.proc.poll()
            if code is not None:
                time.sleep(0.2)  # the reader may still hold the last lines
                if os.path.exists(path):
                    continue
                return {"status": "error", "error": f"the worker process exited with status {code} during the step",
                        "log_tail": list(self.tail)}
            if time.monotonic() > deadline:
                self.stop()
                return {"status": "timeout", "error": "the step ran past its deadline (--timeout / --budget) and "
                                                      "was stopped", "log_tail": list(self.tail)}
            time.sleep(0.2)

    def stop(self) -> None:
        """End the worker and everything it started (its own process group)."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.reader.join(timeout=5)

    def finish(self) -> None:
        """Let a worker that has written its last result exit (stopped if it hangs)."""
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        self.stop()

@dataclass
class Plan:
    """One supervisor run: where things go and when it must end."""
    args: Settings
    work: str
    run_dir: str
    started: float
    deadline: float

def worker_command(plan: Plan, steps: list[str], results: str) -> list[str]:
    cmd = [sys.executable, SCRIPT, "--worker", "--steps", ",".join(steps), "--results", results,
           "--workdir", plan.work, "--timeout", str(plan.args.timeout)]
    if plan.args.data_path:
        cmd += ["--data_path", plan.args.data_path]
    return cmd + (["--cpu"] if plan.args.cpu else [])

def worker_env(plan: Plan) -> dict[str, str]:
    """The worker's environment: unbuffered output and empty compiler caches of this run."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not plan.args.warm_cache:
        cache = os.path.join(plan.run_dir, "compile_cache")
        env.update(TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"))
    return env

def run_steps(plan: Plan, pending: list[str], report: dict, save: Callable[[], None]) -> None:
    """Run ``pending`` in workers, recording each step's result in ``report`` as it ends."""
    number = {name: i + 1 for i, name in enumerate(STEPS)}
    while pending:
        results = tempfile.mkdtemp(prefix="results_", dir=plan.run_dir)
        worker = Worker(worker_command(plan, pending, results), worker_env(plan))
        try:
            for name in list(pending):
                left = plan.deadline - time.monotonic()
                if left < min(MIN_STEP_S, plan.args.timeout):
                    worker.stop()
                    for rest in pending:
                        report["steps"][rest] = {"status": "not_run", "error": "the time budget (--budget) was spent"}
                    pending.clear()
                    break
                limit = min(plan.args.timeout, left)
                say(f"step {number[name]}/{len(STEPS)} {name}: started (deadline {limit:.0f} s; "
                    f"{time.monotonic() - plan.started:.1f} s elapsed)")
                t0 = time.monotonic()
                result = worker.wait_for(os.path.join(results, f"{name}.json"), t0 + limit)
                result.setdefault("seconds", time.monotonic() - t0)
                report["steps"][name] = result
                pending.remove(name)
                _merge_env(report, results)
                save()
                say(f"step {number[name]}/{len(STEPS)} {name}: {result['status']} in {result['seconds']:.1f} s "
                    f"({time.monotonic() - plan.started:.1f} s elapsed)"
                    + (f": {result.get('error')}" if result["status"] != "ok" else ""))
                if result["status"] != "ok":
                    break  # the worker exits (or was stopped); a new one takes the rest
            else:
                worker.finish()
        finally:
            worker.stop()

def _merge_env(report: dict, results: str) -> None:
    """Take device and torch facts from the worker's env.json."""
    env = read_json(os.path.join(results, "env.json"))
    if env:
        report["env"] = env
        report["device"], report["torch"] = env.get("device"), env.get("torch")

def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()

def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")

def supervise(args: Settings) -> int:
    """Run the check; returns the exit status."""
    mode = CPU if args.cpu else GPU
    if not args.cpu and not cuda_available():
        print("error: no CUDA device is visible; run on a GPU machine, or pass --cpu for the tiny CPU mode",
              file=sys.stderr)
        return 2
    previous = previous_report(args.out, mode)
    skip = skipped_steps(args.skip, previous)
    work = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="gpu_check_"))
    os.makedirs(work, exist_ok=True)
    start = time.monotonic()
    plan = Plan(args, work, tempfile.mkdtemp(prefix="run_", dir=work), start, start + args.budget)
    report = new_report(mode, args, previous)

    def save() -> None:
        report["seconds"] = time.monotonic() - start
        report["targets"] = check_targets(report["steps"], mode.enforce)
        report["ok"] = overall_ok(report, mode.enforce)
        write_json(args.out, report)

    say(f"{mode.name} mode; work folder {work}; report {args.out}; budget {args.budget:.0f} s, "
        f"{args.timeout:.0f} s per step")
    for name in skip:
        old = (previous or {}).get("steps", {}).get(name)
        report["steps"][name] = {**old, "reused": True} if old else {"status": "skipped", "reason": "--skip"}
        say(f"step {STEPS.index(name) + 1}/{len(STEPS)} {name}: skipped"
            + (f" (result of the earlier run reused: {old.get('status')})" if old else ""))
    interrupted = False
    signal.signal(signal.SIGTERM, _interrupt)  # a killed run still stops its worker and writes the report
    try:
        run_steps(plan, [n for n in STEPS if n not in skip], report, save)
    except KeyboardInterrupt:
        interrupted = True
        for name in STEPS:
            report["steps"].setdefault(name, {"status": "not_run", "error": "interrupted"})
    finally:
        report["steps"] = {name: report["steps"][name] for name in STEPS if name in report["steps"]}
        save()
        if not args.keep:  # a given --workdir keeps its data for reruns; this run's caches go
            shutil.rmtree(plan.run_dir if args.workdir else work, ignore_errors=True)
    print_summary(report)
    if interrupted:
        return 130
    if mode.enforce:
        return 0 if report["ok"] else 1
    return 0 if all(report["steps"][n].get("status") in ("ok", "skipped") for n in STEPS) else 1
