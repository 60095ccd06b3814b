"""Benchmark cld_recorder.py: what recording costs per epoch, against the training epoch it follows.

For a small MLP on tabular data and a small CNN on 32x32 images (CPU), one epoch of training
(SGD, batch 128), then ``LossRecorder.record`` of the same examples (and a validation set a tenth
the size), timed side by side in one process; also a bare evaluation pass over the same loaders
(eval mode, no grad: the least any recording can cost) and the bytes the epoch added on disk.
The goal: recording costs at most one evaluation pass (ratio record / eval near 1; the rows are
written to memory-mapped files, so the write is small beside the pass).

    python bench/bench_recorder.py            # 20,000 tabular rows and 5,000 images
    python bench/bench_recorder.py --small    # seconds (used by the tests)
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cld_recorder import LossRecorder, evaluate  # noqa: E402  (after the path fix above)
from utils.cli.entry import run_cli  # noqa: E402
from utils.cli.flags import Flag, FlagSet  # noqa: E402
from utils.cli.kinds import Bool, Int  # noqa: E402

COLUMNS = ("model", "examples", "train s", "eval s", "record s", "record/eval", "record/train", "bytes/epoch")


def _models(kind: str):
    from torch import nn

    if kind == "mlp":
        return nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 256), nn.ReLU(),
                             nn.Linear(256, 10)), (32,)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10)), (3, 32, 32)


def _loader(n: int, shape: tuple, seed: int, shuffle: bool):
    import torch

    g = torch.Generator().manual_seed(seed)
    # every class in both splits (CLD needs each class's validation examples)
    data = torch.utils.data.TensorDataset(torch.randn(n, *shape, generator=g), torch.arange(n) % 10)
    return torch.utils.data.DataLoader(data, batch_size=128, shuffle=shuffle, generator=g), data.tensors[1]


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def measure(kind: str, n: int, work: str, epochs: int = 3) -> tuple:
    """Best-of-``epochs`` seconds of a training epoch, a bare evaluation pass and a recorded epoch."""
    import torch

    torch.manual_seed(0)
    model, shape = _models(kind)
    train_shuffled, _ = _loader(n, shape, 1, True)
    train, labels = _loader(n, shape, 1, False)
    val, val_labels = _loader(max(n // 10, 10), shape, 2, False)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rec = LossRecorder(os.path.join(work, kind), labels, val_labels, epochs=epochs)
    times: dict[str, list[float]] = {"train": [], "eval": [], "record": []}
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for x, y in train_shuffled:
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
        t1 = time.perf_counter()
        evaluate(model, train)
        evaluate(model, val)
        t2 = time.perf_counter()
        rec.record(model, train, val)
        t3 = time.perf_counter()
        for key, seconds in (("train", t1 - t0), ("eval", t2 - t1), ("record", t3 - t2)):
            times[key].append(seconds)
    best = {key: min(values) for key, values in times.items()}
    # The rows one epoch adds: the first epoch reserves every row of the run on disk up front, so the
    # folder's growth per epoch is read off the row layout (4 bytes a loss, 1 + 2 + 2 the signals).
    per_epoch = sum(np.dtype(dtype).itemsize * columns for dtype, columns in rec._rows.layout.values())
    assert _folder_bytes(os.path.join(rec.folder, "rows")) >= per_epoch * epochs
    return (kind, n, f"{best['train']:.3f}", f"{best['eval']:.3f}", f"{best['record']:.3f}",
            f"{best['record'] / best['eval']:.2f}", f"{best['record'] / best['train']:.2f}", per_epoch)


FLAGS = FlagSet([
    Flag("small", Bool(), False, "tiny mode (tests): a few hundred examples"),
    Flag("tabular", Int(10, 10_000_000), 20_000, "training examples of the MLP"),
    Flag("images", Int(10, 10_000_000), 5_000, "training examples of the CNN"),
    Flag("threads", Int(1, 256), 1, "torch CPU threads"),
])


@FLAGS.command(__doc__.split("\n\n")[0])
def main(**flags) -> int:
    """Returns 0; prints one row per model."""
    import torch

    args = FLAGS.settings(flags)
    torch.set_num_threads(args.threads)
    sizes = {"mlp": 300, "cnn": 200} if args.small else {"mlp": args.tabular, "cnn": args.images}
    work = tempfile.mkdtemp(prefix="bench_recorder_")
    try:
        rows = [measure(kind, n, work) for kind, n in sizes.items()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    widths = [max(len(str(r[i])) for r in rows + [COLUMNS]) for i in range(len(COLUMNS))]
    for r in [COLUMNS] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    print(f"(CPU, {args.threads} thread(s); best of 3 epochs; record = evaluation of both splits + rows on disk)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
