"""Benchmark the per-class model methods of stage 2 (utils/methods/) at CIFAR-100 scale.

Builds synthetic CIFAR-100-shaped features with a fixed seed (45,000 training rows, 100 classes
of 450 rows, 512-dim embeddings, 100-class logits, 50 validation rows per class), as the
evaluation pass of stage 2 gives them, then times every method ranking ALL rows of EVERY class
through stage 2's own per-class path (:func:`utils.scoring.snapshot.rank_classes`: the method's
scorer called once per class on its :class:`~utils.methods.features.ClassFeatures`), and prints one
row per method: seconds for the whole class loop, the target (60 s for the embedding/probability
methods, 120 s for the gradient methods), ok/MISSED. Exit status 1 if a target is missed (full
size only). DeepFool, which evaluates the network itself, is not timed here.

    python bench/bench_methods.py                 # full size on the CPU (2 threads)
    python bench/bench_methods.py --device cuda   # the same on the GPU
    python bench/bench_methods.py --small         # 10 tiny classes: seconds on any CPU
    python bench/bench_methods.py --only herding,glister
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.methods import registry as methods  # noqa: E402  (after the path fix above)
from utils.cli.config import STAGE2  # noqa: E402
from utils.cli.entry import run_cli  # noqa: E402
from utils.cli.flags import Flag, FlagSet  # noqa: E402
from utils.cli.kinds import Bool, Choice, Int, ListOf  # noqa: E402
from utils.methods.features import Features  # noqa: E402
from utils.scoring import snapshot  # noqa: E402

SEED = 0
GLISTER_ETA = 0.1              # DeepCore's default: the training learning rate
EMBEDDING_TARGET_S = 60.0
GRADIENT_TARGET_S = 120.0
# name: (classes, rows per class, embedding dim, validation rows per class)
SIZES = {"full": (100, 450, 512, 50), "small": (10, 40, 32, 5)}


def make_data(classes: int, per_class: int, dim: int, val_per_class: int, device: torch.device) -> dict:
    """Synthetic features of a training and a validation split, as stage 2's evaluation pass gives
    them: post-ReLU-like embeddings around a class centre, logits that favour the true class
    (mostly confident, some not), float32. Returns the features and the split's labels in the
    layout of a loss file (``train_indices``, ``tr_lbl``, ``val_indices``, ``val_lbl``)."""
    g = torch.Generator().manual_seed(SEED)

    def split(n_per):
        y = torch.arange(classes).repeat_interleave(n_per)
        centre = torch.randn(classes, dim, generator=g)
        emb = torch.relu(centre[y] + torch.randn(len(y), dim, generator=g)) * (10.0 / dim ** 0.5)
        logits = 2.0 * torch.randn(len(y), classes, generator=g)
        logits[torch.arange(len(y)), y] += 6.0 * torch.rand(len(y), generator=g)
        return Features(logits.to(device), emb.to(device), y.to(device)), y.numpy()

    train, y = split(per_class)
    val, y_val = split(val_per_class)
    losses = {"train_indices": np.arange(len(y), dtype=np.int64), "tr_lbl": y,
              "val_indices": np.arange(len(y), len(y) + len(y_val), dtype=np.int64), "val_lbl": y_val}
    return {"train": train, "val": val, "losses": losses}


def method_calls(data: dict) -> dict[str, tuple[Callable, float]]:
    """name -> (call() ranking every class with the method as stage 2 does, target seconds), the
    embedding and probability methods first."""
    options = {"seed": SEED, "cal_neighbors": STAGE2["cal_neighbors"].default, "glister_eta": GLISTER_ETA}
    full = snapshot.full_gradients(data["train"])

    def call(method):
        val = data["val"] if method.validation else None
        return lambda: snapshot.rank_classes(method, data["train"], val, data["losses"], options, full)

    def target(method):
        return GRADIENT_TARGET_S if "grads" in method.inputs else EMBEDDING_TARGET_S

    timed = sorted((m for m in methods.METHODS.values() if m.uses_model and "model" not in m.inputs), key=target)
    return {m.name: (call(m), target(m)) for m in timed}


def _timed_names() -> tuple[str, ...]:
    return tuple(m.name for m in methods.METHODS.values() if m.uses_model and "model" not in m.inputs)


FLAGS = FlagSet([
    Flag("small", Bool(), False, "tiny synthetic classes (seconds on any CPU)"),
    Flag("device", Choice(("cpu", "cuda")), "cpu", "where the methods run"),
    Flag("threads", Int(1, 1024), 2, "torch CPU threads"),
    Flag("only", ListOf(Choice(_timed_names), unique=True), [], "methods to time (default: all)"),
])


@FLAGS.command(__doc__.splitlines()[0])
def main(**flags) -> int:
    """Returns the exit status: 1 when a full-size run misses a target."""
    args = FLAGS.settings(flags)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = "small" if args.small else "full"
    classes, per_class, dim, val_per_class = SIZES[size]

    data = make_data(classes, per_class, dim, val_per_class, device)
    calls = method_calls(data)
    if args.only:
        calls = {k: v for k, v in calls.items() if k in args.only}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(f"== selection-method benchmark ({size}): {classes} classes x {per_class} rows, D={dim}, "
          f"C={classes}, {val_per_class} validation rows per class, device {args.device}")
    print(f"{'method':<22}{'seconds':>9}{'target':>8}  status")
    missed = []
    for name, (call, target) in calls.items():
        sync()
        start = time.perf_counter()
        call()
        sync()
        seconds = time.perf_counter() - start
        ok = seconds <= target
        if not ok:
            missed.append(name)
        print(f"{name:<22}{seconds:>9.2f}{target:>8.0f}  {'ok' if ok else 'MISSED'}", flush=True)
    print(f"cpus={os.cpu_count()} torch={torch.__version__} threads={torch.get_num_threads()}")
    return 1 if missed and size == "full" else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
