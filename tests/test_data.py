"""Data layer: CIFAR reading, digits, stratified split, device-side augmentation, batch sources."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

from fakedata import write_fake_cifar
from utils.data.batches import FolderBatches, TensorBatches, crop_flip, shard_positions
from utils.data.datasets import DATASETS, dataset_info, load_dataset, load_digits
from utils.data.splits import stratified_split
from utils.errors import UserError


def test_fake_cifar100_loads_with_its_labels(cifar100_root):
    root, labels = cifar100_root
    data = load_dataset("cifar100", root, download=False)
    assert data.info.name == "CIFAR100" and data.num_classes == 100
    assert data.train.images.shape == (160, 32, 32, 3) and data.train.images.dtype == np.uint8
    np.testing.assert_array_equal(data.train.labels, labels["train"])
    np.testing.assert_array_equal(data.test.labels, labels["test"])


def test_cifar10_batches_are_concatenated_in_order(tmp_path):
    labels = write_fake_cifar(str(tmp_path), "CIFAR10", per_class=3, test_per_class=2)
    data = load_dataset("CIFAR10", str(tmp_path), download=False)
    np.testing.assert_array_equal(data.train.labels, labels["train"])
    assert data.train.images.shape == (30, 32, 32, 3) and data.test.images.shape == (20, 32, 32, 3)


def test_cifar_pixels_are_read_channel_major(tmp_path):
    """CIFAR stores each row as 1024 red, then 1024 green, then 1024 blue values."""
    write_fake_cifar(str(tmp_path), "CIFAR10", per_class=1, test_per_class=1)
    import pickle
    with open(tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    data = load_dataset("CIFAR10", str(tmp_path), download=False)
    row = raw["data"][0]
    assert data.train.images[0, 0, 0, 0] == row[0] and data.train.images[0, 0, 0, 1] == row[1024]
    assert data.train.images[0, 0, 1, 2] == row[2048 + 1]


def test_missing_cifar_names_folder_and_files(tmp_path):
    with pytest.raises(UserError, match=r"cifar-100-python.*train"):
        load_dataset("CIFAR100", str(tmp_path), download=False)


def test_corrupt_cifar_batch_is_a_user_error(tmp_path):
    write_fake_cifar(str(tmp_path), "CIFAR100", per_class=2, test_per_class=1, num_classes=3)
    path = tmp_path / "cifar" / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match=r"train is .*corrupt"):
        load_dataset("CIFAR100", str(tmp_path), download=False)


def test_cifar_labels_out_of_range_are_refused(tmp_path):
    import pickle
    write_fake_cifar(str(tmp_path), "CIFAR10", per_class=1, test_per_class=1)
    path = tmp_path / "cifar" / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, f, protocol=2)
    with pytest.raises(UserError, match="labels outside 0..9"):
        load_dataset("CIFAR10", str(tmp_path), download=False)


def test_unknown_dataset_lists_choices():
    with pytest.raises(UserError, match="CIFAR10, CIFAR100, digits, ImageNet"):
        dataset_info("mnist")


def test_digits_are_fixed_and_match_their_statistics():
    train, test = load_digits()
    again, _ = load_digits()
    assert train.images.shape == (1438, 32, 32, 3) and test.images.shape == (359, 32, 32, 3)
    np.testing.assert_array_equal(train.labels, again.labels)
    assert set(np.unique(test.labels)) == set(range(10))
    pixels = train.images.astype(np.float64) / 255.0
    info = DATASETS["digits"]
    np.testing.assert_allclose(pixels.mean(axis=(0, 1, 2)), info.mean, atol=1e-3)
    np.testing.assert_allclose(pixels.std(axis=(0, 1, 2)), info.std, atol=1e-3)


def test_default_validation_ratios():
    assert [DATASETS[k].val_split_ratio for k in ("CIFAR10", "CIFAR100", "digits", "ImageNet")] == [0.1, 0.1, 0.1, 0.01]


# ----------------------------------------------------------------------------- split

LABELS = np.repeat(np.arange(5), [50, 31, 7, 2, 100])


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
def test_split_is_stratified_disjoint_and_complete(ratio):
    train, val = stratified_split(LABELS, ratio, seed=3, num_classes=5)
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(LABELS)))
    for c, n in enumerate(np.bincount(LABELS)):
        n_val = np.sum(LABELS[val] == c)
        assert abs(n_val - ratio * n) <= 1 and 1 <= n_val < n


def test_split_depends_on_seed_only():
    a = stratified_split(LABELS, 0.1, seed=1, num_classes=5)
    b = stratified_split(LABELS, 0.1, seed=1, num_classes=5)
    c = stratified_split(LABELS, 0.1, seed=2, num_classes=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_split_draws_the_paper_codes_permutations():
    """Same generator walk as the paper code: one generator, classes in order, int(n * (1 - r))."""
    g = torch.Generator().manual_seed(1234)
    targets = torch.as_tensor(LABELS)
    expected_train = []
    for c in range(5):
        members = torch.nonzero(targets == c).squeeze(1)
        perm = members[torch.randperm(len(members), generator=g)]
        expected_train.extend(perm[:int(len(perm) * 0.9)].tolist())
    train, _ = stratified_split(LABELS, 0.1, 1234, 5)
    # Class 3 has 2 examples: the paper code would keep none for validation; we keep one.
    keep = LABELS[np.asarray(expected_train)] != 3
    np.testing.assert_array_equal(train[LABELS[train] != 3], np.asarray(expected_train)[keep])


def test_split_ratio_is_validated():
    with pytest.raises(UserError, match="val_split_ratio"):
        stratified_split(LABELS, 1.0, 0, 5)


# ----------------------------------------------------------------------------- augmentation

def test_crop_flip_equals_torchvision_for_the_same_draws():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8))
    offsets = torch.tensor([[0, 0], [8, 8], [3, 5], [8, 0], [4, 4], [1, 7]])
    flips = torch.tensor([False, True, True, False, True, False])
    out = crop_flip(images, offsets, flips)
    for b in range(6):
        chw = images[b].permute(2, 0, 1)
        ref = TF.crop(TF.pad(chw, [4]), int(offsets[b, 0]), int(offsets[b, 1]), 32, 32)
        if flips[b]:
            ref = TF.hflip(ref)
        assert torch.equal(out[b].permute(2, 0, 1), ref), b


def _draws(info):
    data = load_digits()[0]
    src = TensorBatches(data, info, torch.device("cpu"))
    import utils.data.batches as batches
    seen = []
    original = batches.crop_flip
    batches.crop_flip = lambda im, off, fl, padding=4: (seen.append((off.clone(), fl.clone())), original(im, off, fl))[1]
    try:
        for _ in src.train_epoch(np.arange(len(src)), 512, seed=0, epoch=0):
            pass
    finally:
        batches.crop_flip = original
    return torch.cat([o for o, _ in seen]).numpy(), torch.cat([f for _, f in seen]).numpy()


def test_augmentation_draws_follow_torchvision_distribution():
    """Offsets cover 0..8 on both axes uniformly and about half the examples are flipped."""
    offsets, flips = _draws(DATASETS["CIFAR10"])
    assert offsets.min() == 0 and offsets.max() == 8
    counts = np.bincount(offsets.ravel(), minlength=9) / offsets.size
    assert np.all(np.abs(counts - 1 / 9) < 0.03)
    assert abs(flips.mean() - 0.5) < 0.05
    # Handwritten digits are never flipped (a flipped 2 is no 2), with the same crops.
    digit_offsets, digit_flips = _draws(DATASETS["digits"])
    assert not digit_flips.any() and np.array_equal(digit_offsets, offsets)


def test_training_batches_without_augmentation_are_the_images_shuffled():
    data = load_digits()[0]
    src = TensorBatches(data, DATASETS["digits"], torch.device("cpu"))
    idx = np.arange(40)
    plain = torch.cat([x for x, _ in src.train_epoch(idx, 16, seed=0, epoch=0, augment=False)])
    augmented = torch.cat([x for x, _ in src.train_epoch(idx, 16, seed=0, epoch=0)])
    labels = torch.cat([y for _, y in src.train_epoch(idx, 16, seed=0, epoch=0, augment=False)])
    ref, ref_labels, _ = next(src.eval_batches(idx, 40))
    order = [int(np.flatnonzero((ref == row).flatten(1).all(1).numpy())[0]) for row in plain]
    assert sorted(order) == list(range(40)) and order != list(range(40))  # every image once, shuffled
    assert torch.equal(labels, ref_labels[order]) and not torch.equal(plain, augmented)


def test_eval_batches_normalise_like_torchvision():
    data = load_digits()[1]
    info = DATASETS["digits"]
    src = TensorBatches(data, info, torch.device("cpu"))
    x, y, slots = next(src.eval_batches(np.array([5, 2, 9]), 2))
    ref = transforms.Compose([transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])
    expected = torch.stack([ref(Image.fromarray(data.images[i])) for i in (5, 2)])
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    assert y.tolist() == data.labels[[5, 2]].tolist() and slots.tolist() == [0, 1]


def test_train_epoch_is_a_function_of_seed_and_epoch():
    data = load_digits()[0]
    src = TensorBatches(data, DATASETS["digits"], torch.device("cpu"))
    idx = np.arange(0, len(src), 3)
    run = lambda seed, epoch: [b for b in src.train_epoch(idx, 64, seed, epoch)]
    a, b, c = run(1, 4), run(1, 4), run(1, 5)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    labels = torch.cat([y for _, y in a]).sort().values
    assert torch.equal(labels, torch.from_numpy(np.sort(data.labels[idx])))  # every example once


@pytest.mark.parametrize("n,world", [(7, 2), (10, 3), (4, 4), (5, 1)])
def test_shards_cover_every_position(n, world):
    shards = [shard_positions(n, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert set(np.concatenate(shards)) == set(range(n))


def test_image_folder_batches(tmp_path):
    for split in ("train", "val"):
        for cls in ("ant", "bee"):
            folder = tmp_path / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((40, 48, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    data = load_dataset("ImageNet", str(tmp_path))
    assert data.num_classes == 2 and len(data.train.samples) == 6
    src = FolderBatches(data.train, data.info, torch.device("cpu"), workers=0, image_size=32)
    batches = list(src.eval_batches(np.array([4, 0, 5]), 2))
    assert [b[0].shape for b in batches] == [(2, 3, 32, 32), (1, 3, 32, 32)]
    assert torch.cat([b[1] for b in batches]).tolist() == [1, 0, 1]
    assert torch.cat([b[2] for b in batches]).tolist() == [0, 1, 2]
    first = [x for x, _ in src.train_epoch(np.arange(6), 4, seed=0, epoch=1)]
    again = [x for x, _ in src.train_epoch(np.arange(6), 4, seed=0, epoch=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_missing_image_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"imagenet.*train"):
        load_dataset("ImageNet", str(tmp_path))
