"""torchrun + DistributedDataParallel helpers (never DataParallel).

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them a script runs as one process and
every helper here is the identity. NCCL serves CUDA, gloo the CPU.

A process that stops on an error while the others go on to a collective leaves them waiting for
it until the collective times out (and, across nodes, torchrun does not always end them sooner).
Work that can fail on some processes only (reading or writing files, a download) therefore runs
inside :func:`fail_together`, which makes every process raise when any one of them did.
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from utils.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes; returns the process's place and device.

    On CUDA each process drives the GPU ``cuda:LOCAL_RANK``.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} GPUs on this node; "
                            "lower --nproc_per_node")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_quiesce_before_exit)
    return info, device


def _quiesce_before_exit() -> None:
    """Give the backend's worker threads the GIL before the interpreter shuts down.

    A gloo worker thread releases each finished collective's tensors after the caller already has
    the result, and releasing a tensor that Python let go of takes the GIL. If the interpreter is
    finalising by then, the thread is killed inside a C++ destructor and the process aborts
    (SIGABRT, "terminate called without an active exception") after a successful run; a process
    group that DDP used outlives ``destroy_process_group``, so its threads are still there.
    Sleeping releases the GIL so that they finish first.
    """
    gc.collect()
    time.sleep(0.1)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def merge_by_slot(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Combine per-example results that each rank wrote into its own slots, every example once.

    The evaluation shards pad like DistributedSampler: rank r handles positions r, r+W, r+2W, ...
    and the padding repeats positions from the start. Position i therefore has exactly one owner,
    rank ``i % W``; every rank zeroes what it does not own and a sum restores the full array
    exactly (x + 0 == x, so no rounding).
    """
    if not info.enabled:
        return values
    owned = (torch.arange(len(values), device=values.device) % info.world) == info.rank
    if values.dtype == torch.bool:
        return all_reduce_sum((values & owned).to(torch.int32)).bool()
    return all_reduce_sum(torch.where(owned, values, torch.zeros_like(values)))


def agree(flag: bool) -> bool:
    """The main process's ``flag``, on every process (a decision only the main process can make)."""
    if not _group_active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.broadcast(value, src=0)
    return bool(value.item())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Make batch-norm running statistics identical on every rank (rank 0's) before evaluation.

    DDP broadcasts buffers at the start of each forward in training, so after the last step of an
    epoch the ranks' running statistics differ by that step's update; evaluation must not.
    """
    if dist.is_available() and dist.is_initialized():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _group_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def fail_together() -> Iterator[None]:
    """Run a block on every process; if it raised on any process, raise on all of them.

    The process that failed re-raises its own exception; the others raise a :class:`UserError`
    carrying the first failure's message (a user error) or a ``RuntimeError`` naming the process
    (anything else). Every process must enter the block (it ends in one collective, so it is also
    a barrier). Without a process group it is a plain block.
    """
    if not _group_active():
        yield
        return
    error: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 -- re-raised below, after the others have heard of it
        error = exc
    report = None if error is None else (isinstance(error, UserError), str(error) or type(error).__name__)
    reports: list = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)
    if error is not None:
        raise error
    failed = [(rank, r) for rank, r in enumerate(reports) if r is not None]
    if failed:
        rank, (is_user, message) = failed[0]
        if is_user:
            raise UserError(message)
        raise RuntimeError(f"process {rank} of the job failed: {message}")


def in_turn(info: DistInfo, work: Callable[[], T]) -> T:
    """``work()`` on every process: the main process first, then the first process of every other
    node, then the rest; a failure anywhere stops every process alike.

    For work that fills a cache on disk (a dataset download): the first process on a filesystem
    fills it and the others find it filled, instead of several processes writing the same files.
    """
    if not info.enabled:
        return work()
    result = None
    for turn in (info.rank == 0, info.rank != 0 and info.local_rank == 0, info.local_rank != 0):
        with fail_together():
            if turn:
                result = work()
    return result
