"""The GPU check's first three steps: the GPU tests, the training benchmark, and bf16 against fp32 losses.

Each step takes the worker's :class:`Context` and returns its record for the report.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import bench_training as bt
from bench.gpu.config import DATA_SEED, LABEL_NOISE, PAPER_EPOCHS, TAIL_LINES, Mode, say
from bench.gpu.report import parse_pytest_summary, read_json, write_json
from utils import paths

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
