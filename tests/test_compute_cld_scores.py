"""compute_cld_scores.py end to end: score files, legacy loss files, user errors, the benchmark."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import compute_cld_scores
from utils.errors import UserError
from utils.files.losses import save_losses
from utils.files.scores import SCORE_FORMAT, load_scores
from utils.core import cld as S
from utils.methods import registry as methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_CLS, N_EP = 4, 8


def run_losses(n_train=40, n_val=12, n_ep=N_EP, seed=0, signals=True):
    """A small stage-1 result: per-class falling losses, dataset indices not in column order."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_ep)[:, None]
    d = {
        "dataset": "CIFAR10", "model_arch": "resnet18", "manual_seed": 7, "num_classes": N_CLS,
        "config": {"epochs": n_ep},
        "epoch": np.arange(n_ep),
        "tr_loss": (np.exp(-0.2 * t) * rng.uniform(1, 3, n_train) + 0.1 * rng.random((n_ep, n_train))).astype(np.float32),
        "val_loss": (np.exp(-0.2 * t) * rng.uniform(1, 3, n_val) + 0.1 * rng.random((n_ep, n_val))).astype(np.float32),
        "tr_lbl": np.arange(n_train) % N_CLS,
        "val_lbl": np.arange(n_val) % N_CLS,
        "train_indices": rng.permutation(n_train + n_val)[:n_train],
    }
    d["val_indices"] = np.setdiff1d(np.arange(n_train + n_val), d["train_indices"])
    if signals:
        d["tr_correct"] = rng.random((n_ep, n_train)) < 0.7
        d["tr_margin"] = rng.normal(size=(n_ep, n_train)).astype(np.float32)
        d["tr_el2n"] = rng.random((n_ep, n_train)).astype(np.float32)
    return d


@pytest.fixture
def loss_file(tmp_path):
    path = str(tmp_path / "CIFAR10_resnet18_seed7_losses.pickle")
    d = run_losses()
    save_losses(path, d)
    return path, d


def test_end_to_end_score_file(loss_file, capsys):
    path, d = loss_file
    out = compute_cld_scores.main(loss_path=path)
    assert out == os.path.join(os.path.dirname(path), "CLD_CIFAR10_resnet18_seed7_scores.pickle")
    rec = load_scores(out)
    assert rec["format"] == SCORE_FORMAT and rec["method"] == "cld"
    assert (rec["dataset"], rec["model_arch"], rec["manual_seed"], rec["num_classes"]) == ("CIFAR10", "resnet18", 7, 4)
    assert rec["loss_path"] == os.path.abspath(path)
    assert rec["epochs_used"].tolist() == list(range(N_EP))
    assert rec["options"]["epoch_stride"] == 1 and rec["hard_end"] == "bottom"
    expected = S.cld(d | {"tr_lbl": np.asarray(d["tr_lbl"]), "val_lbl": np.asarray(d["val_lbl"])})
    assert sorted(rec["indices"]) == [0, 1, 2, 3]
    for c in range(N_CLS):
        cols = np.flatnonzero(d["tr_lbl"] == c)
        order = np.lexsort((d["train_indices"][cols], -expected[cols]))
        assert rec["indices"][c].tolist() == d["train_indices"][cols][order].tolist()
        np.testing.assert_allclose(rec["scores"][c], expected[cols][order])
        assert np.all(np.diff(rec["scores"][c]) <= 0)
    text = capsys.readouterr().out
    assert "positive CLD" in text and "min 10 / median 10 / max 10" in text
    # The recipe of stage 1 that differs from the defaults comes along, except where it would take
    # too few SGD steps: 4 examples at batch 128 for 8 epochs are 8 steps, so batch 1 and 25 epochs.
    assert "# 4 examples at batch 128 for 8 epochs would be 8 SGD steps, too few to fit a model; --batch_size 1 " \
           "--epochs 25 gives 100\n" in text
    assert f"python train_on_coresets.py --score_path {out} --samples_per_class 1 --dataset CIFAR10 " \
           "--model_arch resnet18 --epochs 25 --batch_size 1\n" in text


@pytest.mark.parametrize("method", sorted(m.name for m in methods.METHODS.values() if m.family == "trajectory"))
def test_every_method_writes_its_file(loss_file, method):
    path, _ = loss_file
    out = compute_cld_scores.main(loss_path=path, method=method, first_epochs=6, epoch_stride=2)
    assert os.path.basename(out) == f"{method.upper()}_CIFAR10_resnet18_seed7_scores.pickle"
    rec = load_scores(out)
    assert rec["method"] == method and rec["epochs_used"].tolist() == [0, 2, 4]
    assert sum(v.size for v in rec["indices"].values()) == 40


def test_random_seed_defaults_to_the_run_seed(loss_file, tmp_path):
    path, _ = loss_file
    a = load_scores(compute_cld_scores.main(loss_path=path, method="random"))
    b = load_scores(compute_cld_scores.main(loss_path=path, method="random", seed=7,
                                            output_path=str(tmp_path / "b.pickle")))
    c = load_scores(compute_cld_scores.main(loss_path=path, method="random", seed=8,
                                            output_path=str(tmp_path / "c.pickle")))
    assert a["options"]["seed"] == 7
    assert all(np.array_equal(a["indices"][k], b["indices"][k]) for k in a["indices"])
    assert not all(np.array_equal(a["indices"][k], c["indices"][k]) for k in a["indices"])


def test_default_paths_chain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = run_losses() | {"dataset": "CIFAR100", "manual_seed": 1234}
    save_losses("Scores/CIFAR100_resnet18_seed1234_losses.pickle", d)
    out = compute_cld_scores.main()
    assert os.path.normpath(out) == os.path.join("Scores", "CLD_CIFAR100_resnet18_seed1234_scores.pickle")
    assert os.path.isfile(out)


# ----------------------------------------------------------------------------- legacy files

def write_legacy(tmp_path, d):
    """The paper code's files: per-epoch lists of numpy scalars in split-position order, labels
    re-stored every epoch, plus a split pickle of Python lists."""
    legacy = {
        "epoch": list(range(d["tr_loss"].shape[0])),
        "tr_loss": [list(row) for row in d["tr_loss"]],                 # np.float32 scalars
        "val_loss": [list(row) for row in d["val_loss"]],
        "tr_lbl": [list(d["tr_lbl"].astype(np.int64)) for _ in d["tr_loss"]],
        "val_lbl": [list(d["val_lbl"].astype(np.int64)) for _ in d["val_loss"]],
    }
    assert isinstance(legacy["tr_loss"][0][0], np.float32)
    split = {"dataset": "CIFAR10", "model_arch": "resnet18", "manual_seed": 7, "val_split_ratio": 0.1,
             "train_indices": [int(i) for i in d["train_indices"]],
             "val_indices": [int(i) for i in d["val_indices"]]}
    loss_path, split_path = tmp_path / "legacy_losses.pickle", tmp_path / "legacy_split.pkl"
    with open(loss_path, "wb") as f:
        pickle.dump(legacy, f, pickle.HIGHEST_PROTOCOL)
    with open(split_path, "wb") as f:
        pickle.dump(split, f, pickle.HIGHEST_PROTOCOL)
    return str(loss_path), str(split_path)


@pytest.mark.parametrize("method", ["cld", "loss", "dyn_unc"])
def test_legacy_format_gives_identical_scores(loss_file, tmp_path, method):
    path, d = loss_file
    ours = load_scores(compute_cld_scores.main(loss_path=path, method=method))
    legacy_path, split_path = write_legacy(tmp_path, d)
    out = compute_cld_scores.main(loss_path=legacy_path, split_path=split_path, method=method,
                                  output_path=str(tmp_path / "legacy_scores.pickle"))
    theirs = load_scores(out)
    assert (theirs["dataset"], theirs["model_arch"], theirs["manual_seed"]) == ("CIFAR10", "resnet18", 7)
    assert sorted(theirs["indices"]) == sorted(ours["indices"])
    for c in ours["indices"]:
        np.testing.assert_array_equal(theirs["indices"][c], ours["indices"][c])
        np.testing.assert_array_equal(theirs["scores"][c], ours["scores"][c])


def test_legacy_without_split_path_is_refused(loss_file, tmp_path):
    legacy_path, _ = write_legacy(tmp_path, loss_file[1])
    with pytest.raises(UserError, match="legacy loss file.*--split_path"):
        compute_cld_scores.main(loss_path=legacy_path, output_path=str(tmp_path / "o.pickle"))
    assert not os.path.exists(tmp_path / "o.pickle")


def test_legacy_lacks_baseline_signals(loss_file, tmp_path):
    legacy_path, split_path = write_legacy(tmp_path, loss_file[1])
    with pytest.raises(UserError, match="needs the signal 'tr_correct'.*legacy"):
        compute_cld_scores.main(loss_path=legacy_path, split_path=split_path, method="forgetting")


# ----------------------------------------------------------------------------- user errors

class _Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def bad_input(kind, tmp_path):
    """Write a bad loss file of the given kind; return (path, expected message fragment)."""
    path = str(tmp_path / f"{kind}_losses.pickle")
    d = run_losses()
    if kind == "missing":
        return path, "not found"
    if kind == "truncated":
        save_losses(path, d)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        return path, "corrupt"
    if kind == "reduce":
        with open(path, "wb") as f:
            pickle.dump({"format": "cld-losses/1", "tr_loss": _Payload(tmp_path / "marker")}, f)
        return path, "holds Python objects other than data"
    if kind == "nan":
        d["tr_loss"][3, 5] = np.nan
        save_losses(path, d)
        return path, "NaN/inf at epoch 3"
    if kind == "two_epochs":
        save_losses(path, run_losses(n_ep=2))
        return path, "records 2 epoch"
    if kind == "no_val_class":
        d["val_lbl"] = np.where(d["val_lbl"] == 3, 2, d["val_lbl"])
        save_losses(path, d)
        return path, "class 3 has training examples but no validation example"
    raise AssertionError(kind)


KINDS = ["missing", "truncated", "reduce", "nan", "two_epochs", "no_val_class"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_inputs_raise_user_error_and_write_nothing(kind, tmp_path):
    path, message = bad_input(kind, tmp_path)
    before = set(os.listdir(tmp_path))
    with pytest.raises(UserError, match=message):
        compute_cld_scores.main(loss_path=path)
    assert set(os.listdir(tmp_path)) == before  # no score file, no temporary left behind
    assert not os.path.exists(tmp_path / "marker")


def test_first_epochs_leaving_too_few(loss_file):
    path, _ = loss_file
    with pytest.raises(UserError, match="keeps 2 of the 8 recorded epochs"):
        compute_cld_scores.main(loss_path=path, first_epochs=2)
    assert not [f for f in os.listdir(os.path.dirname(path)) if "scores" in f]


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "magic"}, "unknown --method 'magic'; choose one of cld, random, loss"),
    ({"epoch_stride": 0}, r"--epoch_stride must lie in \[1, "),
    ({"first_epochs": -3}, r"--first_epochs must lie in \[0, "),
    ({"el2n_epochs": 0}, "--el2n_epochs"),
    ({"dyn_unc_window": 1}, "--dyn_unc_window"),
    ({"seed": -1}, "--seed"),
    ({"lr": 0.1}, r"unknown flag --lr"),
])
def test_flags_are_validated_first(kwargs, message, tmp_path):
    with pytest.raises(UserError, match=message):
        compute_cld_scores.main(loss_path=str(tmp_path / "does_not_exist.pickle"), **kwargs)


def test_existing_output_is_refused_without_overwrite(loss_file):
    path, _ = loss_file
    out = compute_cld_scores.main(loss_path=path)
    stamp = os.path.getmtime(out)
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        compute_cld_scores.main(loss_path=path)
    assert os.path.getmtime(out) == stamp
    assert compute_cld_scores.main(loss_path=path, overwrite=True, method="cld") == out


def run_script(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "compute_cld_scores.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", ["missing", "reduce", "nan"])
def test_script_exit_status_2_one_error_line(kind, tmp_path):
    path, message = bad_input(kind, tmp_path)
    proc = run_script("--loss_path", path, "--output_path", str(tmp_path / "out.pickle"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "out.pickle") and not os.path.exists(tmp_path / "marker")


def test_script_success_and_no_heavy_imports(loss_file):
    path, _ = loss_file
    proc = run_script("--loss_path", path, "--method", "aum")
    assert proc.returncode == 0, proc.stderr
    assert "AUM_CIFAR10_resnet18_seed7_scores.pickle" in proc.stdout
    code = ("import sys, compute_cld_scores, utils.core.selection, utils.scoring.compute_scores; "
            "print([m for m in ('torch', 'pandas', 'tqdm') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_bench_small_runs():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_scores.py"), "--small"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "small" in proc.stdout and "peak MB" in proc.stdout
