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
time (bench/gpu/supervisor.py). The data is bench/fake_cifar's CIFAR-100 of the real shape with 20% of its training
labels shuffled: the clean fake classes are separable by colour alone, so once a network has
learnt the colours every loss heads to zero and CLD would rank rounding noise, which real
CIFAR-100 does not do (``--data_path`` takes a real CIFAR-100 instead). It and everything else go
to ``--workdir`` (a temporary folder by default, removed at the end). Compiler caches start empty
in every run, so stage 1's warm-up is the cold cost; stage 3 and the later steps reuse stage 1's
kernels, as a pipeline's later stages would.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.gpu.config import CPU, GPU, STEPS  # noqa: E402  (after the path fix above; no torch here)
from bench.gpu.supervisor import run_worker, supervise  # noqa: E402
from utils.cli.entry import run_cli  # noqa: E402
from utils.cli.flags import Flag, FlagSet  # noqa: E402
from utils.cli.kinds import Bool, Choice, Float, ListOf, Optional, Path  # noqa: E402
from utils.errors import require  # noqa: E402

FLAGS = FlagSet([
    Flag("out", Path(), "gpu_check.json", "the JSON report (written after every step)"),
    Flag("cpu", Bool(), False, "tiny CPU mode: every step on tiny data, targets not enforced"),
    Flag("skip", ListOf(Choice(STEPS + ("done",)), unique=True), [], f"steps to skip ({', '.join(STEPS)}), or "
         "'done' for those the existing --out report records as ok; their results are taken from it"),
    Flag("timeout", Optional(Float(0, 86_400, lo_open=True)), None, "seconds per step (default 300; --cpu 120)"),
    Flag("budget", Optional(Float(0, 864_000, lo_open=True)), None, "seconds for the whole run: no step starts "
         "after it, so the report is written in time (default 540; --cpu 300)"),
    Flag("workdir", Path(), "", "folder for data and runs (default: temporary, removed)"),
    Flag("data_path", Path(), "", "a real CIFAR-100 in torchvision's layout (default: fake)"),
    Flag("keep", Bool(), False, "keep the work folder"),
    Flag("warm_cache", Bool(), False, "use the user's compiler caches (warm-up not cold)"),
    Flag("worker", Bool(), False, "internal: run --steps in this process, as the supervisor's worker"),
    Flag("steps", ListOf(Choice(STEPS), unique=True), [], "internal: the worker's steps"),
    Flag("results", Path(), "", "internal: the worker's folder of step results"),
])


@FLAGS.command(__doc__.split("\n\n")[0])
def main(**flags) -> int:
    """Returns the exit status (0: every target met; 1: a target missed or a step failed)."""
    args = FLAGS.settings(flags)
    mode = CPU if args.cpu else GPU
    args = args.replace(timeout=mode.timeout if args.timeout is None else args.timeout,
                        budget=mode.budget if args.budget is None else args.budget,
                        # the worker runs in the repository, wherever the user started the check
                        data_path=os.path.abspath(args.data_path) if args.data_path else "")
    if args.worker:
        require(bool(args.steps and args.results and args.workdir), "--worker needs --steps, --results and --workdir")
        return run_worker(args)
    return supervise(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
