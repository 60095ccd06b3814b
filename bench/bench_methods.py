"""Benchmark the per-class selection methods of utils/selectors.py at CIFAR-100 scale.

Builds synthetic CIFAR-100-shaped features with a fixed seed (45,000 training rows, 100 classes
of 450 rows, 512-dim embeddings, 100-class logits/probabilities, 50 validation rows per class),
then times every method ranking ALL rows of EVERY class, called once per class as stage 2 calls
it, and prints one row per method: seconds for the whole class loop, the target (60 s for the
embedding/probability methods, 120 s for the gradient methods), ok/MISSED. Exit status 1 if a
target is missed (full size only).

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

from utils import selectors as S  # noqa: E402  (after the path fix above)
from utils.cli import ArgumentParser  # noqa: E402

SEED = 0
GLISTER_ETA = 0.1              # DeepCore's default: the training learning rate
EMBEDDING_TARGET_S = 60.0
GRADIENT_TARGET_S = 120.0
# name: (classes, rows per class, embedding dim, validation rows per class)
SIZES = {"full": (100, 450, 512, 50), "small": (10, 40, 32, 5)}


def make_data(classes: int, per_class: int, dim: int, val_per_class: int, device: torch.device) -> dict:
    """Synthetic per-class features: post-ReLU-like embeddings around a class centre, logits that
    favour the true class (mostly confident, some not), float32 as a model would export them."""
    g = torch.Generator().manual_seed(SEED)

    def split(n_per):
        y = torch.arange(classes).repeat_interleave(n_per)
        centre = torch.randn(classes, dim, generator=g)
        emb = torch.relu(centre[y] + torch.randn(len(y), dim, generator=g)) * (10.0 / dim ** 0.5)
        logits = 2.0 * torch.randn(len(y), classes, generator=g)
        logits[torch.arange(len(y)), y] += 6.0 * torch.rand(len(y), generator=g)
        return y, emb, logits

    y, emb, logits = split(per_class)
    y_val, emb_val, logits_val = split(val_per_class)
    prob = torch.softmax(logits, 1)
    prob_val = torch.softmax(logits_val, 1)
    resid = prob - torch.nn.functional.one_hot(y, classes).float()
    resid_val = prob_val - torch.nn.functional.one_hot(y_val, classes).float()
    data = dict(E=emb, P=prob, R=resid, E_val=emb_val, Z_val=logits_val, R_val=resid_val, Y_val=y_val)
    return {k: v.to(device) for k, v in data.items()}


def method_calls(data: dict, classes: int, per_class: int, val_per_class: int) -> dict[str, tuple[Callable, float]]:
    """name -> (call(c) running the method on class c, target seconds)."""
    def rows(key, c):
        n = val_per_class if key.endswith("_val") else per_class
        return data[key][c * n:(c + 1) * n]

    def first(c):
        return int(np.random.default_rng(SEED + c).integers(per_class))

    E, P, R = (lambda c: rows("E", c)), (lambda c: rows("P", c)), (lambda c: rows("R", c))
    emb = {
        "least_confidence": lambda c: S.least_confidence(P(c)),
        "entropy": lambda c: S.entropy(P(c)),
        "margin": lambda c: S.margin(P(c)),
        "moderate": lambda c: S.moderate(E(c)),
        "herding": lambda c: S.herding(E(c)),
        "kcenter": lambda c: S.kcenter(E(c), first(c)),
        "contextual_diversity": lambda c: S.contextual_diversity(P(c), first(c)),
        "cal": lambda c: S.cal(E(c), P(c)),
    }
    grad = {
        "grand": lambda c: S.grand(R(c), E(c)),
        "craig": lambda c: S.craig(R(c), E(c)),
        "facility_location": lambda c: S.facility_location(R(c), E(c)),
        "graph_cut": lambda c: S.graph_cut(R(c), E(c)),
        "log_determinant": lambda c: S.log_determinant(R(c), E(c)),
        "gradmatch": lambda c: S.gradmatch(R(c), E(c), rows("R_val", c), rows("E_val", c)),
        "glister": lambda c: S.glister(R(c), E(c), rows("Z_val", c), rows("Y_val", c), rows("E_val", c),
                                       GLISTER_ETA),
    }
    return {**{k: (f, EMBEDDING_TARGET_S) for k, f in emb.items()},
            **{k: (f, GRADIENT_TARGET_S) for k, f in grad.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny synthetic classes (seconds on any CPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--only", default="", help="comma-separated method names (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = "small" if args.small else "full"
    classes, per_class, dim, val_per_class = SIZES[size]

    data = make_data(classes, per_class, dim, val_per_class, device)
    calls = method_calls(data, classes, per_class, val_per_class)
    if args.only:
        wanted = [m.strip() for m in args.only.split(",") if m.strip()]
        unknown = sorted(set(wanted) - set(calls))
        if unknown:
            parser.error(f"unknown methods: {', '.join(unknown)} (known: {', '.join(calls)})")
        calls = {k: v for k, v in calls.items() if k in wanted}

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
        for c in range(classes):
            call(c)
        sync()
        seconds = time.perf_counter() - start
        ok = seconds <= target
        if not ok:
            missed.append(name)
        print(f"{name:<22}{seconds:>9.2f}{target:>8.0f}  {'ok' if ok else 'MISSED'}", flush=True)
    print(f"cpus={os.cpu_count()} torch={torch.__version__} threads={torch.get_num_threads()}")
    return 1 if missed and size == "full" else 0


if __name__ == "__main__":
    sys.exit(main())
