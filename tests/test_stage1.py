"""Stage 1 (get_loss_values.py): the loss file, exact resume, evaluation-only, bad input."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch

import get_loss_values
import models
from conftest import FAST, assert_user_error, out_dirs, run_script
from utils.data.batches import TensorBatches
from utils.data.datasets import load_dataset
from utils.errors import UserError
from utils.files.checkpoint import load_checkpoint
from utils.files.losses import load_losses, load_split
from utils.train.engine import example_signals


def test_loss_file_has_the_documented_layout(stage1_run, cifar100_root):
    path, base = stage1_run
    assert os.path.basename(path) == "CIFAR100_resnet20_seed1234_losses.pickle"
    d = load_losses(path)
    assert d["format"] == "cld-losses/1" and d["num_classes"] == 100
    assert (d["dataset"], d["model_arch"], d["manual_seed"]) == ("CIFAR100", "resnet20", 1234)
    n_train, n_val = len(d["train_indices"]), len(d["val_indices"])
    assert (n_train, n_val) == (144, 16)  # 8 classes x 20: 18 train + 2 validation each
    expected = {"epoch": (np.int64, (3,)), "tr_loss": (np.float32, (3, n_train)), "val_loss": (np.float32, (3, n_val)),
                "tr_lbl": (np.int64, (n_train,)), "val_lbl": (np.int64, (n_val,)),
                "train_indices": (np.int64, (n_train,)), "val_indices": (np.int64, (n_val,)),
                "tr_correct": (np.bool_, (3, n_train)), "tr_margin": (np.float16, (3, n_train)),
                "tr_el2n": (np.float16, (3, n_train))}
    for key, (dtype, shape) in expected.items():
        assert d[key].dtype == dtype and d[key].shape == shape, key
    assert d["config"]["epochs"] == 3 and d["config"]["val_split_ratio"] == 0.1
    labels = cifar100_root[1]["train"]
    assert len(np.intersect1d(d["train_indices"], d["val_indices"])) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([d["train_indices"], d["val_indices"]])), np.arange(160))
    np.testing.assert_array_equal(d["tr_lbl"], labels[d["train_indices"]])
    np.testing.assert_array_equal(d["val_lbl"], labels[d["val_indices"]])
    split = load_split(os.path.join(base, "splits", "CIFAR100_resnet20_seed1234_split.pkl"))
    np.testing.assert_array_equal(split["train_indices"], d["train_indices"])


def test_last_epoch_losses_equal_a_recomputation_from_the_final_weights(stage1_run, cifar100_root):
    path, base = stage1_run
    d = load_losses(path)
    state = load_checkpoint(os.path.join(base, "ckpt", "CIFAR100_resnet20_seed1234_last.pth"))
    model = models.get_model("resnet20", 100)
    model.load_state_dict(state["model"])
    model.eval()
    data = load_dataset("CIFAR100", cifar100_root[0], download=False)
    src = TensorBatches(data.train, data.info, torch.device("cpu"))
    with torch.no_grad():
        x, y, _ = next(src.eval_batches(d["train_indices"], len(d["train_indices"])))
        signals = example_signals(model(x), y, signals=True)
    np.testing.assert_allclose(d["tr_loss"][-1], signals["loss"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(d["tr_correct"][-1], signals["correct"].numpy())
    np.testing.assert_allclose(d["tr_margin"][-1], signals["margin"].numpy().astype(np.float16), rtol=2e-3, atol=2e-3)
    assert not np.array_equal(d["tr_loss"][0], d["tr_loss"][-1])


def test_csv_log_has_one_row_per_epoch(stage1_run):
    _, base = stage1_run
    with open(os.path.join(base, "logs", "CIFAR100_resnet20_seed1234.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert set(rows[0]) == {"epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss_mean",
                            "seconds_train", "seconds_test", "seconds_collect"}
    assert all(float(r["lr"]) == 0.1 for r in rows)


def test_resumed_run_equals_an_uninterrupted_one(cifar100_root, tmp_path):
    straight = get_loss_values.main(data_path=cifar100_root[0], epochs=4, **FAST, **out_dirs(tmp_path / "a"))
    dirs = out_dirs(tmp_path / "b")
    get_loss_values.main(data_path=cifar100_root[0], epochs=2, **FAST, **dirs)
    last = os.path.join(dirs["checkpoint_path"], "CIFAR100_resnet20_seed1234_last.pth")
    resumed = get_loss_values.main(data_path=cifar100_root[0], epochs=4, resume_path=last, **FAST, **dirs)
    a, b = load_losses(straight), load_losses(resumed)
    for key in ("epoch", "tr_loss", "val_loss", "tr_correct", "tr_margin", "tr_el2n", "train_indices", "tr_lbl"):
        assert np.array_equal(a[key], b[key]), key
    with open(os.path.join(dirs["logpath"], "CIFAR100_resnet20_seed1234.csv")) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3", "4"]


def test_resume_of_another_run_is_refused(stage1_run, cifar100_root, tmp_path):
    _, base = stage1_run
    last = os.path.join(base, "ckpt", "CIFAR100_resnet20_seed1234_last.pth")
    proc = run_script("get_loss_values.py", "--data_path", cifar100_root[0], "--dataset", "CIFAR100", "--epochs", "5",
                      "--model_arch", "resnet20", "--manual_seed", "7", "--device", "cpu", "--download", "False",
                      "--resume_path", last, "--scores_dir", str(tmp_path / "s"), "--splits_dir", str(tmp_path / "sp"),
                      "--checkpoint_path", str(tmp_path / "c"), "--logpath", str(tmp_path / "l"))
    assert_user_error(proc, "belongs to another run", "manual_seed: checkpoint has 1234, this run has 7")
    assert not os.path.exists(tmp_path / "s" / "CIFAR100_resnet20_seed7_losses.pickle")


def test_evaluate_only_reports_test_accuracy(stage1_run, cifar100_root):
    _, base = stage1_run
    best = os.path.join(base, "ckpt", "CIFAR100_resnet20_seed1234_best.pth")
    proc = run_script("get_loss_values.py", "--data_path", cifar100_root[0], "--model_arch", "resnet20",
                      "--device", "cpu", "--download", "False", "--evaluate_only", "--resume_path", best)
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout


@pytest.mark.parametrize("flags,fragments", [
    ({"model_arch": "resnet7"}, ["unknown model", "resnet20"]),
    ({"dataset": "CIFAR1000"}, ["unknown --dataset", "CIFAR100"]),
    ({"data_path": "/nonexistent/data"}, ["cifar-100-python", "/nonexistent/data/cifar"]),
    ({"precision": "fp8"}, ["unknown --precision"]),
    ({"val_split_ratio": 1.5}, ["val_split_ratio"]),
    ({"schedule": "eighty"}, ["--schedule takes an integer, got 'eighty'"]),
    ({"epochs": 1.9}, ["--epochs takes an integer, got 1.9"]),
    ({"start_epoch": 3}, ["--start_epoch 3 is not supported", "--resume_path"]),
])
def test_bad_input_is_a_user_error_and_writes_nothing(flags, fragments, cifar100_root, tmp_path):
    with pytest.raises(UserError) as err:
        get_loss_values.main(**{**FAST, "data_path": cifar100_root[0], "epochs": 1, **out_dirs(tmp_path), **flags})
    for fragment in fragments:
        assert fragment in str(err.value)
    assert not any(files for _, _, files in os.walk(tmp_path))


def test_bad_flag_from_the_shell_is_one_error_line(tmp_path):
    proc = run_script("get_loss_values.py", "--model_arch", "resnet7", "--dataset", "digits", "--device", "cpu",
                      "--scores_dir", str(tmp_path / "s"), "--splits_dir", str(tmp_path / "sp"),
                      "--checkpoint_path", str(tmp_path / "c"), "--logpath", str(tmp_path / "l"))
    assert_user_error(proc, "unknown model 'resnet7'")


def test_unwritable_output_folder_is_refused(cifar100_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot create folder"):
        get_loss_values.main(data_path=cifar100_root[0], epochs=1, **{**FAST, **out_dirs(tmp_path),
                                                                       "scores_dir": str(blocker / "scores")})


def test_existing_run_is_reported_complete_or_refused_with_another_recipe(stage1_run, cifar100_root, capsys):
    path, base = stage1_run
    before = open(path, "rb").read()
    assert get_loss_values.main(data_path=cifar100_root[0], epochs=3, **FAST, **out_dirs(base)) == path
    assert f"already complete: {path}" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"another recipe \(--epochs 3 \(this command: 4\)\); pass --overwrite"):
        get_loss_values.main(data_path=cifar100_root[0], epochs=4, **FAST, **out_dirs(base))
    assert open(path, "rb").read() == before


def test_divergence_stops_with_the_epoch_named(cifar100_root, tmp_path):
    with pytest.raises(UserError, match=r"in epoch 1; training diverged .*lower --learning_rate"):
        get_loss_values.main(data_path=cifar100_root[0], epochs=2, learning_rate=100, **FAST, **out_dirs(tmp_path))
    assert not os.path.exists(os.path.join(out_dirs(tmp_path)["scores_dir"], "CIFAR100_resnet20_seed1234_losses.pickle"))


def test_a_loss_exploding_past_100_times_the_first_epochs_stops_the_run(cifar100_root, tmp_path, monkeypatch):
    """Finite but runaway losses stop the run too, keeping the last good checkpoint."""
    from utils.train.engine import Trainer

    real = Trainer.train_epoch
    calls = []

    def blowing_up(self, batches):
        loss, acc = real(self, batches)
        calls.append(loss)
        return (loss * 1000.0 if len(calls) == 3 else loss), acc

    monkeypatch.setattr(Trainer, "train_epoch", blowing_up)
    dirs = out_dirs(tmp_path)
    with pytest.raises(UserError, match=r"training loss of epoch 3 \(.*\) is over 100 times that of epoch 1.*"
                                        r"the last good checkpoint is .*_last.pth.*lower --learning_rate"):
        get_loss_values.main(data_path=cifar100_root[0], epochs=4, **FAST, **dirs)
    last = os.path.join(dirs["checkpoint_path"], "CIFAR100_resnet20_seed1234_last.pth")
    assert load_checkpoint(last)["epoch"] == 2


def _final_epoch_fp32_losses(loss_path: str, ckpt_dir: str, data_path: str) -> tuple[dict, np.ndarray]:
    """The loss file, and an independent fp32 evaluation of the run's final weights on its training split."""
    d = load_losses(loss_path)
    state = load_checkpoint(os.path.join(ckpt_dir, "CIFAR100_resnet20_seed1234_last.pth"))
    model = models.get_model("resnet20", 100)
    model.load_state_dict(state["model"])
    model.eval()
    data = load_dataset("CIFAR100", data_path, download=False)
    src = TensorBatches(data.train, data.info, torch.device("cpu"))
    with torch.no_grad():
        x, y, _ = next(src.eval_batches(d["train_indices"], len(d["train_indices"])))
        return d, example_signals(model(x), y, signals=False)["loss"].numpy()


@pytest.mark.parametrize("collect", ["fp32", "same"])
def test_losses_are_recorded_in_fp32_whatever_the_training_precision(collect, cifar100_root, tmp_path):
    """bf16 training: the recorded losses are an fp32 evaluation of the weights (the default), or the
    bf16 one with --collect_precision same, which rounding makes differ."""
    dirs = out_dirs(tmp_path)
    path = get_loss_values.main(data_path=cifar100_root[0], epochs=2,
                                **{**FAST, "precision": "bf16", "collect_precision": collect}, **dirs)
    d, fp32 = _final_epoch_fp32_losses(path, dirs["checkpoint_path"], cifar100_root[0])
    assert d["collect_precision"] == ("fp32" if collect == "fp32" else "bf16")
    if collect == "fp32":
        np.testing.assert_allclose(d["tr_loss"][-1], fp32, rtol=1e-5, atol=1e-5)
    else:
        assert np.abs(d["tr_loss"][-1] - fp32).max() > 1e-4
