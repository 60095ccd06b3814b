"""The GPU check's constants: its steps, its targets, and the sizes of its two modes (GPU and tiny CPU)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench import bench_training as bt
from utils.cli.config import STAGE1

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
