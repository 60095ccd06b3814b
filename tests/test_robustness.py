"""Robustness: killed runs, damaged and hostile files, foreign files, existing outputs, concurrent rows.

* Stages 1 and 3 are SIGKILLed at chosen moments (mid-training, mid-evaluation, half-way through a
  checkpoint / results write, between a checkpoint and its log, just before the loss file is
  renamed into place) and resumed as a user would; the finished files equal those of an
  uninterrupted run, and every file present after each kill loads cleanly.
* Every input the scripts read, truncated or damaged, is refused with one ``error:`` line naming
  it (exit 2); pickles and checkpoints that would run code are refused and the code never runs.
* Files of another dataset / class count / model / seed / stage are refused with the mismatch named.
* Existing outputs are never replaced silently; concurrent result rows all land in a valid CSV.

The kills need no hook in the project: each killed run is the script run through a ``python -c``
wrapper that patches one function to SIGKILL the process at the chosen call.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import compute_cld_scores
import get_loss_values
import train_on_coresets
from conftest import EPOCHS, REPO, assert_user_error, cli, flag_args, s1_flags, s3_flags
from fakedata import write_fake_cifar
from utils.files.locks import try_lock_descriptor
from cld_recorder import remove_stale_temps
from utils.files.atomic import atomic_write
from utils.files.checkpoint import load_checkpoint
from utils.files.losses import load_losses, load_split
from utils.files.scores import load_scores
from utils.coreset_training.results import RESULT_COLUMNS, write_result

RUN1 = "CIFAR10_resnet20_seed1234"


# ----------------------------------------------------------------------------- helpers

# Prepended to a killed run: helpers that SIGKILL the process at a chosen moment.
_KILLER = '''
import os, signal, sys, runpy
import torch
torch.set_num_threads(2)  # as in the tests' own process: fp32 CPU results then match bit for bit

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def on_call(owner, name, n, match=None):
    """Die at the n-th call of owner.name (counting calls whose arguments mention ``match``)."""
    real, seen = getattr(owner, name), [0]
    def wrapper(*args, **kwargs):
        if match is None or any(match in str(a) for a in args):
            seen[0] += 1
            if seen[0] == n:
                die()
        return real(*args, **kwargs)
    setattr(owner, name, wrapper)

def half_way(match, n=1):
    """Die in the middle of the first write into the n-th temporary file whose name mentions ``match``."""
    real, seen = os.fdopen, [0]
    class Dying:
        def __init__(self, f):
            self._f = f
        def write(self, data):
            data = bytes(data)
            self._f.write(data[:max(1, len(data) // 2)])
            self._f.flush()
            die()
        def __getattr__(self, key):
            return getattr(self._f, key)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self._f.close()
    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        if match in os.readlink(f"/proc/self/fd/{fd}"):
            seen[0] += 1
            if seen[0] == n:
                return Dying(f)
        return f
    os.fdopen = fdopen

def between(first, k, then):
    """Die just before renaming a file ending in ``then`` into place, after the k-th rename of one ending in ``first``."""
    real, seen = os.replace, [0]
    def replace(src, dst, *args, **kwargs):
        dst = str(dst)
        if dst.endswith(then) and seen[0] == k:
            die()
        if dst.endswith(first):
            seen[0] += 1
        return real(src, dst, *args, **kwargs)
    os.replace = replace
'''


def run_killed(script: str, flags: dict, patch: str) -> None:
    """Run ``script`` with ``flags`` and ``patch`` (calls of the helpers above); it must die of SIGKILL."""
    path = os.path.join(REPO, script)
    code = "\n".join([_KILLER, patch, f"sys.argv = {[path, *flag_args(flags)]!r}",
                      "runpy.run_path(sys.argv[0], run_name='__main__')"])
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])


def check_loadable(base) -> list[str]:
    """Load every file under ``base`` as what it is (none may be truncated); returns the temporary files."""
    temps = []
    for folder, _, names in os.walk(base):
        for name in names:
            path = os.path.join(folder, name)
            if name.startswith(".") and name.endswith(".tmp"):
                temps.append(path)
            elif name.endswith(".pth"):
                load_checkpoint(path)
            elif name.endswith("_losses.pickle"):
                load_losses(path)
            elif name.endswith("_split.pkl"):
                load_split(path)
            elif name.endswith("_scores.pickle"):
                load_scores(path)
            elif name.endswith(".json"):
                with open(path) as f:
                    json.load(f)
            elif name.endswith(".npy"):
                np.load(path, allow_pickle=False)
            elif name.endswith(".npz"):
                np.load(path, allow_pickle=False).files
            elif name.endswith(".csv"):
                with open(path, newline="") as f:
                    rows = list(csv.reader(f))
                assert rows and all(len(r) == len(rows[0]) for r in rows), path
            elif not name.endswith(".lock"):
                raise AssertionError(f"unexpected file {path}")
    return temps


def log_rows(path: str) -> list[dict]:
    """The per-epoch log without its timings (which differ between any two runs)."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("seconds")} for row in csv.DictReader(f)]


def epochs_in(path: str) -> int:
    return int(load_checkpoint(path)["epoch"])


class Payload:
    """Pickles as a call of os.system that creates a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ----------------------------------------------------------------------------- killed runs

def test_killed_stage1_resumes_to_the_uninterrupted_files(data, reference, tmp_path):
    flags = s1_flags(data, tmp_path)
    resume = dict(flags, resume_path=str(tmp_path / "ckpt" / f"{RUN1}_last.pth"))
    last, log = resume["resume_path"], str(tmp_path / "logs" / f"{RUN1}.csv")
    loss = str(tmp_path / "scores" / f"{RUN1}_losses.pickle")

    # 1. Killed while evaluating in epoch 2 (its 5th evaluation pass: the training split's losses).
    run_killed("get_loss_values.py", flags, "from utils.train.engine import Trainer\non_call(Trainer, 'evaluate', 5)")
    assert check_loadable(tmp_path) == [] and epochs_in(last) == 1 and len(log_rows(log)) == 1
    # What the user does next: the same command continues the run; with another recipe it is
    # refused, naming the field and how to start over, and writes nothing.
    assert_user_error(cli(get_loss_values, *flag_args({**flags, "learning_rate": 0.05})), last, "learning_rate",
                      "--overwrite")
    assert epochs_in(last) == 1 and len(log_rows(log)) == 1

    # 2. Rerun as it was (continuing), then killed half-way through writing the checkpoint of epoch 2.
    run_killed("get_loss_values.py", flags, "half_way('_last.pth')")
    temps = check_loadable(tmp_path)
    assert epochs_in(last) == 1 and len(temps) == 1 and os.path.basename(temps[0]).startswith(f".{RUN1}_last.pth.")

    # 3. Resumed, then killed just before the finished loss file is renamed into place. Its write
    #    of epoch 2's checkpoint removed the temporary file of the killed one.
    run_killed("get_loss_values.py", resume, "on_call(os, 'replace', 1, match='_losses.pickle')")
    temps = check_loadable(tmp_path)
    assert len(temps) == 1 and os.path.basename(temps[0]).startswith(f".{RUN1}_losses.pickle.")
    assert epochs_in(last) == EPOCHS and len(log_rows(log)) == EPOCHS and not os.path.exists(loss)

    # 4. Resumed: the checkpoint holds every epoch, so the run only writes its loss file.
    with contextlib.redirect_stdout(io.StringIO()):
        get_loss_values.main(**resume)
    assert check_loadable(tmp_path) == []  # the stale temporary file went with the next write
    ours, theirs = load_losses(loss), load_losses(reference["loss"])
    for key in ("epoch", "tr_loss", "val_loss", "tr_lbl", "val_lbl", "train_indices", "val_indices",
                "tr_correct", "tr_margin", "tr_el2n"):
        assert ours[key].dtype == theirs[key].dtype and np.array_equal(ours[key], theirs[key]), key
    assert log_rows(log) == log_rows(os.path.join(reference["s1"], "logs", f"{RUN1}.csv"))
    assert load_checkpoint(last)["model"].keys() == load_checkpoint(
        os.path.join(reference["s1"], "ckpt", f"{RUN1}_last.pth"))["model"].keys()

    # A finished run is not resumed; rerun as it was, it is reported complete; with another recipe, refused.
    before = open(loss, "rb").read()
    resumed = cli(get_loss_values, *flag_args(resume))
    assert resumed.returncode == 0 and f"already complete: {loss}" in resumed.stdout, resumed
    again = cli(get_loss_values, *flag_args(flags))
    assert again.returncode == 0 and f"already complete: {loss}" in again.stdout, again
    assert f"next: python compute_cld_scores.py --loss_path {loss}" in again.stdout
    assert_user_error(cli(get_loss_values, *flag_args({**flags, "learning_rate": 0.05})), loss,
                      "already exists, from a run with another recipe", "--learning_rate 0.1 (this command: 0.05)",
                      "--overwrite")
    assert open(loss, "rb").read() == before


def test_killed_stage3_resumes_to_the_uninterrupted_result(data, reference, tmp_path):
    flags = s3_flags(data, reference["scores"], tmp_path)
    last, log = str(tmp_path / "ckpt" / "run_last.pth"), str(tmp_path / "logs" / "run.csv")
    resume = dict(flags, resume_path=last)
    result_json = tmp_path / "res" / "runs" / "run.json"

    # 1. Killed mid-training in epoch 2 (at its 2nd of 3 SGD steps).
    run_killed("train_on_coresets.py", flags, "on_call(torch.optim.SGD, 'step', 5)")
    assert check_loadable(tmp_path) == [] and epochs_in(last) == 1

    # 2. Resumed, then killed after the checkpoint of epoch 3 but before that epoch's log row.
    run_killed("train_on_coresets.py", resume, "between('_last.pth', 2, 'run.csv')")
    assert len(check_loadable(tmp_path)) == 1 and epochs_in(last) == EPOCHS and len(log_rows(log)) == EPOCHS - 1

    # 3. Rerun as it was (continuing; nothing left to train), then killed half-way through writing
    #    the results JSON.
    run_killed("train_on_coresets.py", flags, "half_way('run.json')")
    assert len(check_loadable(tmp_path)) == 1 and not result_json.exists()

    # 4. Resumed: writes the result; the log is whole again.
    with contextlib.redirect_stdout(io.StringIO()):
        result = train_on_coresets.main(**resume)
    assert check_loadable(tmp_path) == []
    straight = reference["result"]
    for key in ("final_test_acc", "best_test_acc", "coreset_indices", "coreset_size", "epochs"):
        assert result[key] == straight[key], key
    assert log_rows(log) == log_rows(os.path.join(reference["s3"], "logs", "run.csv"))
    with open(result_json) as f:
        assert json.load(f)["final_test_acc"] == straight["final_test_acc"]
    assert len(pd.read_csv(tmp_path / "res" / "results.csv")) == 1
    resumed = cli(train_on_coresets, *flag_args(resume))
    assert resumed.returncode == 0 and "already complete:" in resumed.stdout, resumed


# ----------------------------------------------------------------------------- damaged inputs

def _damaged(src: str, dst, how: str) -> str:
    with open(src, "rb") as f:
        raw = bytearray(f.read())
    if how == "half":
        raw = raw[:len(raw) // 2]
    elif how == "empty":
        raw = bytearray()
    else:  # garbage over the start (bit flips inside a pickle's numbers cannot be told from data)
        raw[2:34] = bytes(range(200, 232))
    with open(dst, "wb") as f:
        f.write(raw)
    return str(dst)


@pytest.mark.parametrize("how", ["half", "empty", "garbage"])
def test_damaged_inputs_are_refused_naming_the_file(how, data, reference, tmp_path):
    s1_last = os.path.join(reference["s1"], "ckpt", f"{RUN1}_last.pth")
    s3_last = os.path.join(reference["s3"], "ckpt", "run_last.pth")
    refusals = ("truncated", "corrupt", "not a")  # whichever the damage shows

    def refused(proc, path):
        assert_user_error(proc, path)
        assert any(word in proc.stderr for word in refusals), proc.stderr

    # Loss file -> stage 2.
    loss = _damaged(reference["loss"], tmp_path / f"{RUN1}_losses.pickle", how)
    refused(cli(compute_cld_scores, "--loss_path", loss), loss)
    # Split file of a legacy loss file -> stage 2.
    legacy = tmp_path / "legacy_losses.pickle"
    d = load_losses(reference["loss"])
    with open(legacy, "wb") as f:
        pickle.dump({k: list(d[k]) for k in ("tr_loss", "val_loss")} |
                    {"tr_lbl": [d["tr_lbl"]] * EPOCHS, "val_lbl": [d["val_lbl"]] * EPOCHS}, f)
    split = _damaged(os.path.join(reference["s1"], "splits", f"{RUN1}_split.pkl"), tmp_path / "split.pkl", how)
    refused(cli(compute_cld_scores, "--loss_path", str(legacy), "--split_path", split), split)
    # Score file -> stage 3.
    scores = _damaged(reference["scores"], tmp_path / "scores.pickle", how)
    refused(cli(train_on_coresets, *flag_args(s3_flags(data, scores, tmp_path))), scores)
    # Checkpoints -> evaluate_only (stage 1 and 3), resume of stage 3.
    ckpt = _damaged(s1_last, tmp_path / "last.pth", how)
    refused(cli(get_loss_values, *flag_args(s1_flags(data, tmp_path, evaluate_only=True, resume_path=ckpt))), ckpt)
    ckpt3 = _damaged(s3_last, tmp_path / "run_last.pth", how)
    refused(cli(train_on_coresets, *flag_args(s3_flags(data, reference["scores"], tmp_path, resume_path=ckpt3))), ckpt3)
    # A CIFAR batch file -> stage 1.
    root = tmp_path / "data"
    shutil.copytree(data, root)
    batch = root / "cifar" / "cifar-10-batches-py" / "data_batch_3"
    _damaged(str(batch), batch, how)
    refused(cli(get_loss_values, *flag_args(s1_flags(str(root), tmp_path / "out"))), str(batch))
    assert not os.path.exists(tmp_path / "out" / "scores" / f"{RUN1}_losses.pickle")


def test_damaged_checkpoint_is_refused_on_resume_and_a_split_file_on_rerun(data, reference, tmp_path):
    """Stage 1 reads a checkpoint to resume and an existing split file; bit flips in tensor data included."""
    ckpt = tmp_path / "ckpt" / f"{RUN1}_last.pth"
    os.makedirs(ckpt.parent)
    with open(os.path.join(reference["s1"], "ckpt", f"{RUN1}_last.pth"), "rb") as f:
        raw = bytearray(f.read())
    raw[-len(raw) // 3] ^= 0x01  # one bit of some tensor: torch.load alone would not notice
    ckpt.write_bytes(bytes(raw))
    assert_user_error(cli(get_loss_values, *flag_args(s1_flags(data, tmp_path, resume_path=ckpt))),
                      str(ckpt), "checksum mismatch")
    ckpt.unlink()
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # the refused resume left no folder behind
    split = tmp_path / "splits" / f"{RUN1}_split.pkl"
    os.makedirs(split.parent)
    _damaged(os.path.join(reference["s1"], "splits", f"{RUN1}_split.pkl"), split, "half")
    assert_user_error(cli(get_loss_values, *flag_args(s1_flags(data, tmp_path))), str(split), "truncated")
    assert not os.path.exists(tmp_path / "scores" / f"{RUN1}_losses.pickle")


# ----------------------------------------------------------------------------- hostile files

def test_pickles_and_checkpoints_that_would_run_code_are_refused(data, reference, tmp_path):
    marker = tmp_path / "PWNED"
    evil = Payload(str(marker))

    def dump(name, obj) -> str:
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            pickle.dump(obj, f)
        return path

    loss = dump("losses.pickle", {"format": "cld-losses/1", "tr_loss": evil})
    assert_user_error(cli(compute_cld_scores, "--loss_path", loss), loss, "posix.system", "not loaded")
    legacy = dump("legacy.pickle", {"tr_loss": [[1.0]], "val_loss": [[1.0]], "tr_lbl": [[0]], "val_lbl": [[0]]})
    split = dump("split.pkl", {"train_indices": [0], "val_indices": evil})
    assert_user_error(cli(compute_cld_scores, "--loss_path", legacy, "--split_path", split), split, "posix.system")
    scores = dump("scores.pickle", {0: evil})
    assert_user_error(cli(train_on_coresets, *flag_args(s3_flags(data, scores, tmp_path))), scores, "posix.system")
    root = tmp_path / "data"
    shutil.copytree(data, root)
    batch = root / "cifar" / "cifar-10-batches-py" / "test_batch"
    with open(batch, "wb") as f:
        pickle.dump({"data": evil, "labels": [0]}, f, protocol=2)
    assert_user_error(cli(get_loss_values, *flag_args(s1_flags(str(root), tmp_path / "o"))), str(batch), "posix.system")

    # A checkpoint with a pickled callable, in the project's format otherwise.
    state = load_checkpoint(os.path.join(reference["s1"], "ckpt", f"{RUN1}_last.pth"))
    state["extra"]["hook"] = evil
    ckpt = str(tmp_path / "ckpt" / f"{RUN1}_last.pth")
    os.makedirs(os.path.dirname(ckpt))
    torch.save(state, ckpt)
    for proc in (cli(get_loss_values, *flag_args(s1_flags(data, tmp_path, resume_path=ckpt))),
                 cli(get_loss_values, *flag_args(s1_flags(data, tmp_path, resume_path=ckpt, evaluate_only=True))),
                 cli(train_on_coresets, *flag_args(s3_flags(data, reference["scores"], tmp_path, resume_path=ckpt)))):
        assert_user_error(proc, ckpt, "could run code", "posix.system")
        assert "weights_only" not in proc.stderr  # torch's advice to load it unsafely is not passed on
    assert not marker.exists()


def test_a_hostile_loss_file_from_the_real_command_line(tmp_path):
    """The same through a real interpreter (stage 2 starts fast): one line, exit 2, no payload run."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "losses.pickle"
    with open(path, "wb") as f:
        pickle.dump({"tr_loss": Payload(str(marker))}, f)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "compute_cld_scores.py"), "--loss_path", str(path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert_user_error(proc, str(path), "could run code")
    assert not marker.exists() and os.listdir(tmp_path) == ["losses.pickle"]


# ----------------------------------------------------------------------------- foreign files

def test_files_of_another_run_or_kind_are_refused_with_the_mismatch_named(data, reference, tmp_path):
    s1_last = os.path.join(reference["s1"], "ckpt", f"{RUN1}_last.pth")
    s3_last = os.path.join(reference["s3"], "ckpt", "run_last.pth")
    # Stage 2 given a checkpoint, a score file or a split file as its loss file.
    assert_user_error(cli(compute_cld_scores, "--loss_path", s1_last), s1_last, "zip archive", "checkpoint")
    assert_user_error(cli(compute_cld_scores, "--loss_path", reference["scores"]), "cld-scores/1", "not a loss file")
    split = os.path.join(reference["s1"], "splits", f"{RUN1}_split.pkl")
    assert_user_error(cli(compute_cld_scores, "--loss_path", split), "cld-split/1", "not a loss file")
    # Stage 3 given a loss file, or a score file of another dataset or class count.
    assert_user_error(cli(train_on_coresets, *flag_args(s3_flags(data, reference["loss"], tmp_path))),
                      "cld-losses/1", "not a score file")
    record = load_scores(reference["scores"])
    for change, fragments in (({"dataset": "CIFAR100"}, ["made on dataset CIFAR100, not CIFAR10"]),
                              ({"num_classes": 100}, ["CIFAR10 has 10 classes", "was made for 100"])):
        path = str(tmp_path / "other_scores.pickle")
        with open(path, "wb") as f:
            pickle.dump({**record, **change}, f)
        assert_user_error(cli(train_on_coresets, *flag_args(s3_flags(data, path, tmp_path, dataset="CIFAR10"))),
                          path, *fragments)
    # Resume / evaluate with a checkpoint of another model, seed, dataset or stage.
    cifar100 = str(tmp_path / "c100")
    write_fake_cifar(cifar100, "CIFAR100", per_class=4, test_per_class=1, num_classes=10)
    for flags, fragment in (
            (s1_flags(data, tmp_path, resume_path=s1_last, model_arch="resnet32"),
             "model_arch: checkpoint has 'resnet20', this run has 'resnet32'"),
            (s1_flags(data, tmp_path, resume_path=s1_last, manual_seed=7),
             "manual_seed: checkpoint has 1234, this run has 7"),
            (s1_flags(cifar100, tmp_path, resume_path=s1_last, dataset="CIFAR100"),
             "dataset: checkpoint has 'CIFAR10', this run has 'CIFAR100'"),
            (s1_flags(data, tmp_path, resume_path=s1_last, evaluate_only=True, model_arch="resnet32"),
             "model_arch: checkpoint has 'resnet20'")):
        assert_user_error(cli(get_loss_values, *flag_args(flags)), s1_last, "belongs to another run", fragment)
    stage1_resume = s3_flags(data, reference["scores"], tmp_path, resume_path=s1_last)
    assert_user_error(cli(train_on_coresets, *flag_args(stage1_resume)),
                      "written by get_loss_values.py (stage 1), not by train_on_coresets.py (stage 3)")
    assert_user_error(cli(get_loss_values, *flag_args(s1_flags(data, tmp_path, resume_path=s3_last))),
                      "written by train_on_coresets.py (stage 3), not by get_loss_values.py (stage 1)")
    # None of these refused runs wrote anything (a refused resume writes no split file either).
    assert not any(os.path.exists(tmp_path / d) and os.listdir(tmp_path / d) for d in ("scores", "splits", "logs", "res"))


# ----------------------------------------------------------------------------- existing outputs

def test_existing_outputs_are_never_replaced_silently(data, reference, tmp_path, capsys):
    # Stage 2: an existing score file.
    out = str(tmp_path / "CLD_copy_scores.pickle")
    shutil.copy(reference["scores"], out)
    assert_user_error(cli(compute_cld_scores, "--loss_path", reference["loss"], "--output_path", out),
                      out, "already exists", "--overwrite")
    # Stage 1: a log of an earlier run whose checkpoint is gone.
    os.makedirs(tmp_path / "logs")
    log = tmp_path / "logs" / f"{RUN1}.csv"
    shutil.copy(os.path.join(reference["s1"], "logs", f"{RUN1}.csv"), log)
    before = log.read_bytes()
    assert_user_error(cli(get_loss_values, *flag_args(s1_flags(data, tmp_path))), str(log), "--overwrite")
    assert log.read_bytes() == before
    # Stage 3: the same, and an existing result.
    os.makedirs(tmp_path / "s3" / "logs")
    shutil.copy(os.path.join(reference["s3"], "logs", "run.csv"), tmp_path / "s3" / "logs" / "run.csv")
    assert_user_error(cli(train_on_coresets, *flag_args(s3_flags(data, reference["scores"], str(tmp_path / "s3")))),
                      "run.csv", "--overwrite")
    result = os.path.join(reference["s3"], "res", "runs", "run.json")
    before = open(result, "rb").read()
    again = cli(train_on_coresets, *flag_args(s3_flags(data, reference["scores"], reference["s3"])))
    assert again.returncode == 0 and f"already complete: {result}" in again.stdout, again
    assert_user_error(cli(train_on_coresets, *flag_args(s3_flags(data, reference["scores"], reference["s3"],
                                                                 batch_size=4))),
                      result, "another recipe", "--batch_size", "--overwrite")
    assert open(result, "rb").read() == before
    # A *_best.pth alone (a run killed during its first checkpoint) is replaced, and the run says so.
    log.unlink()
    os.makedirs(tmp_path / "ckpt", exist_ok=True)
    best = tmp_path / "ckpt" / f"{RUN1}_best.pth"
    shutil.copy(os.path.join(reference["s1"], "ckpt", f"{RUN1}_best.pth"), best)
    capsys.readouterr()
    get_loss_values.main(**s1_flags(data, tmp_path, epochs=1))
    assert f"note: removed {best}" in capsys.readouterr().out
    assert check_loadable(tmp_path) == []


# ----------------------------------------------------------------------------- atomic writes

def test_stale_temporary_files_are_removed_but_not_those_being_written(tmp_path):
    target = str(tmp_path / "file.bin")
    stale = tmp_path / ".file.bin.dead.tmp"
    stale.write_bytes(b"half")
    live = tmp_path / ".file.bin.live.tmp"
    live.write_bytes(b"in progress")
    other = tmp_path / ".other.bin.x.tmp"
    other.write_bytes(b"not ours")
    with open(live, "rb") as held:  # a writer that is still alive holds its lock
        assert try_lock_descriptor(held.fileno())
        atomic_write(target, lambda f: f.write(b"new"))
        assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temps(target) == [str(live)]
    with open(target, "rb") as f:
        assert f.read() == b"new"
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


# ----------------------------------------------------------------------------- concurrent rows

def _write_results(args) -> None:
    results_dir, worker = args
    for i in range(25):
        name = f"run-{worker}-{i}"
        write_result(results_dir, name, {**{c: f"{c}-{worker}-{i}" for c in RESULT_COLUMNS}, "name": name,
                                         "score_path": f'Scores/a,b "q"\n{worker}-{i}.pickle',
                                         "best_test_acc": worker + i / 100})


def test_concurrent_result_rows_all_land_in_a_well_formed_csv(tmp_path, capsys):
    results = str(tmp_path / "res")
    path = os.path.join(results, "results.csv")
    with multiprocessing.get_context("fork").Pool(8) as pool:
        pool.map(_write_results, [(results, w) for w in range(8)])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(RESULT_COLUMNS) and len(rows) == 1 + 8 * 25
    assert all(len(r) == len(RESULT_COLUMNS) for r in rows)
    frame = pd.read_csv(path)
    assert list(frame.columns) == list(RESULT_COLUMNS) and len(frame) == 200
    assert sorted(frame["score_path"]) == sorted(f'Scores/a,b "q"\n{w}-{i}.pickle' for w in range(8) for i in range(25))
    # A results.csv of other columns (an older version's) is kept aside, and rebuilt from the runs.
    with open(path, "w") as f:
        f.write("a,b\n1,2\n")
    write_result(results, "one-more", {"name": "one-more", "best_test_acc": 1.0})
    assert "kept as" in capsys.readouterr().out
    assert len(pd.read_csv(path)) == 201 and open(path + ".bak").read() == "a,b\n1,2\n"
