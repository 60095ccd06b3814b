"""Stage 3 (train_on_coresets.py): coreset choice per order, results, transfer, bad input."""
from __future__ import annotations

import csv
import json
import os
import pickle

import numpy as np
import pytest

import compute_cld_scores
import train_on_coresets
from conftest import assert_user_error, run_script
from utils.errors import UserError
from utils.files.losses import load_losses
from utils.files.scores import load_scores

FAST3 = dict(device="cpu", precision="fp32", batch_size=32, test_batch_size=64, workers=0, download=False, epochs=1)


@pytest.fixture(scope="module")
def scored(stage1_run, tmp_path_factory):
    """The CLD score file of the shared stage-1 run."""
    loss_path, _ = stage1_run
    out = str(tmp_path_factory.mktemp("scores") / "CLD_CIFAR100_resnet20_seed1234_scores.pickle")
    return compute_cld_scores.main(loss_path=loss_path, output_path=out)


def _dirs(tmp_path) -> dict:
    return dict(checkpoint_path=str(tmp_path / "ckpt"), logpath=str(tmp_path / "logs"), results_dir=str(tmp_path / "res"))


def _run(scored, cifar100_root, tmp_path, **flags) -> dict:
    return train_on_coresets.main(score_path=scored, data_path=cifar100_root[0], **FAST3, **_dirs(tmp_path), **flags)


@pytest.mark.parametrize("order", ["top", "bottom", "middle"])
def test_ordered_coresets_take_the_right_end_of_each_class(order, scored, cifar100_root, tmp_path):
    ranked = load_scores(scored)["indices"]
    result = _run(scored, cifar100_root, tmp_path, samples_per_class=5, order=order)
    pick = {"top": lambda r: r[:5], "bottom": lambda r: r[-5:], "middle": lambda r: r[(len(r) - 5) // 2:][:5]}[order]
    expected = np.sort(np.concatenate([pick(r) for r in ranked.values() if len(r)]))
    assert result["coreset_indices"] == expected.tolist()
    assert result["coreset_size"] == 5 * 8


def test_random_order_is_seeded_and_drawn_from_the_train_pool(stage1_run, scored, cifar100_root, tmp_path):
    a = _run(scored, cifar100_root, tmp_path / "a", samples_per_class=4, order="random", manual_seed=3)
    b = _run(scored, cifar100_root, tmp_path / "b", samples_per_class=4, order="random", manual_seed=3)
    c = _run(scored, cifar100_root, tmp_path / "c", samples_per_class=4, order="random", manual_seed=4)
    assert a["coreset_indices"] == b["coreset_indices"] != c["coreset_indices"]
    pool = set(load_losses(stage1_run[0])["train_indices"].tolist())
    assert set(a["coreset_indices"]) <= pool and len(set(a["coreset_indices"])) == 32


def test_fraction_budget_and_results_row(scored, cifar100_root, tmp_path):
    result = _run(scored, cifar100_root, tmp_path, fraction=0.25)
    assert result["coreset_size"] == 8 * 5  # 0.25 x 18 = 4.5, and halves round up
    name = "CIFAR100_resnet20_coreset_cld_top_f0.25_seed1234"
    with open(tmp_path / "res" / "runs" / f"{name}.json") as f:
        saved = json.load(f)
    assert saved["coreset_indices"] == result["coreset_indices"]
    with open(tmp_path / "res" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    row = rows[0]
    assert list(row) == ["name", "dataset", "model_arch", "method", "score_model_arch", "order",
                         "samples_per_class", "fraction", "coreset_size", "manual_seed", "epochs",
                         "learning_rate", "momentum", "weight_decay", "nesterov", "schedule", "gamma", "batch_size",
                         "augment", "precision", "compile", "world_size", "commit",
                         "weighted", "snapshot_epoch", "selection_model", "best_test_acc", "final_test_acc",
                         "final_train_acc", "converged", "seconds", "score_path"]
    assert (row["name"], row["dataset"], row["model_arch"], row["method"], row["score_model_arch"], row["order"]) == \
        (name, "CIFAR100", "resnet20", "cld", "resnet20", "top")
    # The recipe that ran, so that rows of two recipes can be told apart.
    assert (row["learning_rate"], row["momentum"], row["weight_decay"], row["nesterov"], row["schedule"],
            row["gamma"], row["batch_size"], row["augment"], row["precision"], row["compile"], row["world_size"]) == \
        ("0.1", "0.9", "0.0005", "True", "[81,121]", "0.1", "32", "True", "fp32", "False", "1")
    assert 0 <= float(row["final_train_acc"]) <= 100 and row["final_train_acc"] == str(saved["final_train_acc"])
    assert saved["converged"] == (saved["final_train_acc"] >= 90.0) and row["converged"] == str(saved["converged"])
    assert (row["samples_per_class"], row["fraction"], row["coreset_size"], row["epochs"]) == ("", "0.25", "40", "1")
    assert float(row["final_test_acc"]) == result["final_test_acc"] and row["score_path"] == scored
    assert os.path.exists(tmp_path / "ckpt" / f"{name}_last.pth")


def test_transfer_to_another_model(scored, cifar100_root, tmp_path):
    result = _run(scored, cifar100_root, tmp_path, topk_per_class=2, model_arch="resnet32")
    assert (result["model_arch"], result["score_model_arch"]) == ("resnet32", "resnet20")
    assert result["name"] == "CIFAR100_resnet32_coreset_cld-resnet20_top_k2_seed1234"


def test_resume_equals_an_uninterrupted_run(scored, cifar100_root, tmp_path):
    flags = dict(samples_per_class=6, **{**FAST3, "epochs": 3})
    straight = train_on_coresets.main(score_path=scored, data_path=cifar100_root[0], **flags, **_dirs(tmp_path / "a"))
    dirs = _dirs(tmp_path / "b")
    train_on_coresets.main(score_path=scored, data_path=cifar100_root[0], **{**flags, "epochs": 1}, **dirs,
                           name="part")
    last = os.path.join(dirs["checkpoint_path"], "part_last.pth")
    resumed = train_on_coresets.main(score_path=scored, data_path=cifar100_root[0], **flags, **dirs, name="part",
                                     resume_path=last, overwrite=True)
    assert resumed["final_test_acc"] == straight["final_test_acc"]
    with open(os.path.join(dirs["logpath"], "part.csv")) as f, open(os.path.join(tmp_path / "a" / "logs",
                                                                            straight["name"] + ".csv")) as g:
        losses = lambda rows: [(r["train_loss"], r["test_loss"]) for r in csv.DictReader(rows)]
        assert losses(f) == losses(g)


def test_legacy_score_file_of_the_paper_code(scored, cifar100_root, tmp_path):
    ranked = load_scores(scored)["indices"]
    legacy = tmp_path / "CLD_indices_sorted_CIFAR100_resnet18.pkl"
    with open(legacy, "wb") as f:
        pickle.dump({str(c): v for c, v in ranked.items()}, f)
    result = train_on_coresets.main(score_path=str(legacy), dataset="CIFAR100", model_arch="resnet20",
                                    data_path=cifar100_root[0], samples_per_class=3, **FAST3, **_dirs(tmp_path))
    assert result["coreset_indices"] == np.sort(np.concatenate([r[:3] for r in ranked.values()])).tolist()


@pytest.mark.parametrize("flags,fragment", [
    ({"samples_per_class": 19}, "class 0 has only 18 ranked examples"),
    ({}, "class 0 has only 18 ranked examples, fewer than the 100 asked for"),  # the paper's default budget
    ({"samples_per_class": 2, "fraction": 0.1}, "give one budget"),
    ({"samples_per_class": 2, "order": "sideways"}, "unknown --order"),
    ({"samples_per_class": 2, "dataset": "CIFAR10"}, "made on dataset CIFAR100, not CIFAR10"),
])
def test_bad_budgets_and_flags(flags, fragment, scored, cifar100_root, tmp_path):
    with pytest.raises(UserError, match=fragment):
        _run(scored, cifar100_root, tmp_path, **flags)
    assert not os.path.exists(tmp_path / "res" / "results.csv")


def _tampered(scored, tmp_path, change) -> str:
    with open(scored, "rb") as f:
        record = pickle.load(f)
    change(record)
    path = str(tmp_path / "tampered.pickle")
    with open(path, "wb") as f:
        pickle.dump(record, f)
    return path


def test_indices_outside_the_training_set_or_listed_twice_are_refused(scored, cifar100_root, tmp_path):
    def outside(r):
        r["indices"][0] = np.append(r["indices"][0], 10_000)
        r["scores"][0] = np.append(r["scores"][0], -1.0)
    def twice(r):
        r["indices"][1] = np.append(r["indices"][1], r["indices"][0][0])
        r["scores"][1] = np.append(r["scores"][1], -1.0)
    for change, fragment in ((outside, "10000"), (twice, "listed twice")):
        proc = run_script("train_on_coresets.py", "--score_path", _tampered(scored, tmp_path, change),
                          "--data_path", cifar100_root[0], "--samples_per_class", "2", "--device", "cpu",
                          "--download", "False", "--epochs", "1", "--results_dir", str(tmp_path / "res"),
                          "--checkpoint_path", str(tmp_path / "c"), "--logpath", str(tmp_path / "l"))
        assert_user_error(proc, fragment)
    assert not any(files for _, _, files in os.walk(tmp_path / "res"))  # folders at most, no file


def test_missing_score_file(tmp_path):
    with pytest.raises(UserError, match="score file .*nope.pickle not found"):
        train_on_coresets.main(score_path=str(tmp_path / "nope.pickle"), samples_per_class=1)
