"""Checkpoints: plain dicts of tensors and numbers, saved atomically, loaded without code.

Three kinds, each tagged in the file:

* ``last``: the run state written after every epoch (what pytorch/examples' ImageNet script saves
  -- epoch, model, optimizer, scheduler, best metric -- plus RNG states, the log so far and an
  *identity* that a resume must match: dataset, model, seed, split, recipe, ...);
* ``best``: the weights of the epoch with the best test accuracy;
* ``snapshot``: the weights after a chosen epoch (stage 1's ``--snapshot_epochs``).

Loading uses ``torch.load(weights_only=True)`` after the archive's CRC checks: a checkpoint with a
pickled callable is refused and nothing in it runs. The fields a run reads are validated (types,
ranges) before use. Checkpoints of the paper's code (``{'state_dict': DataParallel weights, ...}``)
load for evaluation.
"""
from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from typing import Any, Mapping

import torch

from utils.errors import UserError, first_line
from utils.files.npz import check_members
from utils.files.atomic import atomic_write
from utils.files.unpickle import ZIP_MAGIC

RUN_FORMAT = "cld-run/1"
_SCRIPTS = {"losses": "get_loss_values.py (stage 1)", "coreset": "train_on_coresets.py (stage 3)"}


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``."""
    record = dict(state)
    record["format"] = RUN_FORMAT
    atomic_write(path, lambda f: torch.save(record, f))


def _torch_load(path: str, what: str) -> Any:
    if not path or not os.path.isfile(path):
        raise UserError(f"{what} {path or '(none given)'} not found")
    _check_archive(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # torch's long message names the global
        detail = f"it refers to {found.group(1)}" if found else "torch's weights-only loader refused it"
        raise UserError(f"{what} {path} holds objects other than tensors and plain data, so it was not "
                        f"loaded (loading it could run code; {detail})") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError, TypeError,
            UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is truncated or corrupt ({first_line(exc)})") from None


def load_checkpoint(path: str, what: str = "checkpoint") -> dict:
    """Load a checkpoint of this project; every failure is one user error naming the file.

    The archive's CRC-32 checksums are verified first (``torch.load`` does not check them), so a
    damaged checkpoint is refused instead of loading garbage weights.
    """
    return _validated(_torch_load(path, what), path)


def _validated(state: Any, path: str) -> dict:
    """``state``, loaded from ``path``, once it is known to be a checkpoint of this project whose
    identity and epoch are well-formed."""
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        raise UserError(f"{path} is not a checkpoint of this project (no '{RUN_FORMAT}' format tag)")
    _require_fields(state, path, {"identity": dict, "model": dict})
    _check_identity_values(state["identity"], path)
    if "epoch" in state:
        _require_count(state["epoch"], "epoch", path)
    return state


def load_run_state(path: str, max_epochs: int) -> dict:
    """A ``*_last.pth`` to resume from, with every field a resume reads checked."""
    state = load_checkpoint(path, "checkpoint to resume")
    kind = state.get("kind", "last" if "optimizer" in state else "best")
    if kind != "last":
        raise UserError(f"{path} is a {'*_best.pth' if kind == 'best' else 'weight snapshot'}: it holds model "
                        "weights only, not the optimizer, scheduler and RNG state a resume needs; resume from the "
                        "run's *_last.pth (or evaluate this file with --evaluate_only)")
    _require_fields(state, path, {"optimizer": dict, "scheduler": dict, "scaler": dict, "rng": dict, "log": list,
                                  "extra": dict})
    epoch = _require_count(state.get("epoch"), "epoch", path)
    if epoch > max_epochs:
        raise UserError(f"checkpoint {path} already holds {epoch} epochs (this run asks for {max_epochs}); raise "
                        "--epochs to continue training")
    best = state.get("best_acc")
    if not isinstance(best, (int, float)) or isinstance(best, bool) or not 0 <= best <= 100:
        raise UserError(f"checkpoint {path}: best_acc {best!r} is not an accuracy in [0, 100]; the file is corrupt")
    rows = state["log"]
    if len(rows) != epoch or not all(isinstance(r, dict) and all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in r.items())
            for r in rows):
        raise UserError(f"checkpoint {path}: its log is not {epoch} rows of numbers; the file is corrupt")
    if not isinstance(state["rng"].get("torch"), torch.Tensor):
        raise UserError(f"checkpoint {path}: its RNG state is missing; the file is corrupt")
    return state


def load_model_weights(path: str) -> tuple[dict, Any, dict | None]:
    """(state_dict, epoch, identity) of any checkpoint of this project, or (state_dict, epoch, None)
    of one written by the paper's code (DataParallel's ``module.`` prefixes removed)."""
    state = _torch_load(path, "checkpoint")
    if isinstance(state, dict) and state.get("format") == RUN_FORMAT:
        state = _validated(state, path)
        return state["model"], state.get("epoch"), state["identity"]
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        weights = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state["state_dict"].items()}
        if not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise UserError(f"checkpoint {path}: its state_dict holds values other than tensors")
        return weights, state.get("epoch"), None
    raise UserError(f"{path} is neither a checkpoint of this project nor one of the paper's code (a dict with a "
                    "'state_dict')")


def _require_fields(state: dict, path: str, fields: dict[str, type]) -> None:
    for key, kind in fields.items():
        if not isinstance(state.get(key), kind):
            raise UserError(f"checkpoint {path}: {key!r} is missing or not a {kind.__name__}; the file is corrupt "
                            "or of another kind")


def _require_count(value: Any, key: str, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"checkpoint {path}: {key} {value!r} is not a non-negative integer; the file is corrupt")
    return value


def _check_identity_values(identity: dict, path: str) -> None:
    for key, value in identity.items():
        ok = isinstance(key, str) and (value is None or isinstance(value, (str, int, bool)) or
                                       isinstance(value, float) and math.isfinite(value) or
                                       isinstance(value, list) and all(isinstance(v, (int, float, str)) for v in value))
        if not ok:
            raise UserError(f"checkpoint {path}: identity field {key!r} holds {type(value).__name__}; the file is "
                            "corrupt")


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
            check_members(archive, path, what)
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise UserError(f"{what} {path} is truncated or corrupt ({first_line(exc)})") from None
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
        raise UserError(f"checkpoint {path} belongs to another run or recipe ({'; '.join(diffs)}); "
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
