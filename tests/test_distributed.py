"""Stage 1 under DistributedDataParallel on the CPU (gloo, 2 processes): per-example results are
gathered by dataset index with every example once, rank 0 alone writes, resume works with the same
number of processes and is refused with another; stage 3 likewise. 25-60 s on 2 CPU cores."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import get_loss_values
import models
import train_on_coresets
from conftest import assert_user_error
from fakedata import write_fake_cifar
from utils.data.batches import TensorBatches, shard_positions
from utils.data.datasets import load_dataset
from utils.data.splits import stratified_split
from utils.errors import UserError
from utils.files.losses import load_losses, load_split
from utils.files.scores import save_scores
from utils.train import distributed
from utils.train.engine import example_signals

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = 2
NAME = "CIFAR10_resnet20_seed7"
# 5 classes x 10 examples with val ratio 0.1 -> 45 training (odd: the shards pad) and 5 validation
# examples; 15 test examples. Batches of 8 leave partial batches everywhere.
FLAGS = dict(dataset="CIFAR10", model_arch="resnet20", batch_size=8, test_batch_size=8, learning_rate=0.05,
             schedule=[1], manual_seed=7, device="cpu", precision="fp32", download=False, workers=0)
EXPECTED_FILES = {f"Data/Checkpoint/{NAME}_last.pth", f"Data/Checkpoint/{NAME}_best.pth", f"Logs/{NAME}.csv",
                  f"Scores/{NAME}_losses.pickle", f"Splits/{NAME}_split.pkl",
                  *(f"Data/Checkpoint/{NAME}_trajectories/{key}.npy"
                    for key in ("tr_loss", "val_loss", "tr_correct", "tr_margin", "tr_el2n"))}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _files_under(folder: str) -> set[str]:
    return {os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
            for root, _, names in os.walk(folder) for f in names}


def _worker(rank: int, root: str, data_path: str, ports: list[int]) -> None:
    """One process of the job. Each rank works in its own folder with relative output paths, so a
    file written by rank 1 would land in rank1/ (which must stay empty)."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    home = os.path.join(root, f"rank{rank}")
    try:
        # The helpers themselves: merge_by_slot on an odd length, fail_together.
        os.environ["MASTER_PORT"] = str(ports[0])
        info, _ = distributed.setup(torch.device("cpu"))
        n = 7
        values = torch.full((n,), -1.0)
        for p in torch.from_numpy(shard_positions(n, rank, WORLD)):
            values[p] = float(p) + 0.5
        assert torch.equal(distributed.merge_by_slot(values, info), torch.arange(n) + 0.5)
        try:
            with distributed.fail_together():
                if rank == 1:
                    raise UserError("only rank 1 saw this")
            raise AssertionError("fail_together let rank %d go on" % rank)
        except UserError as exc:
            assert str(exc) == "only rank 1 saw this"
        distributed.teardown()

        # An existing output that only rank 0 can see: every rank must stop with rank 0's error.
        clash = os.path.join(home, "clash")
        os.makedirs(clash, exist_ok=True)
        os.chdir(clash)
        os.environ["MASTER_PORT"] = str(ports[1])
        try:
            get_loss_values.main(data_path=data_path, epochs=1, **FLAGS)
            raise AssertionError("an existing loss file was not refused")
        except UserError as exc:
            assert "already exists" in str(exc), str(exc)
        if dist.is_initialized():
            dist.destroy_process_group()

        for port, sub, extra in [(ports[2], "full", dict(epochs=2)), (ports[3], "part", dict(epochs=1)),
                                 (ports[4], "part", dict(epochs=2, resume_path=os.path.join(
                                     root, "rank0", "part", "Data", "Checkpoint", f"{NAME}_last.pth")))]:
            os.makedirs(os.path.join(home, sub), exist_ok=True)
            os.chdir(os.path.join(home, sub))
            os.environ["MASTER_PORT"] = str(port)
            get_loss_values.main(data_path=data_path, **extra, **FLAGS)

        # Stage 3 on a coreset of 25 (odd) examples: a run, and a run stopped after one epoch and resumed.
        ckpt = os.path.join(root, "rank0", "core_part", "Data", "Checkpoint", "core_last.pth")
        for port, sub, extra in [(ports[5], "core_full", dict(epochs=2)), (ports[6], "core_part", dict(epochs=1)),
                                 (ports[7], "core_part", dict(epochs=2, resume_path=ckpt))]:
            os.makedirs(os.path.join(home, sub), exist_ok=True)
            os.chdir(os.path.join(home, sub))
            os.environ["MASTER_PORT"] = str(port)
            train_on_coresets.main(score_path=os.path.join(root, "scores.pickle"), samples_per_class=5,
                                   name="core", data_path=data_path, **extra, **FLAGS)
    except BaseException:
        traceback.print_exc()
        raise


def _spawn(fn, args, timeout: float) -> None:
    """mp.spawn with a deadline, so that a hang fails the test instead of stalling it."""
    ctx = mp.spawn(fn, args=args, nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"distributed workers still running after {timeout:.0f} s (a hang)")


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory) -> str:
    data_path = str(tmp_path_factory.mktemp("data"))
    write_fake_cifar(data_path, "CIFAR10", per_class=10, test_per_class=3, num_classes=5, seed=3)
    return data_path


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, fake_cifar) -> str:
    root = str(tmp_path_factory.mktemp("ddp"))
    for rank in range(WORLD):
        os.makedirs(os.path.join(root, f"rank{rank}"))
    # Pre-existing loss file that only rank 0's folder holds.
    os.makedirs(os.path.join(root, "rank0", "clash", "Scores"))
    with open(os.path.join(root, "rank0", "clash", "Scores", f"{NAME}_losses.pickle"), "wb") as f:
        f.write(b"not mine")
    # A stage-2 score file for stage 3 (any ranking will do): classes' training examples, best first.
    labels = load_dataset("CIFAR10", fake_cifar, download=False).train_labels
    train_idx, _ = stratified_split(labels, 0.1, 7, 10)
    by_class = {int(c): train_idx[labels[train_idx] == c] for c in np.unique(labels)}
    save_scores(os.path.join(root, "scores.pickle"), {
        "method": "cld", "dataset": "CIFAR10", "model_arch": "resnet20", "manual_seed": 7, "num_classes": 10,
        "indices": by_class, "scores": {c: -np.arange(len(v), dtype=np.float64) for c, v in by_class.items()}})
    _spawn(_worker, (root, fake_cifar, _free_ports(8)), timeout=200)
    return root


def test_losses_gathered_by_index_match_one_process(ddp_run, fake_cifar) -> None:
    run = os.path.join(ddp_run, "rank0", "full")
    losses = load_losses(os.path.join(run, "Scores", f"{NAME}_losses.pickle"))
    data = load_dataset("CIFAR10", fake_cifar, download=False)
    labels = data.train_labels
    train_idx, val_idx = stratified_split(labels, 0.1, 7, data.num_classes)
    assert len(train_idx) % WORLD == 1  # the padded case
    np.testing.assert_array_equal(losses["train_indices"], train_idx)
    np.testing.assert_array_equal(losses["val_indices"], val_idx)
    np.testing.assert_array_equal(losses["tr_lbl"], labels[train_idx])
    np.testing.assert_array_equal(losses["val_lbl"], labels[val_idx])
    split = load_split(os.path.join(run, "Splits", f"{NAME}_split.pkl"))
    np.testing.assert_array_equal(split["train_indices"], train_idx)
    assert losses["tr_loss"].shape == (2, len(train_idx)) and losses["config"]["epochs"] == 2

    # Recompute the last epoch's per-example results in this one process from the final weights.
    state = torch.load(os.path.join(run, "Data", "Checkpoint", f"{NAME}_last.pth"), weights_only=True)
    assert state["identity"]["world_size"] == WORLD
    model = models.get_model("resnet20", 10)
    model.load_state_dict(state["model"])
    model.eval()
    source = TensorBatches(data.train, data.info, torch.device("cpu"))
    for indices, key, signals in [(train_idx, "tr", True), (val_idx, "val", False)]:
        parts = []
        with torch.no_grad():
            for x, y, _ in source.eval_batches(indices, 16):
                parts.append(example_signals(model(x), y, signals))
        ref = {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}
        np.testing.assert_allclose(losses[f"{key}_loss"][-1], ref["loss"], rtol=1e-5, atol=1e-5)
        if signals:
            np.testing.assert_array_equal(losses["tr_correct"][-1], ref["correct"])
            np.testing.assert_allclose(losses["tr_margin"][-1].astype(np.float32), ref["margin"], rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(losses["tr_el2n"][-1].astype(np.float32), ref["el2n"], rtol=2e-3, atol=2e-3)


def test_only_rank0_writes(ddp_run) -> None:
    # Rank 1 ran in these folders with the same relative output paths: no file, no folder.
    for sub in ("clash", "full", "part", "core_full", "core_part"):
        assert os.listdir(os.path.join(ddp_run, "rank1", sub)) == [], sub
    assert _files_under(os.path.join(ddp_run, "rank0", "full")) == EXPECTED_FILES  # no stray temporary files
    assert _files_under(os.path.join(ddp_run, "rank0", "clash")) == {f"Scores/{NAME}_losses.pickle"}
    assert _files_under(os.path.join(ddp_run, "rank0", "core_full")) >= {
        "Data/Checkpoint/core_last.pth", "Logs/core.csv", "Results/runs/core.json", "Results/results.csv"}


def test_resume_under_ddp_equals_uninterrupted_run(ddp_run) -> None:
    full = load_losses(os.path.join(ddp_run, "rank0", "full", "Scores", f"{NAME}_losses.pickle"))
    part = load_losses(os.path.join(ddp_run, "rank0", "part", "Scores", f"{NAME}_losses.pickle"))
    for key in ("tr_loss", "val_loss", "tr_correct", "tr_margin", "tr_el2n"):
        np.testing.assert_array_equal(part[key], full[key], err_msg=key)


def _script(args: list[str], cwd: str, timeout: float = 150) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _cli_flags(data_path: str, out: str, epochs: int) -> list[str]:
    flags = dict(FLAGS, data_path=data_path, epochs=epochs, schedule="[1]",
                 checkpoint_path=os.path.join(out, "ckpt"), logpath=os.path.join(out, "logs"),
                 scores_dir=os.path.join(out, "scores"), splits_dir=os.path.join(out, "splits"))
    return [f"--{k}={v}" for k, v in flags.items()]


def test_torchrun_then_resume_with_another_world_size_is_refused(tmp_path, fake_cifar) -> None:
    out = str(tmp_path)
    script = os.path.join(REPO, "get_loss_values.py")
    done = _script(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}", script,
                    *_cli_flags(fake_cifar, out, epochs=1)], cwd=out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    losses = load_losses(os.path.join(out, "scores", f"{NAME}_losses.pickle"))
    assert losses["tr_loss"].shape == (1, 45) and np.isfinite(losses["tr_loss"]).all()
    assert done.stdout.count("epoch 1/1") == 1  # rank 0 alone prints

    last = os.path.join(out, "ckpt", f"{NAME}_last.pth")
    refused = _script([script, *_cli_flags(fake_cifar, out, epochs=2), f"--resume_path={last}"], cwd=out)
    assert_user_error(refused, "world size 2", "world size 1", "resume it with 2 processes")


def test_stage3_under_ddp_resumes_exactly(ddp_run) -> None:
    def result(sub):
        with open(os.path.join(ddp_run, "rank0", sub, "Results", "runs", "core.json")) as f:
            return json.load(f)

    def log(sub):
        with open(os.path.join(ddp_run, "rank0", sub, "Logs", "core.csv")) as f:
            return [{k: v for k, v in row.items() if not k.startswith("seconds")} for row in csv.DictReader(f)]

    full, part = result("core_full"), result("core_part")
    assert full["coreset_size"] == 25 and full["epochs"] == 2
    assert (part["final_test_acc"], part["best_test_acc"]) == (full["final_test_acc"], full["best_test_acc"])
    assert log("core_part") == log("core_full")
    state = torch.load(os.path.join(ddp_run, "rank0", "core_full", "Data", "Checkpoint", "core_last.pth"),
                       weights_only=True)
    assert state["identity"]["world_size"] == WORLD
