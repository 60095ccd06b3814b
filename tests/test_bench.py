"""The training benchmark (bench/bench_training.py) and the properties of the fast path it relies on:
bf16 agrees with fp32 to bf16 tolerance, and a compiled Trainer compiles nothing after epoch 1."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch._dynamo
import torch.nn as nn
from torch._dynamo.utils import counters

from bench import bench_training
from utils.cli.entry import run_cli
from bench.fake_cifar import write_fake_cifar
from conftest import REPO
from utils.data.batches import TensorBatches
from utils.data.datasets import ArrayDataset, DATASETS
from utils.errors import UserError
from utils.train.device import CompileSpec, resolve_compile
from utils.train.engine import Trainer, build_optimizer
from utils.train.options import Recipe

CPU = torch.device("cpu")


def test_small_bench_runs_and_prints_the_table(tmp_path):
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench_training.py"), "--small",
                           "--workdir", str(tmp_path)], cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("== training benchmark"))
    header = lines[start + 1].split()
    assert tuple(header) == bench_training.COLUMNS
    rows = [dict(zip(header, line.split())) for line in lines[start + 2:start + 4]]
    assert [r["stage"] for r in rows] == ["1", "3"]
    # 10 classes x 16 images: stage 1 holds 10% (2 per class) out for validation, stage 3 takes 10% (2 per class).
    assert int(rows[0]["train_n"]) == 140 and int(rows[1]["train_n"]) == 20
    for r in rows:
        assert (r["device"], r["precision"], r["compile"], r["epochs"], r["target_s"], r["status"]) == \
            ("cpu", "fp32", "off", "2", "-", "-")
        seconds_of = {k: float(r[k]) for k in ("train_s", "test_s", "collect_s", "epoch_s", "first_s", "warmup_s", "wall_s")}
        assert seconds_of["train_s"] > 0 and seconds_of["test_s"] > 0 and seconds_of["wall_s"] > 0
        assert seconds_of["epoch_s"] == pytest.approx(seconds_of["train_s"] + seconds_of["test_s"] + seconds_of["collect_s"], abs=2e-3)
        assert seconds_of["warmup_s"] == pytest.approx(seconds_of["first_s"] - seconds_of["epoch_s"], abs=2e-3)
    assert float(rows[0]["collect_s"]) > 0 and float(rows[1]["collect_s"]) == 0  # stage 3 records no losses
    assert "paper code, one H200: stage-1 epoch 7.25 s" in proc.stdout
    # Every output went to the work folder (the dataset included), none to the working directory.
    assert sorted(os.listdir(tmp_path)) == ["data", "stage1", "stage3"]
    assert os.listdir(tmp_path / "stage1" / "scores") and os.listdir(tmp_path / "stage3" / "results")
    print(f"bench --small took {seconds:.1f} s")


def test_bench_rejects_bad_flags(capsys):
    assert run_cli(bench_training.main, ["--stages", "2"]) == 2
    assert "unknown --stages '2'; choose one of 1, 3" in capsys.readouterr().err
    assert run_cli(bench_training.main, ["--small", "--compile", "fastest"]) == 2
    assert "unknown --compile 'fastest'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_fake_cifar(str(root), "CIFAR100", per_class=12, test_per_class=2, num_classes=5)
    return str(root)


def test_bf16_losses_agree_with_fp32(tiny_cifar, tmp_path):
    # lr 0.01: at the paper's 0.1, three steps on 50 images blow the tiny model up (losses in the
    # thousands), and two runs then differ by chaos, not by precision.
    result = bench_training.compare_precision(tiny_cifar, str(tmp_path), model_arch="resnet20", device="cpu",
                                              batch_size=16, test_batch_size=64, learning_rate=0.01)
    same, one = result["same_weights"], result["one_epoch"]
    # The same weights under bf16 vs fp32 autocast: every example within |d| <= 0.01 + 0.02 max|z|.
    assert same["n"] == 50 and same["worst"] <= 1.0, same
    assert same["mean_rel"] < 1e-2 and same["corr"] > 0.999, same
    # One epoch trained each way from the same start and batches.
    assert one["mean_loss_rel"] <= bench_training.ONE_EPOCH_MEAN_RTOL and one["corr"] >= bench_training.ONE_EPOCH_MIN_CORR, one
    assert result["ok"]
    # bf16 really ran in bf16: the losses differ (an unapplied autocast would make them equal).
    assert same["max_abs"] > 0


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def _epochs(compile, epochs: int, after_first=None):
    """Train/evaluate a tiny model for a few epochs; batches of 32 with partial last batches."""
    rng = np.random.default_rng(0)
    info = DATASETS["CIFAR10"]
    train = TensorBatches(ArrayDataset(rng.integers(0, 256, (90, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 90)),
                          info, CPU)
    test = TensorBatches(ArrayDataset(rng.integers(0, 256, (37, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 37)),
                         info, CPU)
    model = _tiny_net()
    trainer = Trainer(model, build_optimizer(model, Recipe(), CPU), CPU, "fp32", compile=compile)
    history = []
    for epoch in range(epochs):
        fit = trainer.train_epoch(train.train_epoch(np.arange(90), 32, seed=1, epoch=epoch))  # 32, 32, 26
        split = trainer.evaluate(train.eval_batches(np.arange(70), 32), 70, signals=True)  # 32, 32, 6
        held = trainer.evaluate(test.eval_batches(np.arange(37), 32), 37)  # 32, 5
        history.append((fit, {k: v.clone() for k, v in split.items()}, held["loss"].clone()))
        if epoch == 0 and after_first is not None:
            after_first()
    return history


def test_compiled_trainer_compiles_nothing_after_the_first_epoch():
    torch._dynamo.reset()
    counters.clear()
    seen = {}

    def snapshot():
        seen["frames"] = counters["frames"]["total"]
        seen["graphs"] = counters["stats"]["unique_graphs"]

    compiled = _epochs("aot_eager", 3, after_first=snapshot)
    # Epoch 1 compiles the training step for full and for the last, partial batch, and one
    # evaluation graph (short batches are padded to it); epochs 2 and 3 reuse them.
    assert seen["graphs"] == 3, dict(counters["stats"])
    assert counters["frames"]["total"] == seen["frames"] and counters["stats"]["unique_graphs"] == seen["graphs"]
    assert not counters["recompiles"] and not counters["graph_break"], (dict(counters["recompiles"]), dict(counters["graph_break"]))
    # The compiled path computes what the eager one does (aot_eager runs the same kernels).
    eager = _epochs(False, 3)
    for (fit_c, split_c, held_c), (fit_e, split_e, held_e) in zip(compiled, eager):
        assert fit_c == pytest.approx(fit_e, rel=1e-5)
        for key in ("loss", "margin", "el2n"):
            torch.testing.assert_close(split_c[key], split_e[key], rtol=1e-5, atol=1e-5)
        assert torch.equal(split_c["correct"], split_e["correct"])
        torch.testing.assert_close(held_c, held_e, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_compile_flag_resolution():
    cuda = torch.device("cuda")
    assert resolve_compile(False, CPU) is None and resolve_compile("off", CPU) is None and resolve_compile(0, CPU) is None
    assert resolve_compile(True, cuda) == CompileSpec("inductor", "reduce-overhead")
    assert resolve_compile("auto", cuda, distributed=True) == CompileSpec("inductor", "default")
    assert resolve_compile(True, CPU) == CompileSpec("inductor", "default")
    assert resolve_compile("max-autotune-no-cudagraphs", cuda) == CompileSpec("inductor", "max-autotune-no-cudagraphs")
    assert resolve_compile("aot_eager", CPU) == CompileSpec("aot_eager", None)
    assert resolve_compile("reduce-overhead", cuda).cudagraphs and not resolve_compile("default", cuda).cudagraphs
    with pytest.raises(UserError, match="unknown compile setting"):
        resolve_compile("fastest", CPU)


def test_batches_and_padded_eval_batches_are_channels_last():
    rng = np.random.default_rng(1)
    src = TensorBatches(ArrayDataset(rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 10)),
                        DATASETS["CIFAR10"], CPU)
    train_x, _ = next(src.train_epoch(np.arange(10), 4, seed=0, epoch=0))
    eval_x, eval_y, _ = next(src.eval_batches(np.arange(10), 4))
    for x in (train_x, eval_x):
        assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    from utils.train.engine import _pad_rows

    padded = _pad_rows(eval_x, 7)
    assert padded.shape == (7, 3, 32, 32) and padded.stride() == torch.empty(7, 3, 32, 32).to(
        memory_format=torch.channels_last).stride()
    assert torch.equal(padded[:4], eval_x) and not padded[4:].any()
    assert torch.equal(_pad_rows(eval_y, 7)[:4], eval_y)
