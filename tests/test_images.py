"""ImageFolder damage met before any work: files that cannot be images are named in one line, or
left out with --skip_bad_images; a file that fails later, when decoded, is named too."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from torchvision import datasets

import get_loss_values
from conftest import assert_user_error, cli, flag_args, out_dirs
from utils.data.batches import FolderBatches
from utils.data.datasets import DATASETS
from utils.data.images import bad_images, check_image
from utils.errors import UserError

DAMAGE = {  # name: how the file is damaged
    "empty.jpg": lambda p, good: open(p, "wb").close(),
    "text.jpg": lambda p, good: open(p, "w").write("not an image"),
    "truncated.jpg": lambda p, good: open(p, "wb").write(good[: len(good) // 2]),
    "corrupt.jpg": lambda p, good: open(p, "wb").write(good[:20] + b"\x00" * 200 + good[220:]),
}


def _folder(root, damaged: tuple[str, ...] = ()) -> str:
    rng = np.random.default_rng(0)
    for part, n in (("train", 6), ("val", 2)):
        for c in ("a", "b"):
            os.makedirs(os.path.join(root, "imagenet", part, c), exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(root, "imagenet", part, c, f"{i}.jpg"), quality=90)
    good = open(os.path.join(root, "imagenet", "train", "a", "0.jpg"), "rb").read()
    for name in damaged:
        DAMAGE[name](os.path.join(root, "imagenet", "train", "b", name), good)
    return root


def test_every_kind_of_damage_is_found_and_good_files_pass(tmp_path):
    root = _folder(str(tmp_path), tuple(DAMAGE))
    folder = datasets.ImageFolder(os.path.join(root, "imagenet", "train"))
    found = {os.path.basename(path): why for _, path, why in bad_images(folder, 0, "train")}
    assert set(found) == set(DAMAGE)
    assert "truncated JPEG" in found["truncated.jpg"] and "UnidentifiedImageError" in found["text.jpg"]
    assert check_image(os.path.join(root, "imagenet", "train", "a", "0.jpg")) == ""


def _flags(root, base, **extra) -> dict:
    return {**dict(data_path=root, dataset="ImageNet", model_arch="mobilenet_v3_small", epochs=3, batch_size=4,
                   test_batch_size=8, device="cpu", precision="fp32", workers=0, snapshot_epochs=[]),
            **out_dirs(base), **extra}


def test_a_damaged_imagefolder_is_refused_in_one_line_before_any_output(tmp_path):
    root = _folder(str(tmp_path / "data"), ("text.jpg", "truncated.jpg"))
    proc = cli(get_loss_values, *flag_args(_flags(root, tmp_path / "out")))
    assert_user_error(proc, "2 files of the train set cannot be read as images", "text.jpg", "truncated.jpg",
                      "--skip_bad_images")
    assert not os.path.exists(tmp_path / "out")  # no folder, no split, no trajectory file


def test_skip_bad_images_lists_them_and_trains_without_them(tmp_path):
    root = _folder(str(tmp_path / "data"), ("empty.jpg",))
    proc = cli(get_loss_values, *flag_args(_flags(root, tmp_path / "out", skip_bad_images=True)))
    assert proc.returncode == 0, proc.stderr
    assert "warning: skipping 1 file of the train set" in proc.stderr and "empty.jpg" in proc.stderr
    from utils.files.losses import load_losses

    losses = load_losses(os.path.join(tmp_path, "out", "scores", "ImageNet_mobilenet_v3_small_seed1234_losses.pickle"))
    folder = datasets.ImageFolder(os.path.join(root, "imagenet", "train"))
    bad = [i for i, (path, _) in enumerate(folder.samples) if path.endswith("empty.jpg")]
    used = np.concatenate([losses["train_indices"], losses["val_indices"]])
    assert len(used) == len(folder.samples) - 1 and not np.isin(bad, used).any()


def test_a_file_that_fails_when_decoded_later_is_named_in_one_line(tmp_path):
    root = _folder(str(tmp_path))
    folder = datasets.ImageFolder(os.path.join(root, "imagenet", "train"))
    path = folder.samples[3][0]
    open(path, "w").write("damaged after the check")
    source = FolderBatches(folder, DATASETS["ImageNet"], "cpu", workers=1, image_size=32)
    with pytest.raises(UserError) as err:
        list(source.eval_batches(np.arange(len(folder.samples)), 4))
    message = str(err.value)
    assert message.startswith(f"cannot decode image {path}") and "\n" not in message and "Traceback" not in message


def test_a_subset_check_reads_only_the_files_asked_for(tmp_path):
    """Stage 3 checks its coreset's files only: a damaged file outside them is not its business."""
    root = _folder(str(tmp_path), ("text.jpg",))
    folder = datasets.ImageFolder(os.path.join(root, "imagenet", "train"))
    bad = next(i for i, (path, _) in enumerate(folder.samples) if path.endswith("text.jpg"))
    good = [i for i in range(len(folder.samples)) if i != bad]
    assert bad_images(folder, 0, "coreset", good) == []
    assert [i for i, _, _ in bad_images(folder, 0, "coreset", [good[0], bad])] == [bad]
