"""Run-state checkpoints: plain dicts of tensors and numbers, saved atomically, loaded without code.

A checkpoint is what pytorch/examples' ImageNet script saves (epoch, arch, state_dict, optimizer,
scheduler, best metric), plus what an exact resume needs (RNG states, the log so far, and for
stage 1 the loss trajectories recorded so far), plus an *identity* (dataset, model, seed, split,
...) that a resume must match. Loading uses ``torch.load(weights_only=True)``: a checkpoint with a
pickled callable is refused and nothing in it runs.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any, Mapping

import torch

from utils.cli import UserError
from utils.formats import ZIP_MAGIC, atomic_write

RUN_FORMAT = "cld-run/1"
_SCRIPTS = {"losses": "get_loss_values.py (stage 1)", "coreset": "train_on_coresets.py (stage 3)"}


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``."""
    record = dict(state)
    record["format"] = RUN_FORMAT
    atomic_write(path, lambda f: torch.save(record, f))


def load_checkpoint(path: str, what: str = "checkpoint") -> dict:
    """Load a checkpoint of this project; every failure is one user error naming the file.

    The archive's CRC-32 checksums are verified first (``torch.load`` does not check them), so a
    damaged checkpoint is refused instead of loading garbage weights.
    """
    if not path or not os.path.isfile(path):
        raise UserError(f"{what} {path or '(none given)'} not found")
    _check_archive(path, what)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # torch's long message names the global
        detail = f"it refers to {found.group(1)}" if found else "torch's weights-only loader refused it"
        raise UserError(f"{what} {path} holds objects other than tensors and plain data, so it was not "
                        f"loaded (loading it could run code; {detail})") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError, TypeError,
            UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is truncated or corrupt ({_first_line(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        raise UserError(f"{path} is not a checkpoint of this project (no '{RUN_FORMAT}' format tag)")
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _check_archive(path: str, what: str) -> None:
    """Refuse a file that is not a whole zip archive (what ``torch.save`` writes) with intact CRCs."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head != ZIP_MAGIC:
            if ZIP_MAGIC.startswith(head):
                raise UserError(f"{what} {path} is truncated ({os.path.getsize(path)} bytes)")
            kind = " (it looks like a pickle: a loss, score or split file?)" if head[:1] == b"\x80" else ""
            raise UserError(f"{what} {path} is not a checkpoint of this project: not a PyTorch zip archive{kind}")
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise UserError(f"{what} {path} is truncated or corrupt ({_first_line(exc)})") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path} ({exc.strerror or exc})") from None
    if bad is not None:
        raise UserError(f"{what} {path} is corrupt (checksum mismatch in {bad})")


def check_identity(saved: Mapping[str, Any], expected: Mapping[str, Any], path: str) -> None:
    """Refuse a checkpoint that belongs to another run, naming every field that differs."""
    if "stage" in expected and saved.get("stage") != expected["stage"]:
        raise UserError(f"checkpoint {path} was written by {_SCRIPTS.get(saved.get('stage'), 'another program')}, "
                        f"not by {_SCRIPTS.get(expected['stage'], 'this script')}; resume with a *_last.pth of this script")
    diffs = [f"{key}: checkpoint has {saved.get(key)!r}, this run has {value!r}"
             for key, value in expected.items() if saved.get(key) != value]
    if diffs:
        raise UserError(f"checkpoint {path} belongs to another run ({'; '.join(diffs)}); "
                        "resume with the flags it was made with, or start a new run")


def rng_state() -> dict:
    """The global RNG states that training draws from (dropout, cuDNN-free ops)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
