"""The images of an ImageFolder dataset, checked before a run trains on them.

A file that cannot be an image (empty, truncated, text named ``.jpg``, a corrupt header) would
otherwise stop a run with a decoder's traceback in the middle of an epoch. :func:`bad_images` finds
them all first, in DataLoader workers: PIL opens each file and ``verify()`` checks its structure
without decoding the pixels, and a JPEG must end with its end-of-image marker (a truncated file
does not). A file that still fails later, when it is decoded, is named by :class:`BadImage`.
"""
from __future__ import annotations

import os

import torch
from PIL import Image

from utils import progress
from utils.errors import UserError

JPEG_END = b"\xff\xd9"  # EOI: the last two bytes of a whole JPEG
SHOWN = 5  # files named in a message


class BadImage(UserError):
    """A file of the dataset that cannot be decoded (raised in a DataLoader worker, shown as one line)."""


def check_image(path: str) -> str:
    """'' for a readable image, else what is wrong with the file."""
    try:
        with Image.open(path) as image:
            fmt = image.format
            image.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(-2, os.SEEK_END)
                if f.read(2) != JPEG_END:
                    return "truncated JPEG (no end-of-image marker)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'unreadable'}"
    return ""


class _Checks(torch.utils.data.Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[int, str]:
        return index, check_image(self.samples[index][0])


def bad_images(folder, workers: int, what: str, indices=None) -> list[tuple[int, str, str]]:
    """``[(index, path, what is wrong)]`` for every file of ``folder`` (an ImageFolder; only those of
    ``indices`` when given) that cannot be an image, checked by ``workers`` DataLoader workers."""
    checks = _Checks(folder.samples)
    if indices is not None:
        checks = torch.utils.data.Subset(checks, [int(i) for i in indices])
    loader = torch.utils.data.DataLoader(checks, batch_size=64, num_workers=workers, collate_fn=list)
    bad = []
    for batch in progress.bar(loader, f"check {what} images", total=len(loader)):
        bad.extend((i, folder.samples[i][0], why) for i, why in batch if why)
    return bad


def refuse_or_skip(bad: list[tuple[int, str, str]], what: str, skip: bool) -> None:
    """Refuse bad images in one line naming them, or with ``skip`` list them and go on without them."""
    if not bad:
        return
    shown = "; ".join(f"{path} ({why})" for _, path, why in bad[:SHOWN]) + (
        f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
    if not skip:
        raise UserError(f"{len(bad)} file{'s' if len(bad) > 1 else ''} of the {what} set cannot be read as images: "
                        f"{shown}; remove or replace them, or pass --skip_bad_images to go on without them")
    progress.warn(f"skipping {len(bad)} file{'s' if len(bad) > 1 else ''} of the {what} set that cannot be read as "
                  f"images (--skip_bad_images): {shown}")
