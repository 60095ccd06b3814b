"""Benchmark how stage 1's bookkeeping grows with the number of examples N and of epochs E.

Two measurements, on synthetic numbers (no training: only what stage 1 writes and keeps):

* ``checkpoint``: the bytes written per epoch by a run of ImageNet-1k's size (1,268,000 training
  and 12,800 validation examples): every epoch appends its rows of losses and signals to the
  run's trajectory files and rewrites the run-state checkpoint (a ResNet-18's weights, optimizer
  and log). The bytes are read from the kernel's I/O accounting of this process and from the file
  sizes, epoch by epoch; beside them, what a checkpoint that carried every row recorded so far
  would weigh (the layout before trajectories moved out of the checkpoint), which grows with E.
* ``sums``: the peak memory of a process that keeps CLD's running sums
  (``--trajectories sums``) for N examples over E epochs, each N and E in a fresh process: it
  grows with N only (the labels, the sums and one epoch's losses: about 70 bytes per example,
  against 4 E bytes per example for the losses alone in the full trajectories).

    python bench/bench_scale.py                 # 1.27M-example checkpoints, sums at 1M and 10M
    python bench/bench_scale.py --small         # seconds (used by the tests)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402  (after the path fix above)

from bench.bench_training import print_table  # noqa: E402
from utils.cli.entry import run_cli  # noqa: E402
from utils.cli.flags import Flag, FlagSet  # noqa: E402
from utils.cli.kinds import Bool, Int, ListOf, Path  # noqa: E402

IMAGENET = dict(n_train=1_268_000, n_val=12_800, classes=1000)


def _written() -> int:
    """Bytes this process has caused to be written to storage so far (Linux I/O accounting)."""
    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["write_bytes"])


def checkpoint_bytes(work: str, n_train: int, n_val: int, epochs: int, model: str) -> list[dict]:
    """Per epoch: bytes written (rows + checkpoint), and the sizes of the checkpoint and the rows."""
    import torch

    import models
    from utils.collect.row_store import FullTrajectories
    from utils.files.checkpoint import save_checkpoint
    from utils.paths import RunFiles

    files = RunFiles(work, work, "bench", "")
    store = FullTrajectories(files, epochs, n_train, n_val)
    store.open(0)
    net = models.get_model(model, 1000, "CIFAR100" if model == "resnet20" else "ImageNet")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.zeros(2, 3, 64, 64)).sum().backward()
    optimizer.step()  # the momentum buffers a real run state holds
    rng = np.random.default_rng(0)
    row_bytes = n_train * (4 + 1 + 2 + 2) + n_val * 4
    rows, log = [], []
    for epoch in range(epochs):
        before = _written()
        store.record(epoch, {"tr_loss": rng.random(n_train, dtype=np.float32),
                             "val_loss": rng.random(n_val, dtype=np.float32),
                             "tr_correct": rng.random(n_train) < 0.5,
                             "tr_margin": rng.standard_normal(n_train).astype(np.float16),
                             "tr_el2n": rng.random(n_train).astype(np.float16)})
        store.flush(epoch + 1)
        log.append({"epoch": epoch + 1, "train_loss": 1.0, "test_acc": 50.0})
        save_checkpoint(files.last, {"kind": "last", "identity": {}, "epoch": epoch + 1, "model": net.state_dict(),
                                     "optimizer": optimizer.state_dict(), "log": log, "extra": {}})
        os.sync()
        rows.append({"epoch": epoch + 1, "written_mb": (_written() - before) / 2**20,
                     "checkpoint_mb": os.path.getsize(files.last) / 2**20,
                     "rows_mb": row_bytes / 2**20,
                     "old_checkpoint_mb": (os.path.getsize(files.last) + (epoch + 1) * row_bytes) / 2**20})
    return rows


# The peak is read from VmHWM (reset by exec), not ru_maxrss (inherited from the forking parent).
_SUMS_CHILD = """
import sys, time
sys.path.insert(0, {root!r})
import numpy as np
from cld_recorder import CLDSums
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
n, epochs, classes = {n}, {epochs}, {classes}
rng = np.random.default_rng(0)
tr_lbl = np.arange(n) % classes
val_lbl = np.arange(max(classes * 10, 1)) % classes
base = hwm()
sums = CLDSums(tr_lbl, val_lbl, classes)
started = time.perf_counter()
for t in range(epochs):
    sums.update(rng.random(n, dtype=np.float32), rng.random(val_lbl.size, dtype=np.float32))
scores = sums.scores()
print(hwm(), base, time.perf_counter() - started)
"""


def sums_memory(n: int, epochs: int, classes: int) -> dict:
    """Peak resident memory of a fresh process keeping CLD's sums for ``n`` examples, ``epochs`` epochs."""
    code = _SUMS_CHILD.format(root=ROOT, n=n, epochs=epochs, classes=classes)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    peak_kb, base_kb, seconds = int(out[0]), int(out[1]), float(out[2])
    return {"examples": n, "epochs": epochs, "peak_mb": peak_kb / 1024, "start_mb": base_kb / 1024,
            "bytes_per_example": (peak_kb - base_kb) * 1024 / n, "seconds": seconds}


def _table(rows: list[dict], columns: tuple[str, ...]) -> None:
    def cell(v):
        return f"{v:,.1f}" if isinstance(v, float) else f"{v:,}"
    print_table([tuple(cell(r[c]) for c in columns) for r in rows], columns)


FLAGS = FlagSet([
    Flag("small", Bool(), False, "a tiny run for the tests (seconds)"),
    Flag("epochs", Int(1, 10_000), 8, "epochs of the checkpoint measurement"),
    Flag("sums_examples", ListOf(Int(1, 10**10)), [1_000_000, 10_000_000], "N values of the sums measurement"),
    Flag("workdir", Path(), "", "folder for the synthetic run (default: a temporary one)"),
    Flag("json", Path(), "", "also write the numbers to this JSON file"),
])


@FLAGS.command(__doc__.split("\n\n")[0])
def main(**flags) -> int:
    """Returns the exit status: 1 when the bytes written per epoch grow with the epoch."""
    args = FLAGS.settings(flags)
    size = dict(n_train=20_000, n_val=500, classes=100) if args.small else IMAGENET
    model = "resnet20" if args.small else "resnet18"
    sums_n = [10_000, 100_000] if args.small else list(args.sums_examples)
    epochs = min(args.epochs, 3) if args.small else args.epochs
    work = args.workdir or tempfile.mkdtemp(prefix="bench_scale_")
    try:
        started = time.perf_counter()
        ckpt = checkpoint_bytes(work, size["n_train"], size["n_val"], epochs, model)
        print(f"== bytes written per epoch: {size['n_train']:,} training + {size['n_val']:,} validation examples, "
              f"{model} run state ({time.perf_counter() - started:.0f} s) ==")
        _table(ckpt, ("epoch", "written_mb", "checkpoint_mb", "rows_mb", "old_checkpoint_mb"))
        sums = [sums_memory(n, e, size["classes"]) for n in sums_n for e in ((5, 20) if n == sums_n[0] else (5,))]
        print("== CLD running sums (--trajectories sums): peak memory of the process ==")
        _table(sums, ("examples", "epochs", "peak_mb", "start_mb", "bytes_per_example", "seconds"))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"({os.cpu_count()} CPUs; MB = 2^20 bytes; written_mb from /proc/self/io after os.sync)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": ckpt, "sums": sums}, f, indent=2)
    growth = ckpt[-1]["written_mb"] / ckpt[0]["written_mb"] if len(ckpt) > 1 and ckpt[0]["written_mb"] else 1.0
    return 0 if growth < 1.5 else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
