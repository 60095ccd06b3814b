"""The whole GPU check of the fast path (compiled, CUDA graphs, bf16) in one run, written to one JSON file.

    python bench/gpu_check.py --out gpu_check.json       # one GPU (H200: expected 4-5 minutes)
    python bench/gpu_check.py --cpu --out /tmp/x.json    # tiny CPU mode (tests the script itself)
    python bench/gpu_check.py --skip done                # rerun only the steps that did not succeed

Steps, in order (one progress line each, flushed):

1. ``pytest``: ``pytest -q -m gpu tests/test_gpu.py`` (the fast path's correctness on tiny data);
   pass/fail/skip counts and duration.
2. ``bench``: bench/bench_training.py's stage 1 and stage 3 runs (ResNet-18, fake CIFAR-100 of the
   real shape, batch 128, 4 epochs each), compiled in bf16 and eager in fp32: seconds per phase,
   steady-state epoch, warm-up, wall, compiled graphs, graph breaks, CUDA-graph fallbacks, and the
   extrapolated default stage 1 (warm-up + 164 steady epochs).
3. ``precision``: bench_training.compare_precision (bf16 vs fp32 losses of the same weights and
   after one epoch trained each way).
4. ``collection``: seconds of stage 1's per-example pass (45,000 training + 5,000 validation
   examples) in fp32 with TF32 off and in bf16, on the same weights, through the compiled evaluation.
5. ``fidelity``: a 12-epoch stage-1 run (bf16 training, compiled, a snapshot after every epoch);
   every snapshot's training and validation losses evaluated in fp32 and in bf16; CLD from each loss
   matrix; per class, the Jaccard index of the two top-10% sets (mean, minimum) and the
   correlation of the two CLD score vectors.

Then the targets of the GPU work are checked (stage-1 epoch <= 1.3 s, stage-3 epoch <= 0.35 s,
warm-up <= 60 s, 164-epoch stage 1 < 300 s, mean Jaccard >= 0.95, fp32 collection <= 0.3 s per
epoch over bf16; and the GPU tests pass, the bf16 losses stay within bench_training's tolerances),
and the report is written atomically to ``--out`` after every step. Exit status: 0 when every
target is met, 1 otherwise; with ``--cpu`` targets are reported but not enforced (``ok`` is null)
and the status is 0 when every step ran. A bad flag is one ``error:`` line and status 2.

The steps run in a worker process (one for all steps, a new one after a step fails, so that a
crashed CUDA context cannot spoil the next step); each step has a deadline (``--timeout``) and
the whole run a budget (``--budget``) after which no step starts, so the report is written in
time. The data is bench/fake_cifar's CIFAR-100 of the real shape with 20% of its training
labels shuffled: the clean fake classes are separable by colour alone, so once a network has
learnt the colours every loss heads to zero and CLD would rank rounding noise, which real
CIFAR-100 does not do (``--data_path`` takes a real CIFAR-100 instead). It and everything else go
to ``--workdir`` (a temporary folder by default, removed at the end). Compiler caches start empty
in every run, so stage 1's warm-up is the cold cost; stage 3 and the later steps reuse stage 1's
kernels, as a pipeline's later stages would.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402  (after the path fix above; no torch here: the supervisor stays light)

from bench import bench_training as bt  # noqa: E402  (no torch at import either)
from utils import paths  # noqa: E402
from utils.cli.config import STAGE1  # noqa: E402
from utils.cli.entry import ArgumentParser  # noqa: E402

SCHEMA = "cld-gpu-check/1"
STEPS = ("pytest", "bench", "precision", "collection", "fidelity")
PAPER_EPOCHS = STAGE1["epochs"].default  # what the extrapolation is for
TOP_FRACTION = 0.1           # the coreset compared by the fidelity step: top 10% of every class
LABEL_NOISE = 0.2            # share of the fake training labels shuffled (see the docstring)
DATA_SEED = 0
TAIL_LINES = 40              # output lines kept for a failed step's record
MIN_STEP_S = 20.0            # a step is not started with less of the budget left

# The targets of the GPU work (seconds on one H200 unless stated; the first three are
# bench_training's). name: (step, rule, threshold, what).
TARGETS: dict[str, tuple[str, str, Any, str]] = {
    "stage1_epoch_s": ("bench", "<=", bt.TARGETS["stage1_epoch"],
                       "compiled bf16 stage-1 epoch (train + test + collect), steady state"),
    "stage3_epoch_s": ("bench", "<=", bt.TARGETS["stage3_epoch"],
                       "compiled bf16 stage-3 epoch on 5,000 examples, steady state"),
    "compile_warmup_s": ("bench", "<=", bt.TARGETS["warmup"],
                         "one-time warm-up of the compiled stages (the larger of 1 and 3)"),
    "stage1_164_epochs_s": ("bench", "<", 300.0, "default stage 1: warm-up + 164 steady epochs"),
    "fidelity_jaccard_mean": ("fidelity", ">=", 0.95, "mean over classes of the Jaccard index of the top-10% "
                                                      "CLD sets from the losses stage 1 recorded (its default "
                                                      "collection precision) and from an fp32 re-evaluation"),
    "fp32_collect_extra_s": ("collection", "<=", 0.3, "seconds per epoch the fp32 collection costs over bf16"),
    "gpu_tests_failed": ("pytest", "<=", 0, "failed + erroring GPU tests (null when none passed)"),
    "precision_within_tolerance": ("precision", "==", True, "bf16 vs fp32 losses within bench_training's "
                                                            "tolerances"),
}


@dataclass(frozen=True)
class Mode:
    """Sizes and settings of one mode of the check."""
    name: str
    device: str
    model_arch: str
    per_class: int               # fake CIFAR-100: training images per class
    test_per_class: int
    num_classes: int             # classes populated (of CIFAR-100's 100)
    batch_size: int
    test_batch_size: int
    learning_rate: float
    bench_epochs: int
    compile: bool | str          # --compile of the compiled configuration (True: reduce-overhead on a GPU)
    precision: str               # its training precision
    fidelity_epochs: int
    fidelity_precision: str
    fidelity_compile: bool | str
    timing_repeats: int          # timed collection passes per precision (median taken)
    verbose: bool                # show the stages' own per-epoch lines
    enforce: bool                # whether targets decide the exit status
    timeout: float               # default --timeout (per step)
    budget: float                # default --budget (whole run)


GPU = Mode("gpu", "cuda", "resnet18", per_class=500, test_per_class=100, num_classes=100, batch_size=128,
           test_batch_size=256, learning_rate=0.1, bench_epochs=4, compile=True, precision="bf16",
           fidelity_epochs=12, fidelity_precision="bf16", fidelity_compile=True, timing_repeats=3,
           verbose=True, enforce=True, timeout=300.0, budget=540.0)
# Tiny CPU mode: every step end to end in about half a minute on two cores. aot_eager compiles
# through dynamo and AOTAutograd (graph capture, recompilation) without generating code. Training
# is fp32 (bf16 autocast is several times slower than fp32 on a CPU); bf16 is still evaluated by
# the precision, collection and fidelity steps. 4 classes x 10 images: a 36 + 4 split, 3 full
# batches of 12 per epoch.
CPU = Mode("cpu", "cpu", "resnet20", per_class=10, test_per_class=2, num_classes=4, batch_size=12,
           test_batch_size=16, learning_rate=0.01, bench_epochs=2, compile="aot_eager", precision="fp32",
           fidelity_epochs=3, fidelity_precision="fp32", fidelity_compile="aot_eager", timing_repeats=1,
           verbose=False, enforce=False, timeout=120.0, budget=300.0)


def say(line: str) -> None:
    """One progress line, flushed (a log file shows it at once)."""
    print(f"[gpu_check] {line}", flush=True)


# ===================================================================================== helpers


def top_count(n: int, fraction: float = TOP_FRACTION) -> int:
    """Examples in the top ``fraction`` of a class of ``n`` (at least one).

    Args:
        n: examples in the class.
        fraction: the share kept.

    Returns:
        max(1, round(fraction * n)).
    """
    return max(1, int(round(fraction * n)))


def top_fraction_jaccard(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                         fraction: float = TOP_FRACTION) -> dict[int, float]:
    """Per class, the Jaccard index of the top-``fraction`` sets that two score vectors select.

    Each class is ranked as stage 3 ranks it (:func:`utils.scoring.trajectory.rank_per_class`: highest score
    first, ties by dataset index) and its first :func:`top_count` examples are kept.

    Args:
        scores_a, scores_b: (N,) scores of the same examples.
        labels: (N,) their classes.
        indices: (N,) their dataset indices.
        fraction: the share of every class kept.

    Returns:
        {class: |A & B| / |A | B|}.
    """
    from utils.scoring.trajectory import rank_per_class

    ranked_a, _ = rank_per_class(scores_a, labels, indices)
    ranked_b, _ = rank_per_class(scores_b, labels, indices)
    out = {}
    for c, order_a in ranked_a.items():
        k = top_count(len(order_a), fraction)
        a, b = set(order_a[:k].tolist()), set(ranked_b[c][:k].tolist())
        out[c] = len(a & b) / len(a | b)
    return out


def parse_pytest_summary(text: str) -> dict[str, Any]:
    """Counts and seconds from pytest's final summary line (``3 passed, 2 skipped in 4.1s``).

    Args:
        text: pytest's output.

    Returns:
        {"passed", "failed", "skipped", "errors", "xfailed", "xpassed", "deselected": int,
        "seconds": float | None}.
    """
    counts = dict.fromkeys(("passed", "failed", "skipped", "errors", "xfailed", "xpassed", "deselected"), 0)
    summary = next((line for line in reversed(text.splitlines()) if re.search(r"\bin [\d.]+s\b", line)), "")
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", summary):
        counts["errors" if word.startswith("error") else word] += int(number)
    seconds = re.search(r"\bin ([\d.]+)s\b", summary)
    return {**counts, "seconds": float(seconds.group(1)) if seconds else None}


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made plain and NaN/inf made None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, record: dict) -> None:
    """Write ``record`` to ``path`` atomically (readers see the old file or the new one)."""
    from utils.files.atomic import atomic_write

    text = json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: str) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def git_commit() -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it (None when git is missing)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": sha, "dirty": None if status is None else bool(status)}


# ===================================================================================== targets


def _bench_value(steps: dict, name: str) -> float | None:
    """A bench target's value from the compiled configuration's stage records."""
    compiled = steps.get("bench", {}).get("configs", {}).get("compiled", {})
    s1, s3 = compiled.get("stage1") or {}, compiled.get("stage3") or {}
    if name == "stage1_epoch_s":
        return s1.get("epoch_s")
    if name == "stage3_epoch_s":
        return s3.get("epoch_s")
    if name == "compile_warmup_s":
        warmups = [w for w in (s1.get("warmup_s"), s3.get("warmup_s")) if w is not None]
        return max(warmups) if warmups else None
    return compiled.get("stage1_164_epochs_s")


def target_value(steps: dict, name: str) -> Any:
    """The measured value of target ``name`` from the steps' records (None when not measured).

    Args:
        steps: the report's ``steps``.
        name: a key of :data:`TARGETS`.

    Returns:
        The value, or None when its step did not succeed.
    """
    step = TARGETS[name][0]
    record = steps.get(step) or {}
    if record.get("status") != "ok":
        return None
    if step == "bench":
        return _bench_value(steps, name)
    if name == "fidelity_jaccard_mean":
        return record.get("default_jaccard_mean")
    if name == "fp32_collect_extra_s":
        return record.get("extra_s")
    if name == "gpu_tests_failed":
        return record["failed"] + record["errors"] if record.get("passed") else None
    return record.get("ok")


def _meets(value: Any, rule: str, threshold: Any) -> bool:
    if value is None:
        return False
    return {"<=": value <= threshold, "<": value < threshold, ">=": value >= threshold,
            "==": value == threshold}[rule]


def check_targets(steps: dict, enforce: bool) -> dict[str, dict]:
    """Every target's value, threshold and verdict.

    Args:
        steps: the report's ``steps``.
        enforce: False in CPU mode: verdicts are None (the thresholds are for one H200).

    Returns:
        {name: {"value", "target", "rule", "ok", "what"}}.
    """
    out = {}
    for name, (_, rule, threshold, what) in TARGETS.items():
        value = target_value(steps, name)
        out[name] = {"value": value, "target": threshold, "rule": rule,
                     "ok": _meets(value, rule, threshold) if enforce else None, "what": what}
    return out


def overall_ok(report: dict, enforce: bool) -> bool | None:
    """True when every step succeeded and every target is met; None when targets are not enforced."""
    if not enforce:
        return None
    steps_ok = all(report["steps"].get(name, {}).get("status") == "ok" for name in STEPS)
    return steps_ok and all(t["ok"] for t in report["targets"].values())


# ====================================================================================== worker
#
# Runs the steps named by --steps in order; each writes {results}/{step}.json when it ends. A
# step that raises is recorded and ends the worker (exit status 3): the supervisor starts a
# fresh process for the remaining steps.


@dataclass
class Context:
    """What the steps share inside one worker."""
    mode: Mode
    work: str
    data_path: str
    fake_data: bool
    timeout: float
    evaluators: dict


def environment(mode: Mode) -> dict[str, Any]:
    """Device, torch and CPU facts of this process."""
    import torch

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count(),
           "cuda_available": torch.cuda.is_available()}
    if mode.device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1))
    else:
        env["device"] = f"cpu ({os.cpu_count()} cores)"
    return env


def ensure_data(ctx: Context) -> str:
    """The CIFAR-100 folder of every step: the user's, or a fake one with noisy labels (written once)."""
    if not ctx.fake_data:
        return ctx.data_path
    m = ctx.mode
    want = {"per_class": m.per_class, "test_per_class": m.test_per_class, "num_classes": m.num_classes,
            "label_noise": LABEL_NOISE, "seed": DATA_SEED}
    marker = os.path.join(ctx.data_path, "gpu_check_data.json")
    if read_json(marker) == want:
        return ctx.data_path
    t0 = time.perf_counter()
    write_noisy_cifar(ctx.data_path, m.per_class, m.test_per_class, m.num_classes, LABEL_NOISE, DATA_SEED)
    write_json(marker, want)
    say(f"data: fake CIFAR-100, {m.per_class * m.num_classes:,} training images ({LABEL_NOISE:.0%} of the labels "
        f"shuffled) and {m.test_per_class * m.num_classes:,} test images in {time.perf_counter() - t0:.1f} s")
    return ctx.data_path


def write_noisy_cifar(path: str, per_class: int, test_per_class: int, num_classes: int, noise: float,
                      seed: int) -> None:
    """bench/fake_cifar's CIFAR-100 with a share ``noise`` of the training labels shuffled.

    The chosen labels are permuted among themselves, so every class keeps its size (stage 1's
    split stays 45,000 + 5,000 at full size) while almost every chosen example gets another
    class's label (a permutation keeps a label with probability about 1 / classes).

    Args:
        path: the data folder ({path}/cifar/cifar-100-python/...).
        per_class, test_per_class, num_classes: as :func:`bench.fake_cifar.write_fake_cifar`.
        noise: share of the training examples whose labels are shuffled.
        seed: seed of the images and of the shuffle.
    """
    import pickle

    from bench.fake_cifar import LAYOUT, write_fake_cifar
    from utils.files.unpickle import load_pickle

    write_fake_cifar(path, "CIFAR100", per_class=per_class, test_per_class=test_per_class,
                     num_classes=num_classes, seed=seed)
    folder, (train_file,), _, label_key, _ = LAYOUT["CIFAR100"]
    (train_path,) = paths.cifar_files(path, folder, [train_file])
    batch = load_pickle(train_path, "fake CIFAR-100 file", encoding="latin1")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    rng = np.random.default_rng(seed + 1)
    chosen = rng.choice(len(labels), size=int(round(noise * len(labels))), replace=False)
    labels[chosen] = labels[rng.permutation(chosen)]  # shuffled among themselves: class sizes unchanged
    batch[label_key] = [int(x) for x in labels]
    with open(train_path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def _reset_compiler() -> None:
    """Fresh dynamo state and counters (a step's compile counts are its own)."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def step_pytest(ctx: Context) -> dict:
    """Run the GPU tests in a subprocess (its own empty compiler cache); counts and duration."""
    env = dict(os.environ)
    if "TORCHINDUCTOR_CACHE_DIR" in env:  # a cache of its own: the bench step's warm-up stays cold
        cache = env["TORCHINDUCTOR_CACHE_DIR"] + "_pytest"
        env.update(TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, errors="replace",
                          timeout=ctx.timeout)
    text = done.stdout + done.stderr
    for line in text.splitlines()[-TAIL_LINES:]:
        print(f"  pytest| {line}", flush=True)
    counts = parse_pytest_summary(text)
    counts["pytest_s"] = counts.pop("seconds")  # pytest's own count; the step's "seconds" is the wall time
    if done.returncode not in (0, 1):  # 0: all passed or skipped; 1: some failed; else pytest broke
        raise RuntimeError(f"pytest exited with status {done.returncode}: "
                           f"{(text.strip().splitlines() or ['no output'])[-1]}")
    import torch

    all_skipped = counts["skipped"] and not (counts["passed"] or counts["failed"] or counts["errors"])
    note = f"every test skipped{'' if torch.cuda.is_available() else ': no CUDA device'}" if all_skipped else ""
    return {**counts, "returncode": done.returncode, "command": " ".join(cmd[2:]), "note": note,
            "tail": text.splitlines()[-15:]}


def _compile_counts() -> dict[str, Any]:
    """What dynamo and inductor counted since the last reset (bench_training's notes, as numbers)."""
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"].get("unique_graphs", 0), "frames": counters["frames"].get("total", 0),
            "cudagraph_fallbacks": counters["inductor"].get("cudagraph_skips", 0),
            "graph_breaks": sum(counters["graph_break"].values()),
            "graph_break_reasons": list(counters["graph_break"])[:5]}


def _timing_record(t, counts: dict | None) -> dict:
    """One bench_training.StageTiming as numbers (steady state = median over epochs 2..n)."""
    record = {"train_n": t.train_n, "epochs": len(t.rows), "train_s": t.phase("seconds_train"),
              "test_s": t.phase("seconds_test"), "collect_s": t.phase("seconds_collect"), "epoch_s": t.epoch,
              "first_s": t.first, "warmup_s": t.warmup, "wall_s": t.wall, "per_epoch_s": t.totals(),
              "notes": t.notes}
    return {**record, **(counts or {})}


def _bench_config(ctx: Context, name: str, precision: str, compile: bool | str, data: str) -> tuple[dict, list]:
    """Stage 1 then stage 3 of one configuration; (record, the StageTimings for the table)."""
    m = ctx.mode
    flags = dict(model_arch=m.model_arch, device=m.device, precision=precision, compile=compile,
                 epochs=m.bench_epochs, batch_size=m.batch_size, test_batch_size=m.test_batch_size,
                 learning_rate=m.learning_rate)
    work = os.path.join(ctx.work, f"bench_{name}")
    compiling = compile is not False
    say(f"bench: {name} ({precision}, compile {compile}) stage 1, {m.bench_epochs} epochs")
    stage1, loss_path = bt.run_stage1(data, work, flags, quiet=not m.verbose, warm_cache=True)
    counts1 = _compile_counts() if compiling else None
    per_class = max(1, round(bt.CORESET_FRACTION * m.per_class))
    say(f"bench: {name} stage 3, {per_class} examples per class")
    stage3 = bt.run_stage3(data, work, loss_path, per_class, flags, quiet=not m.verbose, warm_cache=True)
    counts3 = _compile_counts() if compiling else None
    s1 = _timing_record(stage1, counts1)
    record = {"precision": precision, "compile": compile, "stage1": s1, "stage3": _timing_record(stage3, counts3),
              "stage1_164_epochs_s": s1["warmup_s"] + PAPER_EPOCHS * s1["epoch_s"]}
    shutil.rmtree(work, ignore_errors=True)  # checkpoints and loss files: not needed any more
    return record, [stage1, stage3]


def step_bench(ctx: Context) -> dict:
    """bench_training's stage 1 and 3 runs, compiled (the fast path) and eager fp32 (reference)."""
    from utils.train.device import resolve_compile, resolve_device

    data = ensure_data(ctx)
    m = ctx.mode
    device = resolve_device(m.device)
    configs = {}
    for name, precision, compile in (("compiled", m.precision, m.compile), ("eager", "fp32", False)):
        _reset_compiler()
        configs[name], timings = _bench_config(ctx, name, precision, compile, data)
        spec = resolve_compile(compile, device)
        rows, _ = bt.table_rows(timings, str(device), precision, "off" if spec is None else str(spec), False)
        bt.print_table(rows)
        for t in timings:
            for note in t.notes:
                print(f"note: {note}", flush=True)
    return {"model_arch": m.model_arch, "batch_size": m.batch_size, "epochs": m.bench_epochs, "configs": configs,
            "paper_stage1_epoch": bt.PAPER_STAGE1}


def step_precision(ctx: Context) -> dict:
    """bench_training.compare_precision on the check's data (eager: it is about numerics)."""
    data = ensure_data(ctx)
    m = ctx.mode
    _reset_compiler()
    result = bt.compare_precision(data, os.path.join(ctx.work, "precision"), model_arch=m.model_arch,
                                  device=m.device, compile=False, batch_size=m.batch_size,
                                  test_batch_size=m.test_batch_size, learning_rate=m.learning_rate, quiet=True)
    bt.print_precision(result)
    result["tolerances"] = {"same_weights": f"|d| <= {bt.SAME_ATOL:g} + {bt.SAME_RTOL:g} * max|z|",
                            "one_epoch": f"mean_loss_rel <= {bt.ONE_EPOCH_MEAN_RTOL:g}, "
                                         f"corr >= {bt.ONE_EPOCH_MIN_CORR:g}"}
    shutil.rmtree(os.path.join(ctx.work, "precision"), ignore_errors=True)
    return result


@dataclass
class Evaluator:
    """A model behind a Trainer whose (compiled) evaluation passes time or compute stage-1 losses.

    The weights are replaced in place (``load_state_dict``), so compiled graphs and CUDA graphs,
    which hold the parameters' addresses, stay valid for every snapshot.
    """
    model: Any
    trainer: Any
    source: Any
    train_idx: np.ndarray
    val_idx: np.ndarray
    batch_size: int

    def losses(self, indices: np.ndarray, precision: str) -> np.ndarray:
        """Per-example eval-mode losses of ``indices`` in ``precision`` (float32, host)."""
        out = self.trainer.evaluate(self.source.eval_batches(indices, self.batch_size), len(indices),
                                    precision=precision)
        return out["loss"].float().cpu().numpy()

    def collect_seconds(self, precision: str) -> float:
        """Seconds of one stage-1 collection pass (training split with signals, then validation)."""
        import torch

        sync = torch.cuda.synchronize if self.source.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        self.trainer.evaluate(self.source.eval_batches(self.train_idx, self.batch_size), len(self.train_idx),
                              signals=True, precision=precision)
        self.trainer.evaluate(self.source.eval_batches(self.val_idx, self.batch_size), len(self.val_idx),
                              precision=precision)
        sync()
        return time.perf_counter() - t0


def evaluator(ctx: Context) -> Evaluator:
    """The worker's evaluator (built and compiled once, shared by the collection and fidelity steps)."""
    if "main" in ctx.evaluators:
        return ctx.evaluators["main"]
    import torch

    from utils.data.batches import TensorBatches
    from utils.data.datasets import load_dataset
    from utils.data.splits import stratified_split
    from utils.train.device import resolve_device
    from utils.train.engine import Trainer, build_optimizer
    from utils.train.options import Recipe
    from utils.train.session import build_model

    m = ctx.mode
    device = resolve_device(m.device)
    data = load_dataset("CIFAR100", ensure_data(ctx), download=False)
    train_idx, val_idx = stratified_split(data.train.labels, data.info.val_split_ratio, 1234, data.num_classes)
    torch.manual_seed(0)
    model = build_model(m.model_arch, data.num_classes, data.info.name, device)
    trainer = Trainer(model, build_optimizer(model, Recipe(), device), device, m.precision, compile=m.compile,
                      eval_batch_size=m.test_batch_size)
    ctx.evaluators["main"] = Evaluator(model, trainer, TensorBatches(data.train, data.info, device), train_idx,
                                       val_idx, m.test_batch_size)
    return ctx.evaluators["main"]


def step_collection(ctx: Context) -> dict:
    """Seconds of stage 1's per-example pass in fp32 (TF32 off) and in bf16, on the same weights."""
    _reset_compiler()
    ev = evaluator(ctx)
    warmup = {p: ev.collect_seconds(p) for p in ("fp32", "bf16")}  # compiles (and records CUDA graphs)
    runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(ctx.mode.timing_repeats):  # alternated: a slow moment of the machine hits both
        for precision in runs:
            runs[precision].append(ev.collect_seconds(precision))
    fp32, bf16 = float(np.median(runs["fp32"])), float(np.median(runs["bf16"]))
    say(f"collection: fp32 {fp32:.3f} s, bf16 {bf16:.3f} s per pass over {len(ev.train_idx):,} + "
        f"{len(ev.val_idx):,} examples")
    return {"train_n": len(ev.train_idx), "val_n": len(ev.val_idx), "fp32_s": fp32, "bf16_s": bf16,
            "extra_s": fp32 - bf16, "ratio": fp32 / bf16 if bf16 > 0 else None, "fp32_runs_s": runs["fp32"],
            "bf16_runs_s": runs["bf16"], "first_pass_s": warmup, "compile": ctx.mode.compile}


def _fidelity_run(ctx: Context, data: str) -> tuple[dict, float]:
    """The stage-1 run whose snapshots the fidelity step evaluates; (its loss dict, seconds)."""
    import get_loss_values
    from utils.files.losses import load_losses

    m = ctx.mode
    out = os.path.join(ctx.work, "fidelity")
    dirs = {k: os.path.join(out, k) for k in ("checkpoint_path", "logpath", "scores_dir", "splits_dir")}
    say(f"fidelity: stage 1, {m.model_arch}, {m.fidelity_epochs} epochs ({m.fidelity_precision}, compile "
        f"{m.fidelity_compile}), a snapshot after every epoch")
    t0 = time.perf_counter()
    path = get_loss_values.main(data_path=data, dataset="CIFAR100", model_arch=m.model_arch, epochs=m.fidelity_epochs,
                                batch_size=m.batch_size, test_batch_size=m.test_batch_size, device=m.device,
                                precision=m.fidelity_precision, compile=m.fidelity_compile,
                                learning_rate=m.learning_rate, snapshot_epochs=list(range(1, m.fidelity_epochs + 1)),
                                workers=0, download=False, overwrite=True, **dirs)
    return load_losses(path), time.perf_counter() - t0


def _loss_matrices(ev: Evaluator, run: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every snapshot's training and validation losses in fp32 and in bf16: {precision: (E x N, E x V)}."""
    from utils.files.checkpoint import load_model_weights

    snapshots = {int(e): p for e, p in run["checkpoints"]["snapshots"].items()}
    epochs = len(run["epoch"])
    if sorted(snapshots) != list(range(1, epochs + 1)):
        raise RuntimeError(f"expected a snapshot after each of {epochs} epochs, found {sorted(snapshots)}")
    rows: dict[str, tuple[list, list]] = {"fp32": ([], []), "bf16": ([], [])}
    for epoch in range(1, epochs + 1):
        weights, _, _ = load_model_weights(snapshots[epoch])
        ev.model.load_state_dict(weights)  # in place: the compiled graphs stay valid
        for precision, (tr, val) in rows.items():
            tr.append(ev.losses(run["train_indices"], precision))
            val.append(ev.losses(run["val_indices"], precision))
    return {p: (np.stack(tr), np.stack(val)) for p, (tr, val) in rows.items()}


def fidelity_summary(run: dict, matrices: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """CLD from the fp32 and from the bf16 loss matrices, and how far their top-10% coresets agree;
    and how far the coresets from the losses stage 1 itself recorded (its default collection
    precision, fp32 with TF32 off) agree with the fp32 re-evaluation (the target).

    Args:
        run: the stage-1 loss dict (labels, indices, and the losses it recorded ``tr_loss``, ``val_loss``).
        matrices: {"fp32" | "bf16": (training losses E x N, validation losses E x V)}.

    Returns:
        Per-class Jaccard of bf16 vs fp32 (mean, min, count below 0.95: why fp32 is the default),
        of stage 1's own losses vs fp32 (``default_jaccard_*``), the CLD scores' correlation, how
        the two loss matrices differ, and how the fp32 matrix differs from the losses stage 1 recorded.
    """
    from utils.scoring.trajectory import cld

    base = {k: run[k] for k in ("tr_lbl", "val_lbl", "train_indices", "val_indices")}
    scores = {}
    for precision, (tr, val) in matrices.items():
        scores[precision] = cld({**base, "epoch": np.arange(tr.shape[0]), "tr_loss": tr.astype(np.float32),
                                 "val_loss": val.astype(np.float32)})
    scores["default"] = cld({**base, "epoch": np.arange(len(run["epoch"])), "tr_loss": run["tr_loss"],
                             "val_loss": run["val_loss"]})
    jaccard = top_fraction_jaccard(scores["fp32"], scores["bf16"], run["tr_lbl"], run["train_indices"])
    values = np.array(list(jaccard.values()))
    default = np.array(list(top_fraction_jaccard(scores["fp32"], scores["default"], run["tr_lbl"],
                                                 run["train_indices"]).values()))
    tr32, tr16 = matrices["fp32"][0].astype(np.float64), matrices["bf16"][0].astype(np.float64)
    diff = np.abs(tr16 - tr32)
    both = np.stack([scores["fp32"], scores["bf16"]])
    corr = float(np.corrcoef(both)[0, 1]) if both.std(axis=1).min() > 0 else None
    return {"epochs": int(tr32.shape[0]), "train_n": int(tr32.shape[1]), "val_n": int(matrices["fp32"][1].shape[1]),
            "loss_shape": list(tr32.shape), "fraction": TOP_FRACTION, "classes": len(values),
            "jaccard_mean": float(values.mean()), "jaccard_min": float(values.min()),
            "classes_below_0.95": int((values < 0.95).sum()), "cld_corr": corr,
            "default_jaccard_mean": float(default.mean()), "default_jaccard_min": float(default.min()),
            "default_collect_precision": run.get("collect_precision"),
            "loss_bf16_vs_fp32": {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                                  "mean_rel": float(diff.mean() / max(np.abs(tr32).mean(), 1e-12))},
            "fp32_vs_stage1_max_abs": float(np.abs(tr32 - run["tr_loss"].astype(np.float64)).max())}


def step_fidelity(ctx: Context) -> dict:
    """Ranking fidelity of bf16 collection: CLD coresets from fp32 and from bf16 losses of the same snapshots."""
    data = ensure_data(ctx)
    run, stage1_s = _fidelity_run(ctx, data)
    ev = evaluator(ctx)
    t0 = time.perf_counter()
    matrices = _loss_matrices(ev, run)
    eval_s = time.perf_counter() - t0
    summary = fidelity_summary(run, matrices)
    say(f"fidelity: top-{TOP_FRACTION:.0%} Jaccard of stage 1's own losses vs fp32: mean "
        f"{summary['default_jaccard_mean']:.4f}; bf16 vs fp32: mean {summary['jaccard_mean']:.4f}, min "
        f"{summary['jaccard_min']:.4f} over {summary['classes']} classes; CLD correlation {summary['cld_corr']}")
    shutil.rmtree(os.path.join(ctx.work, "fidelity"), ignore_errors=True)
    return {**summary, "stage1_wall_s": stage1_s, "evaluation_s": eval_s, "model_arch": ctx.mode.model_arch,
            "training_precision": ctx.mode.fidelity_precision, "compile": ctx.mode.fidelity_compile}


STEP_FUNCTIONS: dict[str, Callable[[Context], dict]] = {
    "pytest": step_pytest, "bench": step_bench, "precision": step_precision, "collection": step_collection,
    "fidelity": step_fidelity}


def run_worker(args: argparse.Namespace) -> int:
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
    for name in args.steps.split(","):
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


# ================================================================================== supervisor


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
    args: argparse.Namespace
    work: str
    run_dir: str
    started: float
    deadline: float


def worker_command(plan: Plan, steps: list[str], results: str) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--steps", ",".join(steps), "--results", results,
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


def previous_report(path: str, mode: Mode) -> dict | None:
    """The report a rerun may take skipped steps from: ``path``'s, if it is one of this mode."""
    old = read_json(path)
    if old and old.get("schema") == SCHEMA and old.get("mode") == mode.name and isinstance(old.get("steps"), dict):
        return old
    return None


def skipped_steps(skip: list[str], previous: dict | None) -> list[str]:
    """Step names to skip: the named ones, and with ``done`` those the previous report has as ok."""
    names = set(skip) - {"done"}
    if "done" in skip and previous:
        names |= {n for n, r in previous["steps"].items() if isinstance(r, dict) and r.get("status") == "ok"}
    return [n for n in STEPS if n in names]


def new_report(mode: Mode, args: argparse.Namespace, previous: dict | None) -> dict:
    commit = git_commit()
    base = previous or {}
    return {"schema": SCHEMA, "mode": mode.name, "device": base.get("device"), "torch": base.get("torch"),
            "commit": commit["commit"], "dirty": commit["dirty"], "env": base.get("env"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": None, "settings": asdict(mode),
            "data": "fake CIFAR-100" if not args.data_path else os.path.abspath(args.data_path),
            "label_noise": LABEL_NOISE if not args.data_path else 0.0, "steps": {}, "targets": {}, "ok": None}


def print_summary(report: dict) -> None:
    say("targets:")
    for name, t in report["targets"].items():
        value = t["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        verdict = {True: "ok", False: "MISSED", None: "-"}[t["ok"]]
        print(f"  {name:28s} {shown:>10s} {t['rule']:>2s} {t['target']!s:<6s} {verdict}", flush=True)
    say(f"ok: {report['ok']}; {report['seconds']:.1f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="the JSON report (written after every step)")
    parser.add_argument("--cpu", action="store_true",
                        help="tiny CPU mode: every step on tiny data, targets not enforced")
    parser.add_argument("--skip", default="", help=f"comma-separated steps to skip ({', '.join(STEPS)}), or 'done' "
                        "for those the existing --out report records as ok; their results are taken from it")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per step (default 300; --cpu 120)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run: no step starts "
                        "after it, so the report is written in time (default 540; --cpu 300)")
    parser.add_argument("--workdir", default="", help="folder for data and runs (default: temporary, removed)")
    parser.add_argument("--data_path", default="", help="a real CIFAR-100 in torchvision's layout (default: fake)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--warm_cache", action="store_true", help="use the user's compiler caches (warm-up not cold)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", default="", help=argparse.SUPPRESS)
    parser.add_argument("--results", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mode = CPU if args.cpu else GPU
    args.timeout = mode.timeout if args.timeout is None else args.timeout
    args.budget = mode.budget if args.budget is None else args.budget
    args.skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    args.data_path = os.path.abspath(args.data_path) if args.data_path else ""  # the worker runs in the repository
    unknown = sorted(set(args.skip) - set(STEPS) - {"done"})
    if unknown:
        parser.error(f"--skip: unknown step {', '.join(unknown)}; the steps are {', '.join(STEPS)} (or 'done')")
    if args.timeout <= 0 or args.budget <= 0:
        parser.error("--timeout and --budget must be positive")
    if args.worker and not (args.steps and args.results and args.workdir):
        parser.error("--worker needs --steps, --results and --workdir")
    return args


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def supervise(args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    return supervise(args)


if __name__ == "__main__":
    sys.exit(main())
