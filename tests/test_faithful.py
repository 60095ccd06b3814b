"""Faithful to the paper's code where it is right: stage-3 defaults, the near-zero CLD coreset,
CIFAR-100's normalisation constants, the paper's checkpoints, --start_epoch."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

import get_loss_values
import models
import train_on_coresets
from conftest import FAST, assert_user_error, run_script
from fakedata import write_fake_cifar
from utils.data.batches import TensorBatches
from utils.data.datasets import DATASETS, load_dataset
from utils.files.scores import save_scores
from utils.core.selection import select_class, select_coreset
from utils.train.engine import example_signals

TINY = dict(device="cpu", precision="fp32", batch_size=64, test_batch_size=128, workers=0, download=False)


def test_cifar100_normalisation_is_the_paper_codes():
    assert DATASETS["CIFAR100"].mean == (0.5071, 0.4867, 0.4408)
    assert DATASETS["CIFAR100"].std == (0.2675, 0.2565, 0.2761)
    assert DATASETS["CIFAR10"].mean == (0.4914, 0.4822, 0.4465)  # CIFAR-10 keeps its own


# ----------------------------------------------------------------------------- order zero

def test_zero_order_takes_the_smallest_absolute_scores_ties_to_the_lower_index():
    idx = np.array([10, 11, 12, 13, 14, 15, 16, 17])
    sc = np.array([0.9, 0.5, 0.02, -0.01, 0.01, -0.3, -0.01, -0.8])  # a ranking (not sorted: planted)
    assert select_class(idx, sc, 3, "zero").tolist() == [13, 14, 16]  # |0.01| three times: by index
    assert select_class(idx, sc, 1, "zero").tolist() == [13]
    # 'middle' is the median rank, which for mostly positive CLD is far from zero
    assert select_class(idx, sc, 2, "middle").tolist() == [13, 14]
    with pytest.raises(Exception, match="needs per-example scores"):
        select_coreset({0: idx}, None, {0: 2}, "zero")


def test_zero_order_end_to_end_on_a_planted_score_file(tmp_path):
    root = str(tmp_path / "data")
    labels = write_fake_cifar(root, "CIFAR10", per_class=6, test_per_class=1)["train"]
    rng = np.random.default_rng(0)
    indices, scores = {}, {}
    for c in range(10):
        members = np.flatnonzero(labels == c)
        planted = rng.permutation([0.8, 0.4, 0.05, -0.02, -0.5, -0.9])  # a planted near-zero pair
        order = np.argsort(-planted, kind="stable")
        indices[c], scores[c] = members[order], planted[order]
    path = str(tmp_path / "CLD_CIFAR10_resnet20_seed1_scores.pickle")
    save_scores(path, {"method": "cld", "dataset": "CIFAR10", "model_arch": "resnet20", "manual_seed": 1,
                       "num_classes": 10, "hard_end": "bottom", "indices": indices, "scores": scores})
    result = train_on_coresets.main(score_path=path, data_path=root, samples_per_class=2, order="zero", epochs=1,
                                    results_dir=str(tmp_path / "res"), checkpoint_path=str(tmp_path / "c"),
                                    logpath=str(tmp_path / "l"), **TINY)
    expected = sorted(int(i) for c in range(10) for i, s in zip(indices[c], scores[c]) if abs(s) < 0.1)
    assert result["coreset_indices"] == expected and result["order"] == "zero"


# ----------------------------------------------------------------------------- stage-3 defaults

def test_a_paper_score_file_trains_the_top_100_of_each_class_of_cifar100(tmp_path, capsys):
    """No budget flag: the paper's topk_per_class 100; no dataset in the file: the paper's CIFAR100."""
    root = str(tmp_path / "data")
    labels = write_fake_cifar(root, "CIFAR100", per_class=104, test_per_class=1, num_classes=3)["train"]
    ranked = {str(c): np.random.default_rng(c).permutation(np.flatnonzero(labels == c)) for c in range(3)}
    legacy = tmp_path / "CLD_indices_sorted_CIFAR100_resnet18.pkl"  # the paper code's score pickle
    with open(legacy, "wb") as f:
        pickle.dump(ranked, f)
    result = train_on_coresets.main(score_path=str(legacy), data_path=root, model_arch="resnet20", epochs=1,
                                    results_dir=str(tmp_path / "res"), checkpoint_path=str(tmp_path / "c"),
                                    logpath=str(tmp_path / "l"), **TINY)
    out = capsys.readouterr().out
    assert "top 100 examples of each class" in out and "using the paper's default, CIFAR100" in out
    assert result["dataset"] == "CIFAR100" and result["samples_per_class"] == 100
    assert result["coreset_indices"] == sorted(int(i) for v in ranked.values() for i in v[:100])


# ----------------------------------------------------------------------------- paper checkpoints

def _paper_checkpoint(path: str, model: torch.nn.Module) -> None:
    """Saved as the paper's scripts save: a DataParallel state dict under 'state_dict'."""
    parallel = torch.nn.DataParallel(model)
    optimizer = torch.optim.SGD(parallel.parameters(), lr=0.1, momentum=0.9)
    torch.save({"epoch": 7, "state_dict": parallel.state_dict(), "best_acc": 12.5,
                "optimizer": optimizer.state_dict()}, path)


def test_checkpoints_of_the_paper_code_evaluate_in_both_stages(tmp_path, cifar100_root):
    torch.manual_seed(3)
    model = models.get_model("resnet20", 100)
    path = str(tmp_path / "paper_ckpt.pth.tar")
    _paper_checkpoint(path, model)
    assert next(iter(torch.load(path, weights_only=True)["state_dict"])).startswith("module.")
    # The accuracy computed independently, from the same weights.
    model.eval()
    data = load_dataset("CIFAR100", cifar100_root[0], download=False)
    source = TensorBatches(data.test, data.info, torch.device("cpu"))
    with torch.no_grad():
        x, y, _ = next(source.eval_batches(np.arange(len(source)), len(source)))
        expected = 100.0 * float(example_signals(model(x), y, False)["correct"].double().mean())
    flags = dict(data_path=cifar100_root[0], dataset="CIFAR100", model_arch="resnet20", evaluate_only=True,
                 resume_path=path, **TINY)
    result = train_on_coresets.main(**flags)["evaluated"]
    assert result["epoch"] == 7 and result["test_acc"] == pytest.approx(expected, abs=1e-9)
    proc = run_script("get_loss_values.py", *[w for k, v in flags.items() for w in (f"--{k}", str(v))])
    assert proc.returncode == 0, proc.stderr
    assert f"(epoch 7): test loss" in proc.stdout and f"test accuracy {expected:.2f}%" in proc.stdout


def test_a_paper_checkpoint_of_another_model_is_refused_in_one_line(tmp_path, cifar100_root):
    path = str(tmp_path / "paper_ckpt.pth.tar")
    _paper_checkpoint(path, models.get_model("resnet32", 100))
    proc = run_script("get_loss_values.py", "--data_path", cifar100_root[0], "--model_arch", "resnet20",
                      "--evaluate_only", "--resume_path", path, "--device", "cpu", "--download", "false")
    assert_user_error(proc, path, "does not hold a resnet20", "--model_arch")


# ----------------------------------------------------------------------------- start_epoch

def test_start_epoch_is_refused_with_what_to_use_instead(tmp_path):
    proc = run_script("get_loss_values.py", "--dataset", "digits", "--start_epoch", "5", "--device", "cpu",
                      "--scores_dir", str(tmp_path / "s"))
    assert_user_error(proc, "--start_epoch 5 is not supported", "--resume_path", "--epochs")
    assert not os.path.exists(tmp_path / "s")
    with pytest.raises(Exception, match="start_epoch"):
        get_loss_values.main(start_epoch=1, **FAST)
