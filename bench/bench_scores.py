"""Benchmark stage 2 (compute_cld_scores.py) at CIFAR-100 and ImageNet scale.

Writes synthetic loss files of the real shapes (our format, via utils.files.losses.save_losses) into a
temporary folder, runs ``compute_cld_scores.py`` on each as a separate process, and prints the
whole-process wall time (imports included) and peak resident memory.

    python bench/bench_scores.py            # CIFAR-100 (45,000 x 164) and ImageNet (1,268,000 x 90)
    python bench/bench_scores.py --small    # a tiny file, seconds on any CPU (used by the tests)

Measured on the 2-core CPU development machine (numpy 2.4, idle, warm page cache):
CIFAR-100 scale 0.45 s wall (0.26 s CPU) / 72 MB, ImageNet scale 1.7 s (1.3 s CPU) / 549 MB;
targets 1 s / 300 MB and 15 s / 3 GB. The paper's script took 8.8 s and 3.0 GB at CIFAR-100 scale
on the same machine. Exit status 1 if a target is missed.
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.files.losses import save_losses  # noqa: E402  (after the path fix above)
from utils.cli.entry import run_cli  # noqa: E402
from utils.cli.flags import Flag, FlagSet  # noqa: E402
from utils.cli.kinds import Bool, Choice, Int, ListOf, Path  # noqa: E402
from utils.errors import UserError  # noqa: E402

# name: (n_train, n_epochs, n_classes, n_val, wall target s, peak RSS target MB)
SCALES = {
    "small": (2_000, 12, 10, 200, None, None),
    "cifar100": (45_000, 164, 100, 5_000, 1.0, 300.0),
    "imagenet": (1_268_000, 90, 1_000, 12_800, 15.0, 3072.0),
}


def _trajectories(rng: np.random.Generator, n_epochs: int, n: int, noisy: np.ndarray | None = None) -> np.ndarray:
    """(E, n) float32 losses that fall like a training run's, with noise; ``noisy`` columns rise."""
    out = np.empty((n_epochs, n), dtype=np.float32)
    start = rng.uniform(3.0, 5.0, n).astype(np.float32)
    rate = rng.uniform(0.02, 0.08, n).astype(np.float32)
    for t in range(n_epochs):  # row by row: the generator itself stays within ~2 copies
        row = start * np.exp(-rate * t, dtype=np.float32)
        row += rng.standard_normal(n, dtype=np.float32) * np.float32(0.05)
        if noisy is not None:
            row[noisy] = start[noisy] + np.float32(0.01 * t)
        np.abs(row, out=out[t])
    return out


def write_loss_file(path: str, n_train: int, n_epochs: int, n_classes: int, n_val: int, seed: int = 0) -> None:
    """A synthetic loss file of the given shape (5% of training examples behave mislabeled)."""
    rng = np.random.default_rng(seed)
    noisy = rng.random(n_train) < 0.05
    losses = {
        "dataset": {10: "CIFAR10", 100: "CIFAR100"}.get(n_classes, "ImageNet"), "model_arch": "resnet18",
        "manual_seed": seed, "num_classes": n_classes,
        "config": {"bench": True},
        "epoch": np.arange(n_epochs, dtype=np.int64),
        "tr_loss": _trajectories(rng, n_epochs, n_train, noisy),
        "val_loss": _trajectories(rng, n_epochs, n_val),
        "tr_lbl": np.arange(n_train, dtype=np.int64) % n_classes,
        "val_lbl": np.arange(n_val, dtype=np.int64) % n_classes,
        "train_indices": rng.permutation(n_train + n_val)[:n_train].astype(np.int64),
        "val_indices": np.arange(n_train + n_val, n_train + 2 * n_val, dtype=np.int64),
    }
    save_losses(path, losses)


def run_stage2(loss_path: str, out_path: str) -> tuple[float, float, float, int]:
    """Run compute_cld_scores.py on ``loss_path``; return (wall s, CPU s, peak RSS MB, exit status)."""
    cmd = [sys.executable, os.path.join(ROOT, "compute_cld_scores.py"), "--loss_path", loss_path,
           "--output_path", out_path, "--overwrite"]
    gnu_time = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if gnu_time:
        cmd = [gnu_time, "-v"] + cmd
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr) if gnu_time else None
    cpu = [float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr)]
    if found and len(cpu) == 2:
        return wall, sum(cpu), int(found.group(1)) / 1024, proc.returncode
    # no GNU time: the largest child so far (children run one at a time, each bigger than the last)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, float("nan"), usage.ru_maxrss / 1024, proc.returncode


FLAGS = FlagSet([
    Flag("small", Bool(), False, "tiny CPU mode (tests): only the 'small' scale"),
    Flag("scales", ListOf(Choice(tuple(SCALES)), unique=True), ["cifar100", "imagenet"], "scales to time"),
    Flag("repeat", Int(1, 1000), 1, "runs per scale; the table shows the best"),
    Flag("workdir", Path(), "", "folder for the synthetic files (default: a temp folder)"),
    Flag("keep", Bool(), False, "keep the synthetic files"),
])


@FLAGS.command(__doc__.split("\n\n")[0])
def main(**flags) -> int:
    """Returns the exit status: 1 when a target is missed."""
    args = FLAGS.settings(flags)
    names = ["small"] if args.small else list(args.scales)
    if not names:
        raise UserError("--scales needs at least one scale")

    work = args.workdir or tempfile.mkdtemp(prefix="bench_scores_")
    os.makedirs(work, exist_ok=True)
    rows, failed = [], False
    try:
        for name in names:
            n_train, n_epochs, n_classes, n_val, t_target, m_target = SCALES[name]
            loss_path = os.path.join(work, f"{name}_losses.pickle")
            t0 = time.perf_counter()
            write_loss_file(loss_path, n_train, n_epochs, n_classes, n_val)
            print(f"[{name}] wrote {os.path.getsize(loss_path) / 2**20:.0f} MB loss file in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            runs = [run_stage2(loss_path, os.path.join(work, f"{name}_scores.pickle")) for _ in range(args.repeat)]
            if any(r[-1] != 0 for r in runs):
                print(f"[{name}] compute_cld_scores.py failed", file=sys.stderr)
                return 1
            wall, cpu, peak = (min(r[i] for r in runs) for i in range(3))
            ok = (t_target is None or wall <= t_target) and (m_target is None or peak <= m_target)
            failed |= not ok
            target = "-" if t_target is None else f"<= {t_target:g} s, <= {m_target:g} MB"
            rows.append((name, f"{n_train:,} x {n_epochs}", n_classes, f"{wall:.2f}", f"{cpu:.2f}", f"{peak:.0f}", target,
                         "ok" if ok else "MISSED"))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    header = ("scale", "train x epochs", "classes", "wall s", "cpu s", "peak MB", "target", "")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    print(f"({os.cpu_count()} CPUs; whole process incl. Python start-up and imports; warm page cache)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
