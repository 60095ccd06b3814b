"""The same command run again after an interruption continues the run from its ``*_last.pth``:
stages 1 and 3 end with what an uninterrupted run writes, a rerun with another recipe is refused
naming the field (and how to start over), and under torchrun a rerun is refused as before. Few
SGD steps are advised against only when the model did not fit its coreset."""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest

import get_loss_values
import train_on_coresets
from conftest import assert_user_error, cli, flag_args, s1_flags, s3_flags
from utils.errors import UserError
from utils.files.checkpoint import load_checkpoint
from utils.files.losses import load_losses
from utils.paths import RunFiles
from utils.train.state import RunState, claim_run, continue_interrupted

RUN1 = "CIFAR10_resnet20_seed1234"


def _interrupted_after_epoch(monkeypatch, n: int, run, **flags):
    """Run ``run(**flags)`` and interrupt it (Ctrl-C) just after the checkpoint of epoch ``n``."""
    real = RunState.save

    def save(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.epoch == n:
            raise KeyboardInterrupt

    with monkeypatch.context() as m, contextlib.redirect_stdout(io.StringIO()):
        m.setattr(RunState, "save", save)
        with pytest.raises(KeyboardInterrupt):
            run(**flags)


def _epochs_in(path: str) -> int:
    return int(load_checkpoint(path)["epoch"])


def test_stage1_rerun_after_an_interruption_continues_to_the_uninterrupted_losses(data, reference, tmp_path,
                                                                                monkeypatch):
    flags = s1_flags(data, tmp_path)
    last = str(tmp_path / "ckpt" / f"{RUN1}_last.pth")
    _interrupted_after_epoch(monkeypatch, 2, get_loss_values.main, **flags)
    assert _epochs_in(last) == 2

    # Another learning rate: refused, naming it and how to start over; nothing of the run changes.
    before = open(last, "rb").read()
    proc = cli(get_loss_values, *flag_args({**flags, "learning_rate": 0.05}))
    assert_user_error(proc, last, "learning_rate", "0.05", "--overwrite")
    assert open(last, "rb").read() == before
    assert not os.path.exists(tmp_path / "scores" / f"{RUN1}_losses.pickle")

    # The same command: continues after epoch 2, and ends with the uninterrupted run's losses.
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        loss = get_loss_values.main(**flags)
    said = printed.getvalue()
    assert f"continuing the interrupted run from {last} (same recipe; --overwrite starts over)" in said
    assert f"resumed {last} after epoch 2" in said and "epoch 1/3" not in said and "epoch 3/3" in said
    ours, theirs = load_losses(loss), load_losses(reference["loss"])
    for key in ("epoch", "tr_loss", "val_loss", "tr_lbl", "val_lbl", "train_indices", "val_indices",
                "tr_correct", "tr_margin", "tr_el2n"):
        assert ours[key].dtype == theirs[key].dtype and np.array_equal(ours[key], theirs[key]), key

    # Once complete, the same command reports it rather than continuing.
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert get_loss_values.main(**flags) == loss
    assert f"already complete: {loss}" in printed.getvalue() and "continuing" not in printed.getvalue()


def test_stage1_overwrite_starts_the_interrupted_run_over(data, tmp_path, monkeypatch):
    flags = s1_flags(data, tmp_path, epochs=2)
    last = str(tmp_path / "ckpt" / f"{RUN1}_last.pth")
    _interrupted_after_epoch(monkeypatch, 1, get_loss_values.main, **flags)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        get_loss_values.main(**flags, learning_rate=0.05, overwrite=True)
    assert "continuing" not in printed.getvalue() and "resumed" not in printed.getvalue()
    assert _epochs_in(last) == 2 and load_checkpoint(last)["config"]["learning_rate"] == 0.05


def test_stage3_rerun_after_an_interruption_continues_to_the_uninterrupted_result(data, reference, tmp_path,
                                                                                monkeypatch):
    flags = s3_flags(data, reference["scores"], tmp_path)
    last = str(tmp_path / "ckpt" / "run_last.pth")
    result_json = tmp_path / "res" / "runs" / "run.json"
    _interrupted_after_epoch(monkeypatch, 2, train_on_coresets.main, **flags)
    assert _epochs_in(last) == 2 and not result_json.exists()

    with pytest.raises(UserError, match="learning_rate") as refused:
        with contextlib.redirect_stdout(io.StringIO()):
            train_on_coresets.main(**{**flags, "learning_rate": 0.05})
    assert last in str(refused.value) and "--overwrite" in str(refused.value)
    assert _epochs_in(last) == 2 and not result_json.exists()

    with contextlib.redirect_stdout(io.StringIO()) as printed:
        result = train_on_coresets.main(**flags)
    assert f"continuing the interrupted run from {last} (same recipe; --overwrite starts over)" in printed.getvalue()
    assert f"resumed {last} after epoch 2" in printed.getvalue()
    straight = reference["result"]
    with open(result_json) as f:
        saved = json.load(f)
    for key in ("final_test_acc", "best_test_acc", "final_train_acc", "coreset_indices", "coreset_size", "epochs"):
        assert result[key] == straight[key] and saved[key] == straight[key], key


def test_an_explicit_resume_path_is_used_as_given(tmp_path):
    files = RunFiles(str(tmp_path / "ckpt"), str(tmp_path / "logs"), "run", str(tmp_path / "out.json"))
    said = []
    assert continue_interrupted(files, "", False, said.append) == ""  # no checkpoint: a fresh run
    os.makedirs(files.checkpoint_dir)
    open(files.last, "wb").close()
    assert continue_interrupted(files, "other_last.pth", False, said.append) == "other_last.pth"
    assert continue_interrupted(files, "", True, said.append) == ""  # --overwrite starts over
    assert said == []
    assert continue_interrupted(files, "", False, said.append) == files.last
    assert said == [f"continuing the interrupted run from {files.last} (same recipe; --overwrite starts over)"]


def test_under_torchrun_a_rerun_is_refused_as_before(tmp_path, monkeypatch):
    files = RunFiles(str(tmp_path / "ckpt"), str(tmp_path / "logs"), "run", str(tmp_path / "out.json"))
    os.makedirs(files.checkpoint_dir)
    open(files.last, "wb").close()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    said = []
    assert continue_interrupted(files, "", False, said.append) == "" and said == []
    with pytest.raises(UserError) as refused:
        claim_run(files, [files.checkpoint_dir, files.log_dir], "", False, said.append)
    assert f"--resume_path {files.last} to continue it" in str(refused.value)
    assert "under torchrun" in str(refused.value) and "--overwrite" in str(refused.value)


def test_few_steps_are_no_warning_when_the_model_fits_its_coreset(data, reference, tmp_path):
    # 20 examples at batch 8 for 3 epochs: 9 steps. With --fit_threshold 0 every model fits.
    proc = cli(train_on_coresets, *flag_args(s3_flags(data, reference["scores"], tmp_path, fit_threshold=0.0)))
    assert proc.returncode == 0, proc.stderr
    assert "training plan: 9 optimizer steps" in proc.stdout
    assert "warning: " not in proc.stderr and "optimizer steps" not in proc.stderr
