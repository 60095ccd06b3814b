"""Scale: trajectories written once beside the checkpoints, CLD from running sums."""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest
import torch

import compute_cld_scores
import get_loss_values
from conftest import assert_user_error, cli, s1_flags
from test_robustness import run_killed
from utils.files.checkpoint import load_checkpoint
from utils.files.losses import load_losses, load_sums
from utils.files.scores import load_scores
from cld_recorder import CLDSums
from utils.core import cld as S

RUN = "CIFAR10_resnet20_seed1234"
EPOCHS = 4


@pytest.fixture(scope="module")
def full(data, tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("full")
    with contextlib.redirect_stdout(io.StringIO()):
        return get_loss_values.main(**s1_flags(data, base, epochs=EPOCHS))


@pytest.fixture(scope="module")
def sums(data, tmp_path_factory) -> str:
    """The same run with ``--trajectories sums``: its sums file (tests only read it)."""
    base = tmp_path_factory.mktemp("sums")
    with contextlib.redirect_stdout(io.StringIO()):
        return get_loss_values.main(**s1_flags(data, base, epochs=EPOCHS, trajectories="sums"))


def _arrays(state, path=""):
    """Every tensor / array in a checkpoint, with its path."""
    if isinstance(state, dict):
        for key, value in state.items():
            yield from _arrays(value, f"{path}/{key}")
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _arrays(value, f"{path}/{i}")
    elif isinstance(state, (torch.Tensor, np.ndarray)):
        yield path, tuple(state.shape)


def test_the_run_state_checkpoint_holds_no_per_example_array(full):
    n_train = len(load_losses(full)["train_indices"])
    last = os.path.join(os.path.dirname(os.path.dirname(full)), "ckpt", f"{RUN}_last.pth")
    shapes = dict(_arrays(load_checkpoint(last)))
    assert shapes and not [p for p, shape in shapes.items() if n_train in shape]
    rows = np.load(os.path.join(os.path.dirname(last), f"{RUN}_trajectories", "tr_loss.npy"), allow_pickle=False)
    assert rows.shape == (EPOCHS, n_train)


def test_a_kill_between_a_row_and_its_checkpoint_resumes_to_the_same_files(data, full, tmp_path):
    flags = s1_flags(data, tmp_path, epochs=EPOCHS)
    # Dies as epoch 2's checkpoint is about to be renamed into place: its rows are already on disk.
    run_killed("get_loss_values.py", flags, "on_call(os, 'replace', 2, match='_last.pth')")
    last = str(tmp_path / "ckpt" / f"{RUN}_last.pth")
    assert load_checkpoint(last)["epoch"] == 1
    rows = np.load(tmp_path / "ckpt" / f"{RUN}_trajectories" / "tr_loss.npy")
    assert rows[1].any()  # epoch 2's row was written before the kill
    with contextlib.redirect_stdout(io.StringIO()):
        resumed = get_loss_values.main(**flags, resume_path=last)
    a, b = load_losses(resumed), load_losses(full)
    for key in ("tr_loss", "val_loss", "tr_correct", "tr_margin", "tr_el2n"):
        assert np.array_equal(a[key], b[key]), key


def test_a_resume_that_raises_the_epochs_grows_the_rows(data, full, tmp_path):
    flags = s1_flags(data, tmp_path, epochs=2)
    with contextlib.redirect_stdout(io.StringIO()):
        get_loss_values.main(**flags)
        grown = get_loss_values.main(**dict(flags, epochs=EPOCHS, resume_path=str(tmp_path / "ckpt" / f"{RUN}_last.pth")))
    assert np.array_equal(load_losses(grown)["tr_loss"], load_losses(full)["tr_loss"])


def test_cld_from_running_sums_equals_cld_from_the_full_trajectories(full, sums, tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        from_sums = load_scores(compute_cld_scores.main(loss_path=sums, output_path=str(tmp_path / "sums.pickle")))
        from_full = load_scores(compute_cld_scores.main(loss_path=full, output_path=str(tmp_path / "full.pickle")))
    assert sums.endswith("_cld_sums.npz") and load_sums(sums)["sums"]["epochs"] == EPOCHS
    for c in from_full["indices"]:
        # The same score for every example, to rounding; with 3 epochs (2 differences) every CLD is
        # +-1 or 0, so the rankings are equal up to the order of scores tied within that rounding.
        full_of = dict(zip(from_full["indices"][c].tolist(), from_full["scores"][c]))
        sums_of = dict(zip(from_sums["indices"][c].tolist(), from_sums["scores"][c]))
        assert full_of.keys() == sums_of.keys()
        np.testing.assert_allclose([sums_of[i] for i in full_of], list(full_of.values()), rtol=0, atol=1e-9)
        def tied(ranking, scores):
            return [i for _, i in sorted((-round(scores[i], 9), i) for i in ranking)]
        assert tied(from_sums["indices"][c], sums_of) == tied(from_full["indices"][c], full_of)
    # What stage 1 in sums mode keeps: O(N) state, no (epochs, N) array.
    state = os.listdir(os.path.join(os.path.dirname(os.path.dirname(sums)), "ckpt", f"{RUN}_trajectories"))
    assert state == [f"cld_sums_epoch{EPOCHS}.npz"]


def test_running_sums_equal_the_batch_correlation_on_random_trajectories():
    rng = np.random.default_rng(0)
    tr = rng.random((12, 50)).astype(np.float32)
    tr[:, 0] = 0.5  # a constant trajectory: correlation 0
    val = rng.random((12, 9)).astype(np.float32)
    d = {"tr_loss": tr, "val_loss": val, "tr_lbl": np.arange(50) % 3, "val_lbl": np.arange(9) % 3,
         "epoch": np.arange(12), "train_indices": np.arange(50), "val_indices": np.arange(50, 59)}
    sums = CLDSums(d["tr_lbl"], d["val_lbl"], 3)
    for t in range(12):
        sums.update(tr[t], val[t])
    np.testing.assert_allclose(sums.scores(), S.cld(d), rtol=0, atol=1e-12)
    assert sums.scores()[0] == 0.0


def test_a_killed_sums_run_resumes_to_the_same_sums(data, sums, tmp_path):
    flags = s1_flags(data, tmp_path, epochs=EPOCHS, trajectories="sums")  # its own run: the fixture's is only read
    straight = load_sums(sums)
    run_killed("get_loss_values.py", flags, "on_call(os, 'replace', 3, match='_last.pth')")
    last = str(tmp_path / "ckpt" / f"{RUN}_last.pth")
    assert load_checkpoint(last)["epoch"] == 2
    with contextlib.redirect_stdout(io.StringIO()):
        resumed = load_sums(get_loss_values.main(**flags, resume_path=last))
    for key, value in straight["sums"].items():
        assert np.array_equal(resumed["sums"][key], value), key


@pytest.mark.parametrize("method", ["loss", "forgetting", "herding"])
def test_methods_that_need_full_trajectories_refuse_a_sums_file(method, sums):
    assert_user_error(cli(compute_cld_scores, "--loss_path", sums, "--method", method),
                      "holds CLD's running sums only", "--trajectories full")


def test_epoch_selection_refuses_a_sums_file(sums):
    assert_user_error(cli(compute_cld_scores, "--loss_path", sums, "--first_epochs", "3"),
                      "--first_epochs and --epoch_stride need the full trajectories")
