"""Figures of stage 2 (``compute_cld_scores.py --figure``), drawn only when asked for.

* :func:`overview`: the paper's overview figure for one class of any run: the images of its three
  highest- and three lowest-CLD training examples; their loss trajectories against the class's mean
  validation loss (the positive ones move with it, the negative ones against it); and histograms of
  the class's CLD scores and of every class's, zero marked.
* :func:`stability_curve`: ``--stability``'s agreement of early rankings with the full one.

Matplotlib is imported (:mod:`utils.files.png`) only when a figure is drawn; images come from the
dataset the loss file names (an ImageFolder dataset reads only the files shown). A loss file recorded
from the user's own loop names no dataset of ours: its figure has the loss and histogram panels
only, its examples named by their ids and its classes by their group names.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from utils import paths
from utils.data.datasets import dataset_info, load_dataset
from utils.errors import UserError
from utils.files.png import pyplot, save_png

SHOWN = 3  # examples per end of the ranking


def widest_class(scores: dict[int, np.ndarray]) -> int:
    """The class whose CLD scores spread widest (max - min; ties to the lower class)."""
    return min(scores, key=lambda c: (-(float(scores[c].max()) - float(scores[c].min())), c))


def _images(dataset: str, data_path: str, indices: Sequence[int]) -> list[np.ndarray]:
    """The training images of ``indices`` as H x W x 3 uint8 arrays; an ImageFolder reads only those files."""
    info = dataset_info(dataset)
    if info.in_memory:
        data = load_dataset(info.name, data_path, download=False)
        return [data.train.images[i] for i in indices]
    from PIL import Image
    from torchvision import datasets

    root = paths.image_folder(data_path, "train")
    if not os.path.isdir(root):
        raise UserError(f"{info.name} folder {root} not found; pass --data_path with the data stage 1 used")
    folder = datasets.ImageFolder(root)  # file names only: no image is opened here
    out = []
    for i in indices:
        path = folder.samples[i][0]
        try:
            with Image.open(path) as image:
                out.append(np.asarray(image.convert("RGB")))
        except OSError as exc:
            raise UserError(f"cannot read image {path} ({exc})") from None
    return out


def _has_images(record: dict) -> bool:
    """Whether the score file's dataset is one this project reads images of (a recorded file's is not)."""
    if record.get("source") == "recorder":
        return False
    try:
        dataset_info(record["dataset"])
    except UserError:
        return False
    return True


def _names(record: dict, cls: int) -> tuple[Callable[[int], str], str, str]:
    """How an example (by ranked index), the class shown and a class are named: a recorded file's
    ids, and groups (its group name, where it has them)."""
    ids, groups = record.get("train_ids"), record.get("group_names")
    if ids is None:
        return (lambda i: f"example {int(i)}"), f"class {cls}", "class"
    return (lambda i: f"id {ids[int(i)]}"), f"group {groups[cls]!r}" if groups else f"group {cls}", "group"


def overview(path: str, losses: dict, record: dict, cls: int | None, data_path: str, replace: bool = True) -> None:
    """The overview figure of class ``cls`` (default :func:`widest_class`) of a CLD score file."""
    if "tr_loss" not in losses:
        raise UserError("--figure draws the loss trajectories, which a sums file does not hold; use the loss file "
                        "of a run with --trajectories full")
    scores, ranked = record["scores"], record["indices"]
    if cls is None:
        cls = widest_class(scores)
    if cls not in ranked:
        raise UserError(f"--figure_class {cls} is not a class of this score file (classes {min(ranked)}..{max(ranked)})")
    top, bottom = ranked[cls][:SHOWN], ranked[cls][::-1][:SHOWN]
    shown = [*top, *bottom]
    value = dict(zip(ranked[cls].tolist(), scores[cls].tolist()))
    images = _images(record["dataset"], data_path, shown) if _has_images(record) else []
    name_of, cls_name, unit = _names(record, cls)
    column = {int(i): j for j, i in enumerate(losses["train_indices"])}
    epochs = np.asarray(losses["epoch"]) + 1
    val_lbl = losses["val_lbl"]
    val_mean = losses["val_loss"][:, val_lbl == cls].astype(np.float64).mean(axis=1)

    plt = pyplot()
    rows = 3 if images else 2  # without images: the loss and histogram panels only
    fig = plt.figure(figsize=(16, 11 if images else 7.5))
    # Columns 0-2: the highest CLD; 4-6: the lowest; column 3 keeps the right-hand axis of one panel
    # clear of the left-hand axis of the next.
    grid = fig.add_gridspec(rows, 7, height_ratios=[1.0, 1.25, 1.0][3 - rows:],
                            width_ratios=[1, 1, 1, 0.55, 1, 1, 1], hspace=0.45, wspace=0.3)
    columns = [0, 1, 2, 4, 5, 6]
    for n, (index, image) in enumerate(zip(shown, images)):
        ax = fig.add_subplot(grid[0, columns[n]])
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"{'highest' if n < SHOWN else 'lowest'} #{n % SHOWN + 1}\n{name_of(index)}, "
                     f"CLD {value[int(index)]:+.2f}", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    for half, (members, name) in enumerate(((top, f"highest CLD: loss falls with the {unit}'s validation loss"),
                                            (bottom, "lowest CLD: loss moves against it"))):
        ax = fig.add_subplot(grid[rows - 2, 4 * half:4 * half + 3])
        for index in members:
            ax.plot(epochs, losses["tr_loss"][:, column[int(index)]], marker="o", markersize=3,
                    label=f"{name_of(index)} (CLD {value[int(index)]:+.2f})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.set_title(name, fontsize="medium", loc="left")
        twin = ax.twinx()
        twin.plot(epochs, val_mean, color="black", linestyle="--", linewidth=2, label=f"{unit} mean validation loss")
        twin.set_ylabel(f"mean validation loss of the {unit}")
        lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(lines, [line.get_label() for line in lines], fontsize="small", loc="upper right")
        ax.grid(True, alpha=0.3)
    everything = np.concatenate([np.asarray(v) for v in scores.values()])
    for half, (values, name) in enumerate(((np.asarray(scores[cls]), f"{cls_name}: CLD of its {len(scores[cls])} "
                                                                       "training examples"),
                                           (everything, f"every {unit}: CLD of {len(everything)} examples"))):
        ax = fig.add_subplot(grid[rows - 1, 4 * half:4 * half + 3])
        ax.hist(values, bins=40, range=(-1, 1), color="#c0392b" if half == 0 else "#7f8c8d")
        ax.axvline(0.0, color="black", linewidth=1.5)
        ax.set_xlabel("CLD")
        ax.set_ylabel("examples")
        ax.set_title(f"{name}; {100 * np.mean(values > 0):.1f}% positive", fontsize="medium", loc="left")
    fig.suptitle(f"CLD of {record['dataset']} / {record['model_arch']} (seed {record['manual_seed']}), {cls_name}: "
                 f"{len(epochs)} recorded epochs", fontsize="large")
    save_png(fig, path, dpi=100, tight=False, replace=replace)


def stability_curve(path: str, rows: list[dict], method: str, epochs: int, replace: bool = True) -> None:
    """Mean and minimum top-k Jaccard, and Spearman's correlation, against the epochs used."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10.5, 5.5))
    for k in dict.fromkeys(r["k"] for r in rows):
        sub = [r for r in rows if r["k"] == k]
        x = [r["epochs"] for r in sub]
        label = f"top {k} per class" if "." not in k else f"top {float(k):.0%} of each class"
        line, = ax.plot(x, [r["mean_jaccard"] for r in sub], marker="o", label=f"mean Jaccard, {label}")
        ax.plot(x, [r["min_jaccard"] for r in sub], marker="v", linestyle=":", color=line.get_color(),
                label=f"min over classes, {label}")
    first = [r for r in rows if r["k"] == rows[0]["k"]]
    ax.plot([r["epochs"] for r in first], [r["spearman"] for r in first], color="black", linestyle="--", marker="s",
            label="Spearman correlation of the scores")
    ax.set_xlabel(f"epochs used (of {epochs} recorded)")
    ax.set_ylabel("agreement with the ranking from every epoch")
    ax.set_ylim(min(0.0, min(r["spearman"] for r in rows)) - 0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{method}: how early the ranking settles", loc="left")
    fig.tight_layout()
    save_png(fig, path, replace=replace)
