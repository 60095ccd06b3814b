"""Benchmark ImageFolder input pipelines: JPEG decoding in CPU workers vs on the device.

Writes an ImageFolder of ImageNet-like JPEGs (about 500 x 375, quality 90, smooth gradients plus
noise) into a temporary folder, then measures images per second of

* ``FolderBatches`` (decode, crop and resize with PIL in DataLoader workers): the training
  pipeline (``train_epoch``: RandomResizedCrop + flip) and the collection/evaluation pipeline
  (``eval_batches``: Resize + CenterCrop), for each worker count in ``--workers``;
* ``DeviceJpegBatches`` (workers read bytes and draw crops; decode, crop and resize on
  ``--device``: nvJPEG on CUDA, libjpeg-turbo in the main process on the CPU), the same two
  pipelines.

Each configuration runs one untimed pass first (worker start-up, nvJPEG and allocator warm-up),
then one timed pass over every image; on CUDA the clock stops after a device synchronisation.

    python bench/bench_decode.py                    # 512 images, workers 1,2, on the CPU
    python bench/bench_decode.py --device cuda --workers 4,8,16 --images 4096
    python bench/bench_decode.py --small            # a few seconds on any CPU (tests)

Measured on the 2-core CPU development machine (default flags, load average about 3 from other
jobs): FolderBatches 190-210 images/s training and 170-200 evaluating with 1 or 2 workers (the two
cores are the limit, so a second worker adds nothing); DeviceJpegBatches on the CPU 330-360
images/s. On the CPU the "device" path is only a functional stand-in (libjpeg-turbo and torch's
resize in the main process); the numbers that matter for ``--decode gpu`` come from
``--device cuda``, where workers only read files.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402  (after the path fix above)

from bench.bench_training import print_table  # noqa: E402
from utils.cli.config import DeviceKind  # noqa: E402
from utils.cli.entry import run_cli  # noqa: E402
from utils.cli.flags import Flag, FlagSet  # noqa: E402
from utils.cli.kinds import Bool, Int, ListOf, Path  # noqa: E402
from utils.errors import require  # noqa: E402

# torch is imported where it is used, so that a mistyped flag is refused at once.

COLUMNS = ("pipeline", "decode", "workers", "images", "seconds", "images/s", "images/s/worker")
# (width, height) of the generated images: ImageNet's typical landscape and portrait shapes.
SHAPES = [(500, 375), (500, 333), (375, 500), (480, 360), (500, 400)]


def write_jpeg(path: str, width: int, height: int, quality: int, rng: np.random.Generator) -> None:
    """A JPEG that compresses like a photograph: a smooth random colour field plus mild noise.

    Args:
        path: file to write.
        width: image width.
        height: image height.
        quality: JPEG quality (ImageNet's files are mostly around 90).
        rng: random source.
    """
    from PIL import Image

    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float32)
    noisy = np.clip(smooth + rng.normal(0.0, 8.0, smooth.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(path, quality=quality)


def write_folder(root: str, images: int, classes: int, quality: int, small: bool, seed: int = 0) -> None:
    """An ImageFolder of ``images`` JPEGs spread over ``classes`` class folders.

    Args:
        root: folder to fill (``root/<class>/<image>.JPEG``).
        images: number of images.
        classes: number of classes.
        quality: JPEG quality.
        small: quarter-size images (the quick mode).
        seed: random seed of the content.
    """
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"n{c:08d}"), exist_ok=True)
    for i in range(images):
        width, height = SHAPES[i % len(SHAPES)]
        if small:
            width, height = width // 4, height // 4
        write_jpeg(os.path.join(root, f"n{i % classes:08d}", f"img_{i:06d}.JPEG"), width, height, quality, rng)


def _synchronise(device) -> None:
    """Wait for queued device work, so that the clock measures it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_pass(source, pipeline: str, indices: np.ndarray, batch_size: int, epoch: int) -> int:
    """Run one pass of a pipeline over ``indices``; returns the number of images delivered."""
    if pipeline == "train":
        batches = source.train_epoch(indices, batch_size, seed=0, epoch=epoch)
    else:
        batches = source.eval_batches(indices, batch_size)
    return sum(len(batch[1]) for batch in batches)


def measure(source, pipeline: str, batch_size: int) -> tuple[int, float]:
    """Images and seconds of one timed pass, after one untimed warm-up pass.

    Args:
        source: a FolderBatches or DeviceJpegBatches.
        pipeline: "train" or "eval".
        batch_size: images per batch.

    Returns:
        ``(images, seconds)``.
    """
    indices = np.arange(len(source))
    _one_pass(source, pipeline, indices, batch_size, epoch=0)
    _synchronise(source.device)
    started = time.perf_counter()
    images = _one_pass(source, pipeline, indices, batch_size, epoch=1)
    _synchronise(source.device)
    return images, time.perf_counter() - started


def device_name(device) -> str:
    """A readable name of the device."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def run(root: str, device_spec: str, workers: list[int], batch_size: int, image_size: int) -> list[tuple]:
    """Every (source, pipeline, workers) configuration; returns the table rows."""
    import torch
    from torchvision import datasets

    from utils.data.batches import FolderBatches
    from utils.data.datasets import DATASETS
    from utils.data.jpeg import DeviceJpegBatches

    folder = datasets.ImageFolder(root)
    info = DATASETS["ImageNet"]
    device = torch.device(device_spec)
    sources = [("cpu", FolderBatches, torch.device("cpu")), (f"device:{device_spec}", DeviceJpegBatches, device)]
    rows = []
    for decode, cls, where in sources:
        for pipeline in ("train", "eval"):
            for n in workers:
                source = cls(folder, info, where, n, image_size=image_size)
                images, seconds = measure(source, pipeline, batch_size)
                del source  # ends its persistent workers before the next configuration starts
                rate = images / seconds
                rows.append((pipeline, decode, n, images, f"{seconds:.2f}", f"{rate:.0f}",
                             f"{rate / max(n, 1):.0f}"))
                print(f"  {pipeline:5s} decode={decode:10s} workers={n}: {rate:.0f} images/s", flush=True)
    return rows


FLAGS = FlagSet([
    Flag("small", Bool(), False, "quick CPU mode (tests): 32 small images, 1 worker"),
    Flag("images", Int(1, 10**7), 512, "number of generated images"),
    Flag("classes", Int(1, 100_000), 8, "number of class folders"),
    Flag("quality", Int(1, 100), 90, "JPEG quality of the generated images"),
    Flag("workers", ListOf(Int(0, 512)), [1, 2], "DataLoader worker counts"),
    Flag("batch_size", Int(1, 1 << 16), 64, "images per batch"),
    Flag("image_size", Int(8, 4096), 224, "side of the training/evaluation crops"),
    Flag("device", DeviceKind(), "cpu", "where DeviceJpegBatches decodes: cpu or cuda[:N]"),
    Flag("threads", Int(0, 1024), 0, "intra-op threads of the main process (0: torch's default); with --device cpu "
         "the main process decodes, and on a few cores its threads compete with the workers"),
    Flag("workdir", Path(), "", "folder for the images (default: a temp folder)"),
    Flag("keep", Bool(), False, "keep the generated images"),
])


@FLAGS.command(__doc__.split("\n\n")[0])
def main(**flags) -> int:
    """Returns the exit status."""
    args = FLAGS.settings(flags)
    workers = list(args.workers)
    require(bool(workers), "--workers needs at least one worker count")
    if args.small:
        args = args.replace(images=32, classes=2, batch_size=16, image_size=64)
        workers = [1]

    import torch
    import torchvision

    require(not args.device.startswith("cuda") or torch.cuda.is_available(),
            "--device cuda: no CUDA device is available")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    work = args.workdir or tempfile.mkdtemp(prefix="bench_decode_")
    root = os.path.join(work, "train")
    try:
        started = time.perf_counter()
        write_folder(root, args.images, args.classes, args.quality, args.small)
        megabytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs) / 2**20
        print(f"wrote {args.images} JPEGs ({megabytes:.1f} MB) in {time.perf_counter() - started:.1f} s", flush=True)
        rows = run(root, args.device, workers, args.batch_size, args.image_size)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        elif not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"== decode benchmark (batch {args.batch_size}, {args.image_size} px crops)")
    print_table(rows, COLUMNS)
    print(f"({os.cpu_count()} CPUs; torch {torch.__version__}, torchvision {torchvision.__version__}; "
          f"device: {device_name(torch.device(args.device))}; {torch.get_num_threads()} intra-op threads)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
