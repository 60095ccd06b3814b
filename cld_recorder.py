"""Record stage 1 of CLD coreset selection from your own training loop.

CLD (*Coresets from Trajectories: Selecting Data via Correlation of Loss Differences*, Nagaraj,
Ravikumar, Roy, TMLR 2025) ranks training examples by how their loss moves with the validation
loss of their class over training. All it needs is every example's loss after every epoch. This
one file records those losses from any training loop (plain PyTorch, a Hugging Face ``Trainer``, a
Lightning module) on any data (images, text, tables, instruction sets), and writes the loss file
that ``compute_cld_scores.py`` scores::

    from cld_recorder import LossRecorder

    rec = LossRecorder("runs/mytab", train_labels, val_labels, epochs=E)  # continues a folder with rows
    for epoch in range(rec.epochs_recorded, E):
        train_one_epoch(model)                               # your own loop
        rec.record(model, train_loader, val_loader)          # eval mode, no grad, fp32, every example
        # or: rec.add_epoch(train_losses, val_losses)        # arrays you computed yourself
    loss_file = rec.finish()                                 # then: compute_cld_scores.py --loss_path ...

Rows go to disk as they are made (one memory-mapped ``.npy`` per array), so memory stays bounded
whatever the number of examples, and a killed run loses at most the epoch in progress: a new
``LossRecorder`` on the same folder continues after the last whole epoch. Stage 1 of this
project records through the same row store (:class:`RowStore`) and the same CLD sums
(:class:`CLDSums`), so there is one implementation of both.

Imports only the standard library and numpy at its top; torch, Hugging Face ``transformers`` and
Lightning are imported inside the functions that use them, so this file can be copied into any
project. Bad input raises :class:`RecordError` (a ``ValueError``) naming what is wrong.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["LossRecorder", "RecordError", "RowStore", "CLDSums", "per_example_loss", "hf_checkpoints",
           "TrainerCallback", "LightningCallback"]

LOSS_FORMAT = "cld-losses/1"
SUMS_FORMAT = "cld-sums/1"
# Per-example signals kept beside the losses for the training-dynamics baselines (forgetting, AUM,
# EL2N); float16 halves their size and is ample for averages over epochs.
SIGNAL_DTYPES = {"tr_correct": np.bool_, "tr_margin": np.float16, "tr_el2n": np.float16}
SIGNAL_KEYS = tuple(SIGNAL_DTYPES)
# CLD's running sums (:class:`CLDSums`): a sums file holds each as sums_<name>.
SUMS_STATE = ("epochs", "prev", "mean_x", "m2_x", "c_xy", "prev_v", "mean_y", "m2_y")
# What a recorded run's loss or sums file holds besides stage 1's keys (docs/formats.md).
RECORDED_KEYS = ("source", "train_ids", "val_ids", "group_names")
# A vector whose std is below this fraction of its root-mean-square is constant up to rounding
# of its mean; like an exactly constant one (the paper's zero std) it correlates with nothing.
# Differences of float32 losses vary by >= 1e-8 of their size, far above this.
ZERO_STD_RTOL = 1e-10
IGNORE_INDEX = -100  # the label of a token that does not count (Hugging Face's convention)
MAX_GROUPS = 1_000_000  # integer labels are class numbers; a larger one is a mistake (loss files refuse it)


class RecordError(ValueError):
    """Input the recorder cannot record (wrong lengths, NaN losses, a folder of another run)."""


def signal_row(key: str, values: np.ndarray) -> np.ndarray:
    """One epoch's values of a signal in the dtype it is stored in."""
    dtype = SIGNAL_DTYPES[key]
    if dtype == np.float16:  # a diverging run's margins can leave float16's range
        values = np.clip(values, -np.finfo(np.float16).max, np.finfo(np.float16).max)
    return values.astype(dtype)


# ----------------------------------------------------------------------------- CLD's arithmetic

def class_means(values: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(C,) float64 mean of one epoch's float32 ``values`` per class (0 for an empty class);
    ``counts = np.bincount(labels, minlength=C)``, computed once for every epoch."""
    return np.bincount(labels, weights=values, minlength=len(counts)) / np.maximum(counts, 1)


def zero_spread(m2: np.ndarray, n: int, mean: np.ndarray) -> np.ndarray:
    """A vector whose spread (sum of squared deviations ``m2`` over ``n`` entries) is below
    rounding of its mean: constant, so it correlates with nothing (the paper's zero std)."""
    return m2 <= ZERO_STD_RTOL ** 2 * (m2 + n * mean * mean)


def population_corr(sxy: np.ndarray, sxx: np.ndarray, syy: np.ndarray,
                    x_zero: np.ndarray, y_zero: np.ndarray) -> np.ndarray:
    """Pearson r from centred sums; a (numerically) constant side gives 0, as in the paper."""
    denom = np.sqrt(sxx * syy)
    zero = x_zero | y_zero
    denom[zero] = 1.0
    r = sxy / denom
    r[zero] = 0.0
    return r


def check_validation_classes(classes: np.ndarray, val_counts: np.ndarray, names: Sequence[str] | None = None,
                             unit: str = "class") -> None:
    """Every class with training examples needs a validation example (the paper code silently gave
    the others an empty ranking). ``val_counts``: validation examples per class, one entry for
    every class in ``classes`` at least; ``names``: the classes' names, when they have any; ``unit``:
    what the message calls them (the recorder's groups)."""
    missing = classes[val_counts[classes] == 0]
    if missing.size:
        shown = ", ".join(repr(names[c]) if names else str(int(c)) for c in missing[:10])
        hint = " (stage 1: a larger val_split_ratio)" if unit == "class" else ""
        raise RecordError(f"{unit} {shown}{' ...' if missing.size > 10 else ''} has training examples but no "
                          f"validation example, so its CLD is undefined; give every {unit} validation examples{hint}")


class CLDSums:
    """CLD's running sums, updated once per epoch (O(N) memory whatever the number of epochs).

    Per training example: its previous loss (float32, so that differences are the float64
    differences of the recorded float32 losses, exactly as CLD on full trajectories takes them)
    and, in float64, Welford's running mean and sum of squared deviations of its loss differences
    x_t and their co-moment with its class's validation-loss differences y_t; per class: the
    running mean and sum of squared deviations of y_t. The correlation equals CLD on the full
    trajectories to rounding (~1e-12).

    Args:
        tr_lbl: (N,) labels of the training columns.
        val_lbl: (N_val,) labels of the validation columns.
        n_cls: number of classes.
    """

    STATE = SUMS_STATE

    def __init__(self, tr_lbl: np.ndarray, val_lbl: np.ndarray, n_cls: int):
        self.tr_lbl, self.val_lbl, self.n_cls = np.asarray(tr_lbl), np.asarray(val_lbl), int(n_cls)
        self.val_counts = np.bincount(self.val_lbl, minlength=self.n_cls)
        n = self.tr_lbl.size
        self.epochs = 0  # rows seen; epochs - 1 differences
        self.prev = np.zeros(n, np.float32)
        self.mean_x, self.m2_x, self.c_xy = np.zeros(n), np.zeros(n), np.zeros(n)
        self.prev_v, self.mean_y, self.m2_y = np.zeros(n_cls), np.zeros(n_cls), np.zeros(n_cls)

    def update(self, tr_loss: np.ndarray, val_loss: np.ndarray) -> None:
        """Take one epoch's float32 training and validation losses."""
        v = class_means(val_loss, self.val_lbl, self.val_counts)
        if self.epochs:
            d = self.epochs  # the number of differences after this one
            x = np.subtract(tr_loss, self.prev, dtype=np.float64)
            y = v - self.prev_v
            dx = x - self.mean_x
            self.mean_x += dx / d
            dy = y - self.mean_y
            self.mean_y += dy / d
            self.m2_y += dy * (y - self.mean_y)
            self.c_xy += dx * (y - self.mean_y)[self.tr_lbl]
            self.m2_x += dx * (x - self.mean_x)
        self.prev[:] = tr_loss
        self.prev_v = v
        self.epochs += 1

    def scores(self) -> np.ndarray:
        """CLD of every training column (a constant side gives 0)."""
        n = self.epochs - 1
        check_validation_classes(np.unique(self.tr_lbl), self.val_counts)
        x_zero = zero_spread(self.m2_x, n, self.mean_x)
        y_zero = zero_spread(self.m2_y, n, self.mean_y)[self.tr_lbl]
        return population_corr(self.c_xy, self.m2_x, self.m2_y[self.tr_lbl], x_zero, y_zero)

    def state(self) -> dict[str, np.ndarray]:
        return {key: np.asarray(getattr(self, key)) for key in self.STATE}

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        for key in self.STATE:
            value = np.asarray(state[key])
            if value.shape != np.shape(getattr(self, key)):
                raise RecordError(f"CLD sums: {key!r} has shape {value.shape}, expected {np.shape(getattr(self, key))}")
            setattr(self, key, int(value) if key == "epochs" else value.astype(np.asarray(getattr(self, key)).dtype))


# ----------------------------------------------------------------------------- rows on disk

class RowStore:
    """One ``.npy`` memory map of shape (epochs, N) per recorded array, in one folder; each epoch adds
    a row to each, written once. Who counts the rows that are complete is the caller's (stage 1's
    checkpoint, or the recorder's progress file), which is written after :meth:`flush`.

    Args:
        folder: where the maps live.
        epochs: rows to reserve (grown on :meth:`open` when a resumed run asks for more).
        layout: ``{name: (dtype, columns)}``.
        remedy: what the user should do when the rows are missing or damaged.
    """

    def __init__(self, folder: str, epochs: int, layout: Mapping[str, tuple[Any, int]],
                 remedy: str = "record into a new folder"):
        self.folder, self.epochs, self.layout, self.remedy = folder, int(epochs), dict(layout), remedy
        self.maps: dict[str, np.memmap] = {}

    def path(self, key: str) -> str:
        return os.path.join(self.folder, f"{key}.npy")

    def open(self, done: int) -> None:
        """Create the maps (``done == 0``), or reopen those that hold ``done`` complete rows, growing
        them when more epochs are asked for now."""
        if done == 0:
            os.makedirs(self.folder, exist_ok=True)
            for key, (dtype, n) in self.layout.items():
                self.maps[key] = _reserved(np.lib.format.open_memmap(self.path(key), "w+", dtype, (self.epochs, n)))
            return
        for key, (dtype, n) in self.layout.items():
            path = self.path(key)
            try:
                mm = np.load(path, mmap_mode="r+", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise RecordError(f"the recorded rows {path} of this run are missing or damaged ({exc}); the "
                                  f"run cannot continue without them: {self.remedy}") from None
            if mm.dtype != dtype or mm.ndim != 2 or mm.shape[1] != n or mm.shape[0] < done:
                raise RecordError(f"{path} holds {mm.shape} {mm.dtype} rows, not the {done} x {n} {np.dtype(dtype)} "
                                  f"rows of this run; {self.remedy}")
            self.maps[key] = _reserved(mm) if mm.shape[0] >= self.epochs else self._grown(path, mm, done)

    def _grown(self, path: str, mm: np.memmap, done: int) -> np.memmap:
        """A copy of the first ``done`` rows in a map of ``self.epochs`` rows, swapped in atomically."""
        tmp = path + ".grow.npy"
        bigger = _reserved(np.lib.format.open_memmap(tmp, "w+", mm.dtype, (self.epochs, mm.shape[1])))
        bigger[:done] = mm[:done]
        bigger.flush()
        del mm
        os.replace(tmp, path)
        return bigger

    def record(self, epoch: int, rows: Mapping[str, np.ndarray]) -> None:
        for key, row in rows.items():
            self.maps[key][epoch] = row

    def flush(self) -> None:
        """Make every row written so far durable (before whatever counts them)."""
        for mm in self.maps.values():
            mm.flush()

    def arrays(self, done: int) -> dict[str, np.ndarray]:
        """The first ``done`` rows of every array (views of the maps; pickled without a copy)."""
        return {key: mm[:done].view(np.ndarray) for key, mm in self.maps.items()}


def _reserved(mm: np.memmap) -> np.memmap:
    """``mm`` with its whole file allocated on disk now. A memory map is a sparse file until rows are
    written into it; were the disk filled meanwhile, writing a row would fault the process (SIGBUS)
    instead of failing a write: here it is one ``OSError``, before the epoch runs."""
    fd = os.open(mm.filename, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return mm


def _try_lock(fd: int) -> bool | None:
    """Lock an open file without waiting: True; False when another process holds it; None where
    files cannot be locked."""
    import errno

    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except ImportError:
        return None
    except OSError as exc:
        return False if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES) else None


def temp_prefix(path: str) -> str:
    """The start of the hidden temporary files an atomic write of ``path`` creates beside it."""
    return f".{os.path.basename(path)}."


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temporary files that killed writers of ``path`` left; returns their paths. A
    temporary file is stale when no process holds its lock (its writer died before renaming it);
    where the filesystem offers no locks, nothing is removed."""
    folder, prefix, removed = os.path.dirname(os.path.abspath(path)), temp_prefix(path), []
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        if name.startswith(prefix) and name.endswith(".tmp"):
            tmp = os.path.join(folder, name)
            try:
                with open(tmp, "rb") as stale:
                    if _try_lock(stale.fileno()):  # None: no locks here, nothing is known stale
                        os.unlink(tmp)
                        removed.append(tmp)
            except OSError:
                continue  # gone meanwhile, or not ours to read: leave it
    return removed


_UMASK: list[int] = []


def _umask() -> int:
    """The process's umask, read once (reading it means setting it, which is not thread-safe)."""
    if not _UMASK:
        mask = os.umask(0o022)
        os.umask(mask)
        _UMASK.append(mask)
    return _UMASK[0]


def atomic_write(path: str, write: Callable[[Any], None], replace: bool = True) -> None:
    """Write ``path`` through ``write(fileobj)`` so that readers see the old file or the new one, never
    half of one: a temporary file ``.<name>.<random>.tmp`` in the same folder, flushed and fsynced,
    then renamed over ``path``. The writer locks its temporary file until the rename, which is how a
    later writer tells a killed writer's file (stale, removed first) from one still being written.
    The file gets the usual permissions (0666 less the umask), not ``mkstemp``'s private 0600.

    ``replace=False`` names the file only if ``path`` does not exist at that moment (a hard link of
    the finished temporary file, which fails if the name is taken), else ``FileExistsError``: of two
    writers racing for a new file, exactly one succeeds. Every project file is written here.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(path)
    f, tmp = _locked_temp(path, folder)
    try:
        with f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if replace:
                os.replace(tmp, path)  # still locked: a concurrent cleaner never takes it for stale
            else:
                _create(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _locked_temp(path: str, folder: str) -> tuple[Any, str]:
    """A new temporary file for ``path``, open, locked and still under its name. Another writer's
    cleanup may take a file made a moment ago, before its lock, for a killed writer's (it then holds
    the lock, or has removed the file): this one takes a new file. Where files cannot be locked the
    write goes on unlocked, as it must."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=folder)
        f = os.fdopen(fd, "wb")
        try:
            if _try_lock(f.fileno()) is not False and os.path.samestat(os.stat(tmp), os.fstat(f.fileno())):
                return f, tmp
        except FileNotFoundError:
            pass
        f.close()


def _create(tmp: str, path: str) -> None:
    """Give the finished ``tmp`` the name ``path`` unless that name exists (``FileExistsError``)."""
    import errno

    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        # No hard links here (some network and FUSE filesystems): O_EXCL claims the name, then the
        # rename fills it; a racer that claimed it first makes this one fail here.
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_loss_file(path: str, record: Mapping[str, Any]) -> None:
    """Write a loss file (docs/formats.md: a pickled dict of arrays and the run's metadata) atomically."""
    record = dict(record)
    record["format"] = LOSS_FORMAT
    atomic_write(path, lambda f: pickle.dump(record, f, protocol=pickle.HIGHEST_PROTOCOL))


def write_sums_file(path: str, record: Mapping[str, Any], state: Mapping[str, np.ndarray],
                    meta: Sequence[str], split: Sequence[str]) -> None:
    """Write a sums file: the run's metadata (``meta`` keys of ``record``) and split (``split`` keys),
    and CLD's running sums, in an ``.npz`` that loads without pickle."""
    arrays = {"format": SUMS_FORMAT, "config": json.dumps(record["config"], sort_keys=True),
              **{key: record[key] for key in meta}, **{key: record[key] for key in split},
              **{f"sums_{key}": value for key, value in state.items()}}
    for key in RECORDED_KEYS:  # a recorded run's ids and group names (stage 1's files have none)
        if key in record:
            arrays[key] = json.dumps(record[key]) if key == "group_names" else record[key]
    atomic_write(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


# ----------------------------------------------------------------------------- per-example losses

def per_example_loss(logits: Any, targets: Any) -> Any:
    """Each example's loss from a batch's model output.

    * class logits ``(B, C)`` and class indices ``(B,)``: cross-entropy;
    * token logits ``(B, T, V)`` and token labels ``(B, T)`` (a causal language model): the
      next-token cross-entropy averaged over the example's tokens whose label is not -100, so that
      prompt and padding tokens masked with -100 do not count (an example with none gives NaN);
    * one value per example ``(B,)`` or ``(B, 1)`` and targets of that shape: squared error.
    """
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    if logits.dim() == 2 and logits.shape[1] > 1 and targets.dim() == 1 and not targets.dtype.is_floating_point:
        return F.cross_entropy(logits, targets.long(), reduction="none")
    if logits.dim() == 3 and targets.dim() == 2:
        shifted, labels = logits[:, :-1], targets[:, 1:].long()  # position t predicts token t + 1
        token = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels.reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)
        counted = (labels != IGNORE_INDEX).sum(dim=1)
        return token.sum(dim=1) / counted.clamp(min=1) + torch.where(counted > 0, 0.0, float("nan"))
    if logits.reshape(len(logits), -1).shape[1] == 1 and targets.numel() == len(targets):
        if not targets.dtype.is_floating_point:
            raise RecordError("one output per example and integer targets: is it a binary classifier? pass "
                              "loss_fn=lambda out, y: binary_cross_entropy_with_logits(out.squeeze(1), y.float(), "
                              "reduction='none') (the default for one output is the squared error of a regression)")
        return (logits.reshape(-1) - targets.reshape(-1).float()) ** 2
    raise RecordError(f"cannot tell a per-example loss from output {tuple(logits.shape)} and targets "
                      f"{tuple(targets.shape)}; pass loss_fn=(output, targets) -> one loss per example")


def _class_signals(logits: Any, targets: Any) -> dict[str, Any] | None:
    """Correctness, logit margin and EL2N from class logits (None when there are no class logits)."""
    import torch

    if logits.dim() != 2 or targets.dim() != 1 or targets.dtype.is_floating_point or logits.shape[1] < 2:
        return None
    logits, targets = logits.float(), targets.long()
    true = logits.gather(1, targets[:, None])[:, 0]
    others = logits.scatter(1, targets[:, None], float("-inf")).max(dim=1).values
    onehot = torch.nn.functional.one_hot(targets, logits.shape[1]).float()
    return {"correct": logits.argmax(dim=1) == targets, "margin": true - others,
            "el2n": (torch.softmax(logits, dim=1) - onehot).norm(dim=1)}


def _to(obj: Any, device: Any, dtype: Any = None) -> Any:
    """``obj`` (a tensor, or lists, tuples and dicts of them) on ``device``; with ``dtype``, its
    floating-point tensors in that dtype (integer tensors such as token ids stay as they are)."""
    if hasattr(obj, "to") and callable(obj.to) and hasattr(obj, "dtype"):
        if dtype is not None and obj.dtype.is_floating_point and obj.dtype != dtype:
            return obj.to(device, dtype=dtype, non_blocking=True)
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device, dtype) for v in obj)
    return obj


def _output_logits(output: Any) -> Any:
    """The logits of a model's output: a tensor, an object with ``.logits`` (Hugging Face), or the
    first element of a tuple."""
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def _split_batch(batch: Any) -> tuple[Any, Any, Any]:
    """``(inputs, targets, ids)`` of a batch: ``(inputs, targets)``, ``(inputs, targets, ids)``, or a
    dict with ``labels`` (and optionally ``ids``), whose other entries are the model's keyword inputs."""
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "ids")}
        return inputs, batch.get("labels"), batch.get("ids")
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return batch[0], batch[1], batch[2] if len(batch) == 3 else None
    shape = f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""
    raise RecordError("a loader must yield (inputs, targets), (inputs, targets, ids) or a dict with 'labels'; "
                      f"got a {type(batch).__name__}{shape}")


def _distributed() -> tuple[int, int]:
    """(rank, world size) of a ``torch.distributed`` job, (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _unordered(loader: Any) -> str | None:
    """Why the examples a loader without ids yields cannot be placed (None: it reads its dataset in
    order, or a ``DistributedSampler(shuffle=False)`` gives this process its share in order)."""
    sampler = getattr(loader, "sampler", None)
    batches = getattr(loader, "batch_sampler", None)
    if batches is not None and getattr(batches, "sampler", sampler) is not sampler:
        return f"its batch_sampler ({type(batches).__name__}) chooses the order"
    name = type(sampler).__name__
    if name == "DistributedSampler":
        return "its DistributedSampler shuffles" if getattr(sampler, "shuffle", True) else None
    if _distributed()[1] > 1:
        return "under torch.distributed each process needs a DistributedSampler(shuffle=False) to know its share"
    if sampler is None or name in ("SequentialSampler", "_InfiniteConstantSampler"):
        return None
    return f"its {name} visits the examples in an order of its own (a shuffling loader)"


def _sampler_positions(loader: Any, n_seen: int) -> np.ndarray | None:
    """The positions a ``DistributedSampler`` gave this process (None: the loader reads in order)."""
    sampler = getattr(loader, "sampler", None)
    if type(sampler).__name__ != "DistributedSampler":
        return None
    return np.fromiter(iter(sampler), dtype=np.int64, count=-1)[:n_seen]


def evaluate(model: Any, loader: Iterable, positions_of: Callable[[Any], np.ndarray] | None = None,
             loss_fn: Callable[[Any, Any], Any] | None = None, forward: Callable[[Any, Any], Any] | None = None,
             device: Any = None) -> dict[str, np.ndarray]:
    """Every example's loss (and, from class logits, its correctness, margin and EL2N) under ``model``
    as it is now: eval mode, no gradients, no autocast and no TF32, in the model's own dtype (fp32 for
    an fp32 model; losses always in fp32); the model is given back in the mode it had. Returns ``positions`` (where each value goes: the batch's ids mapped by
    ``positions_of``, else the loader's order) and the values, as numpy arrays of this process."""
    import torch

    first = next(iter(model.parameters()), None)
    device = device if device is not None else (first.device if first is not None else torch.device("cpu"))
    dtype = first.dtype if first is not None and first.dtype.is_floating_point else torch.float32
    was_training, tf32 = model.training, (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    parts: dict[str, list] = {"positions": [], "loss": [], "correct": [], "margin": [], "el2n": [], "targets": []}
    model.eval()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, enabled=False):
            seen = 0
            for batch in loader:
                inputs, targets, ids = _split_batch(batch)
                if targets is None:
                    keys = f" (its keys: {', '.join(map(str, inputs))})" if isinstance(inputs, Mapping) else ""
                    raise RecordError(f"a batch has no targets: a dict batch needs the key 'labels'{keys}")
                unplaceable = _unordered(loader) if ids is None and seen == 0 else None
                if unplaceable:
                    raise RecordError(f"the loader yields no ids and {unplaceable}, so its losses cannot be "
                                      "placed: give record() loaders that read in order (shuffle=False), or that "
                                      "yield (inputs, targets, ids)")
                # the model's own floating dtype for its inputs (a float64 or bfloat16 model); losses in fp32
                inputs, targets = _to(inputs, device, dtype), _to(targets, device)
                output = forward(model, inputs) if forward else (model(**inputs) if isinstance(inputs, Mapping)
                                                                  else model(inputs))
                logits = _output_logits(output)
                losses = (loss_fn or per_example_loss)(logits, targets).detach().float().reshape(-1)
                if len(losses) != len(targets):
                    raise RecordError(f"the loss function gave {len(losses)} values for a batch of {len(targets)} "
                                      "examples; it must give one loss per example (reduction='none')")
                if ids is not None:
                    parts["positions"].append(positions_of(ids) if positions_of else np.asarray(ids, np.int64))
                parts["loss"].append(losses.cpu().numpy())
                signals = _class_signals(logits, targets) if loss_fn is None else None
                for key in ("correct", "margin", "el2n"):
                    parts[key].append(None if signals is None else signals[key].cpu().numpy())
                class_targets = targets.dim() == 1 and not targets.dtype.is_floating_point
                parts["targets"].append(targets.cpu().numpy() if class_targets else None)
                seen += len(losses)
    finally:
        model.train(was_training)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    if parts["positions"] and len(parts["positions"]) != len(parts["loss"]):
        raise RecordError("some batches carry ids and others do not; a loader yields ids in every batch or in none")
    order = _sampler_positions(loader, seen) if not parts["positions"] else np.concatenate(parts["positions"])
    out = {"positions": np.arange(seen) if order is None else order,
           "loss": np.concatenate(parts["loss"]) if parts["loss"] else np.zeros(0, np.float32)}
    for keys in (("correct", "margin", "el2n"), ("targets",)):
        if parts[keys[0]] and all(c is not None for c in parts[keys[0]]):
            out.update({key: np.concatenate(parts[key]) for key in keys})
    return out


def _first_repeat(values: np.ndarray) -> Any:
    ordered = np.sort(values)
    return ordered[1:][ordered[1:] == ordered[:-1]][0]


def _gathered(part: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Every process's part (a list of one outside ``torch.distributed``)."""
    rank, world = _distributed()
    if world == 1:
        return [part]
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, part)
    return parts


def _assemble(parts: list[dict[str, np.ndarray]], n: int, what: str) -> dict[str, np.ndarray]:
    """One array per signal, by position, from every process's part; every example exactly covered
    (a ``DistributedSampler`` repeats a few to even out the shares: the same values)."""
    keys = [k for k in ("loss", "correct", "margin", "el2n", "targets") if all(k in p for p in parts)]
    out = {k: np.zeros(n, bool if k == "correct" else np.int64 if k == "targets" else np.float32) for k in keys}
    covered = np.zeros(n, bool)
    for part in parts:
        pos = part["positions"]
        if len(parts) == 1 and len(np.unique(pos)) != len(pos):  # (a DistributedSampler pads with repeats)
            raise RecordError(f"the {what} loader yields an example twice (position {int(_first_repeat(pos))}); it "
                              "must yield every example once")
        if pos.size and (pos.min() < 0 or pos.max() >= n):
            raise RecordError(f"the {what} loader yields example {int(pos.max() if pos.max() >= n else pos.min())}, "
                              f"outside the {n} examples the recorder was given")
        covered[pos] = True
        for k in keys:
            out[k][pos] = part[k]
    if not covered.all():
        raise RecordError(f"the {what} loader visited {int(covered.sum())} of the {n} examples the recorder was "
                          f"given (first missing: position {int(np.flatnonzero(~covered)[0])}); it must yield every "
                          "example once (drop_last=False)")
    return out


# ----------------------------------------------------------------------------- the recorder

RECORDING_FORMAT = "cld-recording/1"
PROGRESS = "recording.json"   # what the folder holds: sizes, layout, and the epochs that are complete
SPLIT = "split.npz"           # the groups and ids of the examples (checked when a folder is reopened)
LOSS_FILE = "losses.pickle"
SUMS_FILE = "cld_sums.npz"
SUMS_META = ("dataset", "model_arch", "manual_seed", "num_classes", "collect_precision", "data_path")
SUMS_SPLIT = ("epoch", "tr_lbl", "val_lbl", "train_indices", "val_indices")


def _groups(train: Any, val: Any, n_train: int | None, n_val: int | None) -> tuple[np.ndarray, np.ndarray, list | None]:
    """Integer groups of the training and validation examples, and the groups' names (None when
    the labels were non-negative integers already). No labels: one group, named ``all``."""
    if train is None and val is None:
        if n_train is None or n_val is None:
            raise RecordError("without labels the recorder needs the sizes: pass train_ids and val_ids, or n_train "
                              "and n_val")
        return np.zeros(n_train, np.int64), np.zeros(n_val, np.int64), ["all"]
    if train is None or val is None:
        raise RecordError("give labels for both splits (train_labels and val_labels), or for neither (one group)")
    train, val = (np.asarray(x.cpu() if hasattr(x, "cpu") else x) for x in (train, val))
    if train.ndim != 1 or val.ndim != 1:
        raise RecordError(f"labels must be one per example (1-d), got shapes {train.shape} and {val.shape}")
    if train.dtype.kind in "iu" and val.dtype.kind in "iu":
        for name, lbl in (("train_labels", train), ("val_labels", val)):
            if lbl.size and lbl.min() < 0:
                raise RecordError(f"{name} holds the negative label {int(lbl.min())}")
            if lbl.size and lbl.max() >= MAX_GROUPS:  # memory and files are sized by the largest label
                raise RecordError(f"{name} holds the label {lbl.max()}; integer labels are class numbers below "
                                  f"{MAX_GROUPS:,}: give other groups as strings (names)")
        return train.astype(np.int64), val.astype(np.int64), None
    names = np.unique(np.concatenate([train.astype(str), val.astype(str)]))
    return (np.searchsorted(names, train.astype(str)).astype(np.int64),
            np.searchsorted(names, val.astype(str)).astype(np.int64), names.tolist())


def _ids(ids: Any, n: int, what: str) -> np.ndarray:
    """The examples' ids (default 0..n-1): unique integers or strings, one per example."""
    if ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(ids.cpu() if hasattr(ids, "cpu") else ids)
    if ids.ndim != 1 or len(ids) != n:
        raise RecordError(f"{what} must give one id per example ({n}), got shape {ids.shape}")
    if ids.dtype.kind not in "iuU" and not (ids.dtype.kind == "O" and all(isinstance(i, str) for i in ids)):
        raise RecordError(f"{what} must be integers or strings, got {ids.dtype} values")
    if ids.dtype.kind == "u" and ids.size and ids.max() > np.iinfo(np.int64).max:
        raise RecordError(f"{what} holds {ids.max()}, beyond the int64 range ids are stored in; give them as strings")
    ids = ids.astype(np.int64) if ids.dtype.kind in "iub" else ids.astype(str)
    if len(np.unique(ids)) != n:
        raise RecordError(f"{what} lists an id twice; every example needs its own id")
    return ids


class _Positions:
    """Maps a batch's ids to the examples' positions (columns of the loss file)."""

    def __init__(self, ids: np.ndarray):
        self.identity = ids.dtype.kind == "i" and np.array_equal(ids, np.arange(len(ids)))
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]

    def __call__(self, batch_ids: Any) -> np.ndarray:
        values = np.asarray(batch_ids.cpu() if hasattr(batch_ids, "cpu") else batch_ids)
        values = values.astype(np.int64) if self.sorted.dtype.kind == "i" else values.astype(str)
        if self.identity:
            return values.astype(np.int64)
        found = np.clip(np.searchsorted(self.sorted, values), 0, len(self.sorted) - 1)
        unknown = self.sorted[found] != values
        if unknown.any():
            kind = "integers" if self.sorted.dtype.kind == "i" else "strings"
            raise RecordError(f"a loader yields the id {values[unknown][0].item()!r}, which the recorder was not given "
                              f"(its ids are {kind}, e.g. {self.sorted[0].item()!r})")
        return self.order[found]


class LossRecorder:
    """Every training and validation example's loss after every epoch, recorded into ``folder``.

    Args:
        folder: where the rows, the progress and the loss file go. If it holds rows of the same
            examples already, recording continues after its last whole epoch.
        train_labels, val_labels: each example's class, or any group (task, source; integers or
            strings); CLD ranks every group against its own validation examples. ``None`` for both:
            one group (generative or unlabeled data).
        epochs: how many epochs will be recorded (rows are reserved for them; a resumed folder may
            be given more).
        train_ids, val_ids: each example's stable id (integers or strings; default 0..N-1); the
            loss file, the score file and an exported coreset name examples by them, and loaders
            may yield them as a third element.
        n_train, n_val: the sizes, when there are neither labels nor ids.
        trajectories: ``full`` (every loss of every epoch: CLD and every trajectory baseline) or
            ``sums`` (CLD's running sums only: O(N) memory and disk whatever the epochs).
        name: the run's name in the loss file and the score files (default: the folder's name).
    """

    def __init__(self, folder: str, train_labels: Any = None, val_labels: Any = None, epochs: int | None = None, *,
                 train_ids: Any = None, val_ids: Any = None, n_train: int | None = None, n_val: int | None = None,
                 trajectories: str = "full", name: str | None = None):
        if trajectories not in ("full", "sums"):
            raise RecordError(f"trajectories must be 'full' or 'sums', got {trajectories!r}")
        n_train = len(train_ids) if n_train is None and train_ids is not None else n_train
        n_val = len(val_ids) if n_val is None and val_ids is not None else n_val
        self.tr_lbl, self.val_lbl, self.group_names = _groups(train_labels, val_labels, n_train, n_val)
        self.train_ids = _ids(train_ids, len(self.tr_lbl), "train_ids")
        self.val_ids = _ids(val_ids, len(self.val_lbl), "val_ids")
        if not len(self.tr_lbl) or not len(self.val_lbl):
            raise RecordError("the recorder needs training and validation examples (CLD correlates the training "
                              "losses with the validation losses)")
        self.folder, self.trajectories = os.path.abspath(folder), trajectories
        self.name = _safe_name(name or os.path.basename(self.folder.rstrip(os.sep)) or "recorded")
        self.num_groups = int(max(self.tr_lbl.max(), self.val_lbl.max())) + 1
        # CLD correlates with each group's validation losses: said now, not after training
        check_validation_classes(np.unique(self.tr_lbl), np.bincount(self.val_lbl, minlength=self.num_groups),
                                 self.group_names, "group")
        self.rank = _distributed()[0]
        self.finished, self.layout = False, None
        self.epochs_recorded = 0
        self._positions = (_Positions(self.train_ids), _Positions(self.val_ids))
        self._rows: RowStore | None = None
        self._sums = CLDSums(self.tr_lbl, self.val_lbl, self.num_groups) if trajectories == "sums" else None
        self.epochs = self._reopen(epochs)

    # -- the folder

    def _reopen(self, epochs: int | None) -> int:
        """Check a folder that holds a recording against this one and continue it; returns the epochs."""
        path = os.path.join(self.folder, PROGRESS)
        if not os.path.exists(path):
            if epochs is None or isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
                raise RecordError(f"epochs must be a positive integer (the epochs to record), got {epochs!r}")
            return int(epochs)
        try:
            with open(path) as f:
                progress = json.load(f)
            with np.load(os.path.join(self.folder, SPLIT), allow_pickle=False) as split:
                saved = {key: split[key] for key in split.files}
        except (OSError, ValueError, KeyError) as exc:
            raise RecordError(f"{self.folder} holds a damaged recording ({exc}); record into a new folder") from None
        mine = {"tr_lbl": self.tr_lbl, "val_lbl": self.val_lbl, "train_ids": self.train_ids, "val_ids": self.val_ids}
        for key, value in mine.items():
            if key not in saved or saved[key].shape != value.shape or not np.array_equal(saved[key], value):
                what = ("sizes" if key in saved and saved[key].shape != value.shape else
                        {"tr_lbl": "training labels", "val_lbl": "validation labels"}.get(key, key))
                raise RecordError(f"{self.folder} holds a recording of other examples (its {what} differ from these); "
                                  "record into a new folder, or give the same labels and ids")
        if progress.get("trajectories") != self.trajectories:
            raise RecordError(f"{self.folder} was recorded with trajectories={progress.get('trajectories')!r}, not "
                              f"{self.trajectories!r}")
        self.epochs_recorded, self.layout = int(progress["epochs_recorded"]), progress.get("layout")
        wanted = int(progress["epochs"]) if epochs is None else int(epochs)
        if wanted < self.epochs_recorded:
            raise RecordError(f"{self.folder} holds {self.epochs_recorded} recorded epoch"
                              f"{'s' if self.epochs_recorded != 1 else ''}, more than epochs={wanted}")
        self.epochs = wanted
        if self.epochs_recorded:
            self._open_store(self.epochs_recorded)
        return wanted

    def _open_store(self, done: int) -> None:
        if self._sums is not None:
            if done:
                with np.load(self._sums_state(done), allow_pickle=False) as state:
                    self._sums.restore({key: state[key] for key in CLDSums.STATE})
            return
        layout = {key: (np.float32, len(self.tr_lbl)) for key in ("tr_loss",)}
        layout["val_loss"] = (np.float32, len(self.val_lbl))
        layout.update({key: (SIGNAL_DTYPES[key], len(self.tr_lbl)) for key in self.layout if key in SIGNAL_DTYPES})
        self._rows = RowStore(os.path.join(self.folder, "rows"), self.epochs, layout)
        self._rows.open(done)

    def _sums_state(self, done: int) -> str:
        return os.path.join(self.folder, "rows", f"cld_sums_epoch{done}.npz")

    def _save_progress(self) -> None:
        progress = {"format": RECORDING_FORMAT, "name": self.name, "epochs": self.epochs,
                    "epochs_recorded": self.epochs_recorded, "trajectories": self.trajectories, "layout": self.layout,
                    "n_train": len(self.tr_lbl), "n_val": len(self.val_lbl)}
        atomic_write(os.path.join(self.folder, PROGRESS), lambda f: f.write(json.dumps(progress, indent=1).encode()))

    # -- recording

    def add_epoch(self, train_losses: Any, val_losses: Any, correct: Any = None, margin: Any = None,
                  el2n: Any = None) -> None:
        """Record one epoch from arrays you computed: every training and every validation example's
        loss, in the order of the labels given (and, for the forgetting, AUM and EL2N baselines, each
        training example's correctness, logit margin and EL2N, all three or none)."""
        self._check_room("add_epoch")
        rows = {"tr_loss": self._row(train_losses, len(self.tr_lbl), np.float32, "train_losses", self.train_ids),
                "val_loss": self._row(val_losses, len(self.val_lbl), np.float32, "val_losses", self.val_ids)}
        given = {"tr_correct": correct, "tr_margin": margin, "tr_el2n": el2n}
        if any(v is not None for v in given.values()):
            if any(v is None for v in given.values()):
                raise RecordError("give correct, margin and el2n together (the baselines' signals), or none of them")
            for key, value in given.items():
                rows[key] = signal_row(key, self._row(value, len(self.tr_lbl), np.float64, key[3:], self.train_ids,
                                                      finite=key != "tr_correct"))
        layout = sorted(rows)
        if self.layout is not None and self._sums is None and layout != sorted(self.layout):
            raise RecordError(f"this epoch gives {', '.join(layout)}; the earlier epochs gave {', '.join(self.layout)}")
        if self.rank != 0:  # under torch.distributed the main process writes; the others keep count
            self.epochs_recorded += 1
            return
        self._write(rows, layout)

    def _check_room(self, call: str) -> None:
        if self.finished:
            raise RecordError(f"{call} after finish(): the loss file is written; open a new LossRecorder on the "
                              "folder to record more epochs")
        if self.epochs_recorded >= self.epochs:
            raise RecordError(f"epoch {self.epochs_recorded + 1} is more than the {self.epochs} epochs declared; pass a "
                              "larger epochs= to LossRecorder")

    def _write(self, rows: dict[str, np.ndarray], layout: list[str]) -> None:
        """The epoch's rows on disk, then the progress that counts them (so a kill in between loses
        only this epoch), then older sums states removed."""
        first = self.layout is None
        self.layout = self.layout or layout
        if first:
            os.makedirs(self.folder, exist_ok=True)
            atomic_write(os.path.join(self.folder, SPLIT), lambda f: np.savez(
                f, tr_lbl=self.tr_lbl, val_lbl=self.val_lbl, train_ids=self.train_ids, val_ids=self.val_ids))
        if self._sums is not None:
            self._sums.update(rows["tr_loss"], rows["val_loss"])
            state = self._sums.state()
            atomic_write(self._sums_state(self.epochs_recorded + 1), lambda f: np.savez(f, **state))
        else:
            if self._rows is None:
                self._open_store(self.epochs_recorded)
            self._rows.record(self.epochs_recorded, rows)
            self._rows.flush()
        self.epochs_recorded += 1
        self._save_progress()
        if self._sums is not None and self.epochs_recorded > 1:
            old = self._sums_state(self.epochs_recorded - 1)
            if os.path.exists(old):
                os.remove(old)

    def _row(self, values: Any, n: int, dtype: Any, what: str, ids: np.ndarray, finite: bool = True) -> np.ndarray:
        values = values.detach().cpu().numpy() if hasattr(values, "detach") else values
        row = np.asarray(values)
        if row.ndim != 1 or len(row) != n:
            raise RecordError(f"{what} must hold one value per example ({n}), got shape {row.shape}")
        if row.dtype.kind not in "biuf":
            raise RecordError(f"{what} must hold numbers, got {row.dtype}")
        row = row.astype(dtype)
        if finite and not np.isfinite(row).all():
            bad = int(np.flatnonzero(~np.isfinite(row))[0])
            raise RecordError(f"{what} of epoch {self.epochs_recorded + 1} holds {row[bad]} for example {ids[bad].item()!r}; "
                              "losses must be finite (the run diverged, or an example has no counted token)")
        return row

    def record(self, model: Any, train_loader: Iterable, val_loader: Iterable, *,
               loss_fn: Callable[[Any, Any], Any] | None = None, forward: Callable[[Any, Any], Any] | None = None,
               device: Any = None) -> None:
        """Evaluate every training and validation example under ``model`` as it is now, and record the
        epoch: eval mode, no gradients, no autocast or TF32 (an fp32 model is evaluated in fp32); the
        model is given back in the mode it had.

        Loaders yield ``(inputs, targets)`` in a fixed order (the order of the labels given), or
        ``(inputs, targets, ids)``, or dicts with ``labels`` (the model's keyword inputs besides).
        ``loss_fn(output, targets)`` gives one loss per example (default :func:`per_example_loss`);
        ``forward(model, inputs)`` returns the output of a model whose call is not ``model(inputs)``.
        Under ``torch.distributed`` every process evaluates its share (a ``DistributedSampler``, or
        ids in the batches) and the main process writes the rows by example.
        """
        self._check_room("record")  # before the evaluation pass, not after it
        train = evaluate(model, train_loader, self._positions[0], loss_fn, forward, device)
        val = evaluate(model, val_loader, self._positions[1], loss_fn, forward, device)
        train = _assemble(_gathered(train), len(self.tr_lbl), "training")
        val = _assemble(_gathered(val), len(self.val_lbl), "validation")
        for name, values, labels in (("training", train, self.tr_lbl), ("validation", val, self.val_lbl)):
            if self.group_names is None and "targets" in values and not np.array_equal(values["targets"], labels):
                at = int(np.flatnonzero(values["targets"] != labels)[0])
                raise RecordError(f"the {name} loader's targets differ from the labels given (first at position {at}: "
                                  f"label {labels[at]}, target {values['targets'][at]}): it reads the examples in "
                                  "another order than the labels; give loaders in that order, or that yield ids")
        signals = {k: train[k] for k in ("correct", "margin", "el2n")} if "correct" in train else {}
        self.add_epoch(train["loss"], val["loss"], **signals)
        _barrier()

    def record_checkpoints(self, make_model: Callable[[str], Any], checkpoints: Sequence[str], train_loader: Iterable,
                           val_loader: Iterable, **record_options: Any) -> str:
        """Record one epoch per saved checkpoint, in order, for runs that kept checkpoints but no losses:
        ``make_model(path)`` returns the model with that checkpoint's weights (e.g. ``from_pretrained``
        for a Hugging Face ``checkpoint-*`` folder, :func:`hf_checkpoints` lists them in order). A
        folder that holds some of them already continues after them. Returns :meth:`finish`'s file."""
        checkpoints = list(checkpoints)
        if len(checkpoints) > self.epochs:
            raise RecordError(f"{len(checkpoints)} checkpoints are more than the {self.epochs} epochs declared")
        for path in checkpoints[self.epochs_recorded:]:
            self.record(make_model(path), train_loader, val_loader, **record_options)
        return self.finish()

    def finish(self) -> str:
        """Write the loss file (with ``trajectories='sums'``: the sums file) of the epochs recorded, in
        the format of ``get_loss_values.py``; returns its path, for ``compute_cld_scores.py --loss_path``."""
        if self.epochs_recorded < 3:
            raise RecordError(f"{self.epochs_recorded} epoch(s) recorded; CLD correlates loss changes over at least "
                              "3 epochs")
        done = self.epochs_recorded
        record = {"dataset": self.name, "model_arch": "recorded", "manual_seed": 0, "num_classes": self.num_groups,
                  "config": {"epochs": self.epochs, "trajectories": self.trajectories}, "source": "recorder",
                  "collect_precision": "fp32", "epoch": np.arange(done, dtype=np.int64),
                  "tr_lbl": self.tr_lbl, "val_lbl": self.val_lbl,
                  "train_indices": np.arange(len(self.tr_lbl), dtype=np.int64),
                  "val_indices": np.arange(len(self.tr_lbl), len(self.tr_lbl) + len(self.val_lbl), dtype=np.int64),
                  "train_ids": self.train_ids, "val_ids": self.val_ids, "group_names": self.group_names}
        if self.trajectories == "sums":
            path = os.path.join(self.folder, SUMS_FILE)
            if self.rank == 0:
                write_sums_file(path, {**record, "data_path": ""}, self._sums.state(), SUMS_META, SUMS_SPLIT)
        else:
            path = os.path.join(self.folder, LOSS_FILE)
            if self.rank == 0:
                if self._rows is None:
                    self._open_store(done)
                write_loss_file(path, {**record, **self._rows.arrays(done)})
        _barrier()
        self.finished = True
        return path


def _barrier() -> None:
    """Wait for every process of a ``torch.distributed`` job (nothing outside one)."""
    if _distributed()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def _safe_name(name: str) -> str:
    """A run name that can be part of a file name: letters, digits, ``._-`` (others become ``_``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(name)).strip("._") or "recorded"
    return safe[:100]


def hf_checkpoints(output_dir: str) -> list[str]:
    """The ``checkpoint-<step>`` folders a Hugging Face ``Trainer`` saved in ``output_dir``, in step order."""
    found = [(int(m.group(1)), os.path.join(output_dir, name)) for name in os.listdir(output_dir)
             if (m := re.fullmatch(r"checkpoint-(\d+)", name)) and os.path.isdir(os.path.join(output_dir, name))]
    if not found:
        raise RecordError(f"{output_dir} holds no checkpoint-<step> folders")
    return [path for _, path in sorted(found)]


# ----------------------------------------------------------------------------- framework callbacks
#
# The frameworks' callback base classes cannot be named at the top of this file (it imports only the
# standard library and numpy, so that it can be copied anywhere and imported without torch). So
# TrainerCallback and LightningCallback are functions named like classes: each imports its framework
# when called, builds the subclass of that framework's callback class once (kept in _CALLBACK_CLASSES)
# and returns an instance of it, for which isinstance(cb, transformers.TrainerCallback) (or
# lightning.pytorch.Callback) holds, as the frameworks check.

_CALLBACK_CLASSES: dict[str, type] = {}


def _epoch_is_recorded(recorder: LossRecorder, epochs_done: float | None) -> bool:
    """Whether the epoch that just ended (``epochs_done``, counted from 1) is in the folder already.
    A run resumed from a checkpoint replays the epochs after it; a recorder on the same folder holds
    the epochs up to its kill, and recording one of them again would shift every later row."""
    return epochs_done is not None and int(np.floor(float(epochs_done) + 1e-6)) <= recorder.epochs_recorded


def _finish_if_enough(recorder: LossRecorder) -> str | None:
    """The loss file at the end of training, or None (with a warning) when fewer than 3 epochs were
    recorded: a short run (a smoke test, ``max_steps`` within an epoch) is no error of the training,
    so the callback must not fail it, but there is no CLD to write."""
    import warnings

    if recorder.epochs_recorded < 3:
        warnings.warn(f"cld_recorder: {recorder.epochs_recorded} epoch(s) recorded in {recorder.folder}; CLD needs "
                      "at least 3, so no loss file was written", RuntimeWarning, stacklevel=3)
        return None
    return recorder.finish()


def _hf_dataset(given: Any, loader: Any, reference: Any) -> Any:
    """The dataset to evaluate: the one given, else the one the Trainer's loader reads (unwrapped from
    the shard that gives each process a part of an iterable dataset, since the recorder gathers the
    whole). A Hugging Face ``datasets.Dataset`` given here keeps only the columns of the Trainer's
    training set (``reference``), which the Trainer stripped to the model's inputs before collating."""
    dataset = given if given is not None else getattr(loader, "dataset", None)
    if type(dataset).__name__ == "IterableDatasetShard":
        dataset = dataset.dataset
    columns = getattr(reference, "column_names", None)
    if given is not None and columns is not None and hasattr(dataset, "remove_columns"):
        extra = [c for c in dataset.column_names if c not in columns]
        dataset = dataset.remove_columns(extra) if extra else dataset
    return dataset


def _hf_loaders(cb: Any, args: Any, train_dataloader: Any, eval_dataloader: Any) -> tuple[Any, Any]:
    """Non-shuffled loaders over the training and evaluation sets, through the Trainer's collator (the
    ``collate_fn`` of its loaders: padding, the removal of columns the model does not take), at the
    evaluation batch size; under ``torch.distributed`` each process reads its share
    (``DistributedSampler(shuffle=False)``), and the recorder gathers them."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

    collate = next((getattr(d, "collate_fn", None) for d in (train_dataloader, eval_dataloader)
                    if getattr(d, "collate_fn", None) is not None), None)
    if collate is None:
        from transformers import default_data_collator as collate
    ref = getattr(train_dataloader, "dataset", None)
    train_set = _hf_dataset(cb.train_dataset, train_dataloader, ref)
    eval_set = _hf_dataset(cb.eval_dataset, eval_dataloader, ref)
    if train_set is None or eval_set is None:
        which = "train_dataset" if train_set is None else "eval_dataset"
        raise RecordError(f"TrainerCallback: no {which} to record; pass {which}= to TrainerCallback (the Trainer "
                          "builds its evaluation loader only when it first evaluates, after the first epoch ends)")
    size = cb.batch_size or args.per_device_eval_batch_size
    loaders = []
    for dataset in (train_set, eval_set):
        sampler = None
        if _distributed()[1] > 1 and not isinstance(dataset, IterableDataset):
            sampler = DistributedSampler(dataset, shuffle=False)
        loaders.append(DataLoader(dataset, batch_size=size, shuffle=False, sampler=sampler, collate_fn=collate,
                                  num_workers=args.dataloader_num_workers, drop_last=False,
                                  pin_memory=bool(args.dataloader_pin_memory and torch.cuda.is_available())))
    return loaders[0], loaders[1]


def _hf_callback_class() -> type:
    """The ``transformers.TrainerCallback`` subclass (built once, on first use)."""
    if "transformers" in _CALLBACK_CLASSES:
        return _CALLBACK_CLASSES["transformers"]
    try:
        import transformers
    except ImportError:
        raise ImportError("TrainerCallback needs Hugging Face transformers (pip install transformers)") from None

    class CLDTrainerCallback(transformers.TrainerCallback):
        """Records every example's loss at each epoch end of a ``transformers.Trainer``; see
        :func:`TrainerCallback`."""

        def __init__(self, recorder: LossRecorder, train_dataset: Any = None, eval_dataset: Any = None,
                     batch_size: int | None = None):
            self.recorder, self.train_dataset, self.eval_dataset = recorder, train_dataset, eval_dataset
            self.batch_size, self.loss_file = batch_size, None

        def on_epoch_end(self, args, state, control, model=None, train_dataloader=None, eval_dataloader=None,
                         **kwargs):
            if _epoch_is_recorded(self.recorder, state.epoch):
                return
            train_loader, val_loader = _hf_loaders(self, args, train_dataloader, eval_dataloader)
            self.recorder.record(model, train_loader, val_loader, device=args.device)

        def on_train_end(self, args, state, control, **kwargs):
            self.loss_file = self.loss_file or _finish_if_enough(self.recorder)

    _CALLBACK_CLASSES["transformers"] = CLDTrainerCallback
    return CLDTrainerCallback


def TrainerCallback(recorder: LossRecorder, train_dataset: Any = None, eval_dataset: Any = None,
                    batch_size: int | None = None) -> Any:
    """A Hugging Face ``transformers.TrainerCallback`` that records the epochs of a ``Trainer`` run::

        cb = TrainerCallback(LossRecorder("runs/sst2", train_labels, val_labels, epochs=E),
                             eval_dataset=val_set)
        Trainer(model, args, train_dataset=train_set, callbacks=[cb]).train()
        cb.loss_file                      # for compute_cld_scores.py --loss_path (None under 3 epochs)

    At each epoch end it evaluates every training and evaluation example through the Trainer's own
    model, collator and device, in order (not the Trainer's shuffled training loader), at
    ``batch_size`` (default ``args.per_device_eval_batch_size``), and records the epoch; batches are
    dicts with ``labels``, so a causal language model's loss averages its tokens not labelled -100
    (a prompt masked out counts for nothing). ``train_dataset`` and ``eval_dataset`` default to the
    datasets of the Trainer's loaders; the Trainer makes its evaluation loader only when it first
    evaluates, after the first epoch ends, so pass ``eval_dataset`` unless ``trainer.evaluate()`` ran
    before training. Their order is the recorder's (labels, ids). At train end it writes the loss
    file when at least 3 epochs were recorded; ``loss_file`` keeps its path. An epoch the folder holds
    already (a run resumed from a checkpoint) is not recorded twice.

    A function named like a class, so that this file imports ``transformers`` only when it is used:
    it returns an instance of a subclass of ``transformers.TrainerCallback``.
    """
    return _hf_callback_class()(recorder, train_dataset, eval_dataset, batch_size)


def _lightning() -> Any:
    """``lightning.pytorch``, or ``pytorch_lightning`` where only that is installed (or only that is
    imported already: the two packages' Trainers each accept only their own Callback class)."""
    import sys

    if "pytorch_lightning" in sys.modules and "lightning.pytorch" not in sys.modules:
        return sys.modules["pytorch_lightning"]
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            raise ImportError("LightningCallback needs Lightning (pip install lightning)") from None
    return pl


def _lightning_callback_class() -> type:
    """The Lightning ``Callback`` subclass of the installed package (built once per package)."""
    pl = _lightning()
    if pl.__name__ in _CALLBACK_CLASSES:
        return _CALLBACK_CLASSES[pl.__name__]

    class CLDLightningCallback(pl.Callback):
        """Records every example's loss at each training epoch end of a Lightning ``Trainer``; see
        :func:`LightningCallback`."""

        def __init__(self, recorder: LossRecorder, train_loader: Iterable, val_loader: Iterable,
                     loss_fn: Callable[[Any, Any], Any] | None = None,
                     forward: Callable[[Any, Any], Any] | None = None):
            self.recorder, self.train_loader, self.val_loader = recorder, train_loader, val_loader
            self.loss_fn, self.forward, self.loss_file = loss_fn, forward, None

        def on_train_epoch_end(self, trainer, pl_module):
            if _epoch_is_recorded(self.recorder, trainer.current_epoch + 1):  # current_epoch: from 0, until now
                return
            self.recorder.record(pl_module, self.train_loader, self.val_loader, loss_fn=self.loss_fn,
                                 forward=self.forward, device=pl_module.device)

        def on_train_end(self, trainer, pl_module):
            self.loss_file = self.loss_file or _finish_if_enough(self.recorder)

    _CALLBACK_CLASSES[pl.__name__] = CLDLightningCallback
    return CLDLightningCallback


def LightningCallback(recorder: LossRecorder, train_loader: Iterable, val_loader: Iterable,
                      loss_fn: Callable[[Any, Any], Any] | None = None,
                      forward: Callable[[Any, Any], Any] | None = None) -> Any:
    """A Lightning ``Callback`` that records the epochs of a ``Trainer.fit`` run::

        cb = LightningCallback(LossRecorder("runs/tab", y_train, y_val, epochs=E), train_loader, val_loader)
        lightning.pytorch.Trainer(max_epochs=E, callbacks=[cb]).fit(module, fit_loader)
        cb.loss_file                      # for compute_cld_scores.py --loss_path (None under 3 epochs)

    At each training epoch end it evaluates every example of ``train_loader`` and ``val_loader``
    (not shuffled, in the recorder's order; the loaders of :meth:`LossRecorder.record`) through the
    module as it is (``pl_module(inputs)``, or ``forward(pl_module, inputs)``) on the module's device,
    and records the epoch; at train end it writes the loss file when at least 3 epochs were recorded
    (``loss_file`` keeps its path). An epoch the folder holds already (a resumed fit) is not recorded
    twice.

    A function named like a class, so that this file imports Lightning only when it is used: it
    returns an instance of a subclass of ``lightning.pytorch.Callback`` (of
    ``pytorch_lightning.Callback`` where only that package is installed or imported).
    """
    return _lightning_callback_class()(recorder, train_loader, val_loader, loss_fn, forward)
