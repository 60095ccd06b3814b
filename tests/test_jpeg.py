"""Device-side JPEG decoding (utils/data/jpeg.py), run on the CPU: same crops, flips, order, sharding and
labels as the PIL pipeline (FolderBatches), pixels within about one grey level of it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets, transforms
from torchvision.transforms import functional as TF

from utils.data import jpeg
from utils.data.batches import FolderBatches
from utils.data.sources import make_batches
from utils.data.datasets import DATASETS
from utils.data.jpeg import DeviceJpegBatches, draw_crop_flip, eval_view, flip_where, train_view
from utils.errors import UserError

CPU = torch.device("cpu")
INFO = DATASETS["ImageNet"]
MEAN = torch.tensor(INFO.mean).view(1, 3, 1, 1)
STD = torch.tensor(INFO.std).view(1, 3, 1, 1)
# Pixels may differ from PIL's by about one grey level (PIL rounds its resize to 8 bits); a wrong
# crop or flip of the noisy gradients below differs by tens of levels.
TOLERANCE = 1.5 / 255 / min(INFO.std)

# (class, file name, width, height, kind): varied sizes and aspect ratios, greyscale, CMYK and a PNG.
FILES = [("ant", "a0.jpg", 64, 48, "rgb"), ("ant", "a1.jpg", 40, 80, "rgb"), ("ant", "a2.jpg", 91, 57, "rgb"),
         ("ant", "a3.jpg", 50, 50, "gray"), ("bee", "b0.jpg", 120, 36, "rgb"), ("bee", "b1.jpg", 45, 70, "cmyk"),
         ("bee", "b2.png", 60, 44, "rgb"), ("bee", "b3.jpg", 33, 65, "gray")]


def _picture(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: no two crops or flips look alike, yet JPEG keeps it faithfully."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255.0 / width, yy * 255.0 / height, (xx + 2 * yy) * 255.0 / (width + 2 * height)], -1)
    return np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)


def _save(path, pixels: np.ndarray, kind: str) -> None:
    image = Image.fromarray(pixels)
    image = {"rgb": image, "gray": image.convert("L"), "cmyk": image.convert("CMYK")}[kind]
    if str(path).endswith(".jpg"):
        image.save(path, quality=95)
    else:
        image.save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    for i, (cls, name, width, height, kind) in enumerate(FILES):
        (root / cls).mkdir(exist_ok=True)
        _save(root / cls / name, _picture(width, height, i), kind)
    return datasets.ImageFolder(str(root))


def _sources(folder, image_size: int = 32, workers: int = 0):
    return (FolderBatches(folder, INFO, CPU, workers=0, image_size=image_size),
            DeviceJpegBatches(folder, INFO, CPU, workers=workers, image_size=image_size))


def _assert_close_batches(reference, ours, n_fields: int) -> None:
    """Same number of batches, equal labels (and slots), images within TOLERANCE."""
    assert len(reference) == len(ours)
    for ref, got in zip(reference, ours):
        assert ref[0].shape == got[0].shape
        assert (ref[0] - got[0]).abs().max().item() < TOLERANCE
        for i in range(1, n_fields):
            assert torch.equal(ref[i], got[i])


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("width,height", [(500, 375), (40, 90), (64, 64), (300, 30)])
def test_draw_crop_flip_gives_the_cpu_transforms_parameters(width, height, monkeypatch):
    """Record what RandomResizedCrop draws in the CPU transform, and compare the images too."""
    pil = Image.fromarray(_picture(width, height, 7))
    cpu_tf = transforms.Compose([transforms.RandomResizedCrop(16), transforms.RandomHorizontalFlip()])
    original = transforms.RandomResizedCrop.get_params
    flips = set()
    for seed in [0, 1, 2, 3, 2**62 - 1, 123_456_789_012]:
        drawn = []
        with monkeypatch.context() as m:
            m.setattr(transforms.RandomResizedCrop, "get_params",
                      staticmethod(lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1]))
            torch.manual_seed(seed)
            expected = np.asarray(cpu_tf(pil))
        box, flip = draw_crop_flip(width, height, seed)
        assert drawn == [box]
        ours = TF.resized_crop(pil, *box, [16, 16])
        assert np.array_equal(np.asarray(TF.hflip(ours) if flip else ours), expected)
        flips.add(flip)
    assert flips == {True, False}  # both branches of the flip were compared


def test_views_match_torchvision_tensor_ops():
    """Geometry of the device views: RandomResizedCrop / Resize + CenterCrop on float tensors."""
    image = torch.from_numpy(_picture(77, 51, 3)).permute(2, 0, 1).contiguous()
    box = (5, 9, 30, 41)
    expected = TF.resized_crop(image.float(), *box, [24, 24], antialias=True)
    assert torch.allclose(train_view(image, box, 24), expected, atol=1e-4)
    pair = torch.stack([expected, expected + 1])
    flipped = flip_where(pair, torch.tensor([False, True]))
    assert torch.equal(flipped[0], pair[0]) and torch.equal(flipped[1], TF.hflip(pair[1]))
    for size in (24, 32, 45):
        resize = int(round(size * 256 / 224))
        expected = TF.center_crop(TF.resize(image.float(), resize, antialias=True), size)
        assert torch.allclose(eval_view(image, size), expected, atol=1e-4)
        assert torch.allclose(eval_view(image.transpose(1, 2), size),
                              TF.center_crop(TF.resize(image.transpose(1, 2).float(), resize, antialias=True), size),
                              atol=1e-4)


# ----------------------------------------------------------------------------- batches

@pytest.mark.parametrize("rank,world", [(0, 1), (0, 2), (1, 2)])
def test_train_batches_match_the_cpu_pipeline(folder, rank, world):
    cpu, dev = _sources(folder)  # one per (rank, world): FolderBatches keys its loaders without them
    idx = np.array([7, 0, 3, 5, 1, 6, 2])
    for epoch in (0, 3):
        reference = list(cpu.train_epoch(idx, 3, seed=11, epoch=epoch, rank=rank, world=world))
        ours = list(dev.train_epoch(idx, 3, seed=11, epoch=epoch, rank=rank, world=world))
        _assert_close_batches(reference, ours, 2)


def test_same_epoch_repeats_other_epoch_differs_workers_do_not_matter(folder):
    _, dev = _sources(folder)
    _, dev_workers = _sources(folder, workers=2)
    idx = np.arange(len(FILES))
    first = list(dev.train_epoch(idx, 4, seed=5, epoch=1))
    again = list(dev.train_epoch(idx, 4, seed=5, epoch=1))
    parallel = list(dev_workers.train_epoch(idx, 4, seed=5, epoch=1))
    other = list(dev.train_epoch(idx, 4, seed=5, epoch=2))
    for batches in (again, parallel):
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, batches))
    assert not torch.equal(torch.cat([x for x, _ in first]), torch.cat([x for x, _ in other]))
    labels = torch.cat([y for _, y in first]).sort().values
    assert torch.equal(labels, torch.from_numpy(np.sort(dev.labels)))  # every example once


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_batches_cover_every_index_once_with_slots(folder, world):
    idx = np.array([6, 2, 7, 0, 4, 1, 5])
    slots = []
    _, dev = _sources(folder)  # one source serves every rank here: each shard gets its own loader
    for rank in range(world):
        cpu, _ = _sources(folder)  # FolderBatches keys its loaders without the shard: one per rank
        reference = list(cpu.eval_batches(idx, 2, rank=rank, world=world))
        ours = list(dev.eval_batches(idx, 2, rank=rank, world=world))
        _assert_close_batches(reference, ours, 3)
        again = list(dev.eval_batches(idx, 2, rank=rank, world=world))
        assert all(torch.equal(a[0], b[0]) for a, b in zip(ours, again))
        for _, y, s in ours:
            assert torch.equal(y, torch.from_numpy(dev.labels[idx[s.numpy()]]))
            slots += s.tolist()
    assert sorted(set(slots)) == list(range(len(idx)))
    assert len(slots) == -(-len(idx) // world) * world  # padded like DistributedSampler


def test_full_size_batches_are_float_channels_last_on_the_device(folder):
    _, dev = _sources(folder, image_size=224)
    x, y = next(dev.train_epoch(np.arange(3), 3, seed=0, epoch=0))
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32 and x.device == CPU
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and y.tolist() == [0, 0, 0]  # the first three files are ants
    x, y, slots = next(dev.eval_batches(np.array([4, 5]), 2))
    assert x.shape == (2, 3, 224, 224) and x.is_contiguous(memory_format=torch.channels_last)
    assert y.tolist() == [1, 1] and slots.tolist() == [0, 1]


def test_single_colour_normalises_like_the_cpu_pipeline(tmp_path):
    colour = (200, 30, 120)
    (tmp_path / "only").mkdir()
    Image.new("RGB", (70, 50), colour).save(tmp_path / "only" / "c.jpg", quality=100)
    dev = DeviceJpegBatches(datasets.ImageFolder(str(tmp_path)), INFO, CPU, workers=0, image_size=32)
    expected = (torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1) / 255 - MEAN) / STD
    x, _ = next(dev.train_epoch(np.array([0]), 1, seed=0, epoch=0))
    assert (x - expected).abs().max().item() < 2 / 255 / min(INFO.std)  # JPEG's colour rounding
    assert (x - x.mean(dim=(2, 3), keepdim=True)).abs().max().item() < 1e-4  # flat


def test_grayscale_jpeg_gives_three_equal_channels(folder):
    _, dev = _sources(folder)
    gray = [i for i, (_, _, _, _, kind) in enumerate(FILES) if kind == "gray"]
    x, _, _ = next(dev.eval_batches(np.array(gray), len(gray)))
    pixels = x * STD + MEAN  # back to 0..1
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5) and torch.allclose(pixels[:, 0], pixels[:, 2], atol=1e-5)
    assert pixels.std().item() > 0.05  # not a blank image


def test_only_rgb_and_greyscale_jpegs_reach_the_device_decoder(folder):
    """CMYK JPEGs and other formats are decoded in the worker by PIL, as the CPU pipeline does."""
    for (path, _), (_, name, width, height, kind) in zip(folder.samples, FILES):
        payload, encoded, w, h = jpeg._read_example(path)
        assert (w, h) == (width, height)
        assert encoded == (name.endswith(".jpg") and kind != "cmyk")
        if not encoded:
            assert payload.shape == (3, height, width) and payload.dtype == torch.uint8


def test_decode_falls_back_image_by_image(folder, monkeypatch):
    """A batch nvJPEG refuses is decoded one by one; images the device refuses come from the CPU."""
    import torchvision.io

    files = [torchvision.io.read_file(path) for path, _ in folder.samples[:3]]
    expected = jpeg.decode_batch(files, CPU)
    real, calls = torchvision.io.decode_jpeg, []

    def picky(data, mode, device=None):
        """Refuses lists, and the second file when asked for a device (the host decode has none)."""
        calls.append("batch" if isinstance(data, list) else "host" if device is None else "device")
        if isinstance(data, list) or calls == ["batch", "device", "device"]:
            raise RuntimeError("refused")
        return real(data, mode=mode)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    got = jpeg.decode_batch(files, CPU)
    assert calls == ["batch", "device", "device", "host", "device"]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_make_batches_dispatches_on_decode(folder):
    assert type(make_batches(folder, INFO, CPU, 0, "cpu")) is FolderBatches
    with pytest.raises(UserError, match=r"--decode gpu needs a CUDA device \(nvJPEG\); use --decode cpu"):
        make_batches(folder, INFO, CPU, 0, "gpu")


def test_small_bench_prints_the_table(tmp_path, capsys):
    from bench import bench_decode

    assert bench_decode.main(small=True, workdir=str(tmp_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("== decode benchmark"))
    assert tuple(lines[start + 1].split()) == bench_decode.COLUMNS
    rows = [line.split() for line in lines[start + 2:start + 6]]
    assert [(r[0], r[1], r[3]) for r in rows] == [("train", "cpu", "32"), ("eval", "cpu", "32"),
                                                   ("train", "device:cpu", "32"), ("eval", "device:cpu", "32")]
    assert not (tmp_path / "train").exists()  # the images are removed unless --keep
