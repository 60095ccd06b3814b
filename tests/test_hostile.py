"""Robustness, round 2: recipe-safe resume, one writer per run, results that survive full disks,
no path injection, bounded loading, and no silent acceptance of bad input."""
from __future__ import annotations

import contextlib
import errno
import glob
import io
import os
import re
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import compute_cld_scores
import get_loss_values
import train_on_coresets
from conftest import REPO, assert_user_error, cli, flag_args, s1_flags, s3_flags
from fakedata import write_fake_cifar
from utils.errors import UserError
from utils.files.checkpoint import load_checkpoint
from utils.files.locks import RunBusy, RunLock
from utils.files.losses import load_losses
from utils.files.scores import load_scores
from utils.coreset_training.results import write_result

RUN1 = "CIFAR10_resnet20_seed1234"


def _pickle(path, obj) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return str(path)


def _tree(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


# ----------------------------------------------------------------------------- recipe-safe resume

def test_a_resume_with_another_recipe_is_refused_naming_each_field(data, reference, tmp_path):
    flags = s3_flags(data, reference["scores"], tmp_path, epochs=2)
    with contextlib.redirect_stdout(io.StringIO()):
        train_on_coresets.main(**flags)
    last = str(tmp_path / "ckpt" / "run_last.pth")
    resume = dict(flags, epochs=4, resume_path=last, overwrite=True)
    assert_user_error(cli(train_on_coresets, *flag_args(dict(resume, learning_rate=0.01, batch_size=7))),
                      "learning_rate: checkpoint has 0.1, this run has 0.01", "batch_size: checkpoint has 8, this run has 7")
    assert_user_error(cli(train_on_coresets, *flag_args(dict(resume, schedule="[3]"))), "schedule: checkpoint has")
    assert_user_error(cli(train_on_coresets, *flag_args(dict(resume, disable_nesterov=True))), "nesterov")
    # Only --epochs may grow; what the result records is what ran.
    with contextlib.redirect_stdout(io.StringIO()):
        result = train_on_coresets.main(**resume)
    assert (result["epochs"], result["learning_rate"], result["batch_size"], result["schedule"]) == (4, 0.1, 8, [81, 121])
    assert result["config"]["learning_rate"] == 0.1 and result["config"]["epochs"] == 4


# ----------------------------------------------------------------------------- one writer per run

def test_a_second_process_of_the_same_run_is_refused_at_once_naming_the_first(data, tmp_path):
    flags = s1_flags(data, tmp_path, epochs=400)
    first = subprocess.Popen([sys.executable, os.path.join(REPO, "get_loss_values.py"), *flag_args(flags)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "ckpt" / f"{RUN1}.lock"
    try:
        deadline = time.time() + 60
        while not (lock.exists() and f"process {first.pid}" in lock.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        started = time.perf_counter()
        second = subprocess.run([sys.executable, os.path.join(REPO, "get_loss_values.py"),
                                 *flag_args(dict(flags, learning_rate=0.05))], capture_output=True, text=True, timeout=120)
        assert_user_error(second, f"run {RUN1} is running in process {first.pid}", str(lock))
        assert time.perf_counter() - started < 30
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The dead process's lock is taken over by the next one.
    RunLock(str(lock), "run").release()


def test_a_lock_is_exclusive_while_its_process_lives_and_is_taken_over_after(tmp_path):
    path = str(tmp_path / "x.lock")
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                              "from utils.files.locks import RunLock; lock = RunLock(sys.argv[2], 'x'); print('held', flush=True); "
                              "time.sleep(60)", REPO, path], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(RunBusy, match=f"process {child.pid}"):
        RunLock(path, "run x")
    child.kill()
    child.wait()
    RunLock(path, "run x").release()


def test_two_grids_at_once_split_the_work(tmp_path):
    root = str(tmp_path)
    write_fake_cifar(os.path.join(root, "data"), "CIFAR10", per_class=6, test_per_class=2)
    args = [sys.executable, os.path.join(REPO, "reproduce_table.py"), "--dataset", "CIFAR10", "--score_model_arch",
            "resnet20", "--model_archs", "resnet20", "--methods", "cld,loss", "--orders", "top", "--samples_per_class",
            "2,3", "--seeds", "0,1", "--epochs", "3", "--schedule", "[]", "--device", "cpu", "--precision", "fp32",
            "--batch_size", "16", "--workers", "0", "--data_path", os.path.join(root, "data"), "--scores_dir",
            os.path.join(root, "S"), "--splits_dir", os.path.join(root, "Sp"), "--checkpoint_path",
            os.path.join(root, "C"), "--logpath", os.path.join(root, "L"), "--results_dir", os.path.join(root, "R")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    done = [line for out, _ in outs for line in out.splitlines() if re.match(r"=== \[\d+/\d+\] stage", line)
            and " done in " in line]
    assert sum(" stage 1 done" in line for line in done) == 1  # trained once, not twice
    assert sum(" stage 2 done" in line for line in done) == 2
    assert sum(" stage 3 done" in line for line in done) == 8
    rows = pd.read_csv(os.path.join(root, "R", "results.csv"))
    assert len(rows) == 8 and rows["name"].is_unique


# ----------------------------------------------------------------------------- full disks

@contextlib.contextmanager
def disk_full_for(fragment: str):
    """Writes of files whose name holds ``fragment`` fail as on a full disk, half-way."""
    real = os.fsync

    def fsync(fd):
        if fragment in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", fsync)
        yield


def test_a_full_disk_during_a_results_write_leaves_a_readable_csv(tmp_path):
    results = str(tmp_path / "res")
    write_result(results, "a", {"name": "a", "final_test_acc": 1.0})
    with disk_full_for("results.csv"), pytest.raises(UserError, match=r"result is written to .*runs/b.json, but its row "
                                                                       r".*is not: no space left to write .*results.csv "
                                                                       r"\([\d.]+ MB free in .*run the same command "
                                                                       r"again: it adds the row"):
        write_result(results, "b", {"name": "b", "final_test_acc": 2.0})
    assert pd.read_csv(os.path.join(results, "results.csv"))["name"].tolist() == ["a"]
    assert _tree(results) == ["results.csv", "runs/a.json", "runs/b.json"]  # no partial file
    write_result(results, "c", {"name": "c", "final_test_acc": 3.0})  # the next write restores b's row too
    assert pd.read_csv(os.path.join(results, "results.csv"))["name"].tolist() == ["a", "b", "c"]


def test_a_kill_between_the_result_and_its_row_is_repaired_by_the_next_write(tmp_path):
    results = str(tmp_path / "res")
    write_result(results, "a", {"name": "a"})
    os.makedirs(os.path.join(results, "runs"), exist_ok=True)
    with open(os.path.join(results, "runs", "killed.json"), "w") as f:  # its JSON landed, its row did not
        f.write('{"name": "killed", "final_test_acc": 5.0}')
    write_result(results, "b", {"name": "b"})
    frame = pd.read_csv(os.path.join(results, "results.csv"))
    assert frame["name"].tolist() == ["a", "b", "killed"] and frame["final_test_acc"].tolist()[2] == 5.0


def test_overwrite_replaces_its_own_row(tmp_path):
    results = str(tmp_path / "res")
    write_result(results, "a", {"name": "a", "final_test_acc": 1.0})
    write_result(results, "a", {"name": "a", "final_test_acc": 9.0})
    frame = pd.read_csv(os.path.join(results, "results.csv"))
    assert frame["name"].tolist() == ["a"] and frame["final_test_acc"].tolist() == [9.0]


def test_a_full_disk_during_a_checkpoint_is_one_error_line(data, tmp_path):
    with disk_full_for("_last.pth"):
        proc = cli(get_loss_values, *flag_args(s1_flags(data, tmp_path, epochs=1)))
    assert_user_error(proc, "no space left to write", f"{RUN1}_last.pth", "MB free")
    assert not [p for p in _tree(tmp_path) if p.endswith(".tmp") or p.endswith("_last.pth")]


# ----------------------------------------------------------------------------- names from files

@pytest.mark.parametrize("method", ["../../x/escaped", "x/y", "cld\0", "../x"])
def test_a_score_file_cannot_steer_paths(method, data, reference, tmp_path):
    record = load_scores(reference["scores"])
    path = _pickle(tmp_path / "evil.pickle", {**record, "method": method})
    flags = s3_flags(data, path, str(tmp_path / "out"))
    flags.pop("name")
    proc = cli(train_on_coresets, *flag_args(flags))
    assert_user_error(proc, "unknown method")
    assert _tree(tmp_path) == ["evil.pickle"]


def test_a_loss_file_cannot_steer_paths(reference, tmp_path):
    d = load_losses(reference["loss"])
    path = _pickle(tmp_path / "evil_losses.pickle", {**d, "model_arch": "../../escaped"})
    assert_user_error(cli(compute_cld_scores, "--loss_path", path), "cannot be part of a file name")
    assert _tree(tmp_path) == ["evil_losses.pickle"]


# ----------------------------------------------------------------------------- bounded loading

def test_a_shared_reference_bomb_is_refused_within_a_second(tmp_path):
    bomb = []
    for _ in range(40):
        bomb = [bomb, bomb]  # 2**40 leaves, a few hundred bytes pickled
    path = _pickle(tmp_path / "bomb_scores.pickle", {"0": bomb})
    started = time.perf_counter()
    with pytest.raises(UserError, match="declares more data than its .* bytes hold"):
        load_scores(path)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("payload,fragment", [
    (b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00\x80\x85R.", "builtins.bytearray"),
    (b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x80\x85R.", "with a size"),
    (b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x80\x85R.", "refusing"),
    (b"\x80\x02c__builtin__\nrange\nJ\x00\x00\x00\x80\x85R.", "builtins.range"),
])
def test_allocation_bombs_are_refused_before_allocating(payload, fragment, tmp_path):
    path = tmp_path / "small_scores.pickle"
    path.write_bytes(payload)
    started = time.perf_counter()
    with pytest.raises(UserError, match=fragment):
        load_scores(str(path))
    assert time.perf_counter() - started < 1.0


def test_labels_outside_the_classes_are_refused_before_anything_is_sized_by_them(reference, tmp_path):
    d = load_losses(reference["loss"])
    d["tr_lbl"] = d["tr_lbl"].copy()
    d["tr_lbl"][0] = 2 ** 40
    path = _pickle(tmp_path / "big_losses.pickle", d)
    started = time.perf_counter()
    with pytest.raises(UserError, match="holds class 1099511627776, outside 0..9"):
        load_losses(path)
    assert time.perf_counter() - started < 1.0


# ----------------------------------------------------------------------------- no silent acceptance

def _score_variant(reference, tmp_path, change) -> str:
    record = load_scores(reference["scores"])
    change(record)
    return _pickle(tmp_path / "variant_scores.pickle", record)


def test_a_score_file_missing_a_class_is_refused_unless_allowed(data, reference, tmp_path):
    def drop(r):
        del r["indices"][3], r["scores"][3]
    path = _score_variant(reference, tmp_path, drop)
    proc = cli(train_on_coresets, *flag_args(s3_flags(data, path, str(tmp_path / "o"), epochs=1)))
    assert_user_error(proc, "ranks no example of class 3", "--allow_missing_classes")
    with contextlib.redirect_stdout(io.StringIO()):
        result = train_on_coresets.main(**s3_flags(data, path, str(tmp_path / "o"), epochs=1, allow_missing_classes=True))
    assert result["coreset_size"] == 9 * 2


@pytest.mark.parametrize("change,fragment", [
    (lambda r: r["indices"].__setitem__(3.7, r["indices"].pop(3)) or r["scores"].__setitem__(3.7, r["scores"].pop(3)),
     "class key 3.7 is not a class id"),
    (lambda r: r["indices"].__setitem__("3", r["indices"].pop(3)) or r["scores"].__setitem__("3", r["scores"].pop(3)),
     "class key '3' is not a class id"),
    (lambda r: r["indices"].__setitem__((3,), r["indices"].pop(3)), "class key (3,) is not a class id"),
    (lambda r: r["scores"][2].__setitem__(0, np.nan), "class 2 holds NaN or infinite scores"),
    (lambda r: r.__setitem__("hard_end", "middle"), "hard_end 'middle'"),
])
def test_malformed_score_files_are_refused(change, fragment, data, reference, tmp_path):
    path = _score_variant(reference, tmp_path, change)
    proc = cli(train_on_coresets, *flag_args(s3_flags(data, path, str(tmp_path / "o"))))
    assert_user_error(proc, fragment)


@pytest.mark.parametrize("change,fragment", [
    (lambda d: d["train_indices"].__setitem__(1, d["train_indices"][0]), "is listed twice"),
    (lambda d: d["train_indices"].__setitem__(0, -5), "is negative (-5)"),
    (lambda d: d["val_indices"].__setitem__(0, d["train_indices"][0]), "is listed twice"),
])
def test_stage2_refuses_duplicate_or_negative_indices(change, fragment, reference, tmp_path):
    d = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in load_losses(reference["loss"]).items()}
    change(d)
    path = _pickle(tmp_path / "bad_losses.pickle", d)
    assert_user_error(cli(compute_cld_scores, "--loss_path", path), fragment)
    assert _tree(tmp_path) == ["bad_losses.pickle"]


@pytest.mark.parametrize("change,fragment", [
    (lambda s: s.__setitem__("epoch", -1), "epoch -1 is not a non-negative integer"),
    (lambda s: s.__setitem__("epoch", "3"), "epoch '3' is not a non-negative integer"),
    (lambda s: s.__setitem__("epoch", 50), "already holds 50 epochs"),
    (lambda s: s.__setitem__("best_acc", "high"), "best_acc 'high' is not an accuracy"),
    (lambda s: s.__setitem__("log", [{"epoch": "x"}] * 3), "its log is not 3 rows of numbers"),
    (lambda s: s.__setitem__("identity", "CIFAR10"), "'identity' is missing or not a dict"),
    (lambda s: s["identity"].__setitem__("dataset", {"a": 1}), "identity field 'dataset' holds dict"),
])
def test_crafted_checkpoints_are_refused_in_one_line(change, fragment, data, reference, tmp_path):
    state = load_checkpoint(os.path.join(reference["s1"], "ckpt", f"{RUN1}_last.pth"))
    change(state)
    ckpt = tmp_path / "ckpt" / f"{RUN1}_last.pth"
    os.makedirs(ckpt.parent)
    torch.save(state, ckpt)
    assert_user_error(cli(get_loss_values, *flag_args(s1_flags(data, tmp_path, resume_path=ckpt))), fragment)


def test_resuming_from_a_best_checkpoint_is_one_error_line(data, reference, tmp_path):
    best = os.path.join(reference["s1"], "ckpt", f"{RUN1}_best.pth")
    assert_user_error(cli(get_loss_values, *flag_args(s1_flags(data, tmp_path, resume_path=best))),
                      "is a *_best.pth", "resume from the run's *_last.pth")


def test_an_output_path_that_is_a_folder_is_refused_before_any_work(reference, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    assert_user_error(cli(compute_cld_scores, "--loss_path", reference["loss"], "--output_path", str(folder),
                          "--overwrite"), "is a folder")


# ----------------------------------------------------------------------------- stopping a grid

def _grid_in_its_own_session(tmp_path):
    root = str(tmp_path)
    write_fake_cifar(os.path.join(root, "data"), "CIFAR10", per_class=4, test_per_class=2)
    args = [sys.executable, os.path.join(REPO, "reproduce_table.py"), "--dataset", "CIFAR10", "--score_model_arch",
            "resnet20", "--model_archs", "resnet20", "--methods", "cld", "--orders", "top", "--samples_per_class",
            "2,3", "--seeds", "0,1,2,3", "--score_epochs", "3", "--epochs", "400", "--schedule", "[]", "--device",
            "cpu", "--precision", "fp32", "--batch_size", "16", "--workers", "0", "--jobs", "2",
            "--data_path", os.path.join(root, "data"), "--scores_dir", os.path.join(root, "S"), "--splits_dir",
            os.path.join(root, "Sp"), "--checkpoint_path", os.path.join(root, "C"), "--logpath", os.path.join(root, "L"),
            "--results_dir", os.path.join(root, "R")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 240
    while time.time() < deadline and len(glob.glob(os.path.join(root, "C", "*coreset*_last.pth"))) < 2:
        time.sleep(0.2)  # both workers are training (each has written a checkpoint)
    assert proc.poll() is None, proc.stderr.read()
    return proc, root


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("how", ["sigterm to the main process", "ctrl-c to the process group"])
def test_a_grid_stops_at_once_and_leaves_no_process_behind(how, tmp_path):
    proc, root = _grid_in_its_own_session(tmp_path)
    started = time.time()
    if how.startswith("sigterm"):
        os.kill(proc.pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=30)
    stopped = time.time() - started
    deadline = time.time() + 5
    while _alive(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(proc.pid), "a process of the grid outlived it by 5 s"
    assert stopped < 5 and proc.returncode == 130, (stopped, proc.returncode)
    results = glob.glob(os.path.join(root, "R", "runs", "*.json"))
    assert len(results) == 0  # 400-epoch runs: none finished, none queued one started after the stop
    from utils.files.checkpoint import load_checkpoint

    assert all(load_checkpoint(p)["epoch"] >= 1 for p in glob.glob(os.path.join(root, "C", "*coreset*_last.pth")))


# ----------------------------------------------------------------------------- round 3

def test_a_stage3_run_killed_right_after_its_json_gets_its_row_on_rerun(data, reference, tmp_path):
    from test_robustness import run_killed

    flags = s3_flags(data, reference["scores"], tmp_path)
    run_killed("train_on_coresets.py", flags, "between('run.json', 1, 'results.csv')")
    assert os.path.exists(tmp_path / "res" / "runs" / "run.json") and not os.path.exists(tmp_path / "res" / "results.csv")
    for extra in ({}, {"resume_path": str(tmp_path / "ckpt" / "run_last.pth")}):
        proc = cli(train_on_coresets, *flag_args({**flags, **extra}))
        assert proc.returncode == 0 and "already complete" in proc.stdout, proc
        assert pd.read_csv(tmp_path / "res" / "results.csv")["name"].tolist() == ["run"]
    assert not glob.glob(str(tmp_path / "res" / ".results.csv.*.tmp"))


def _peak_rss_mb_of(code: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``code`` in a fresh interpreter; (process, its peak RSS in MB, its RSS in MB before ``code``)."""
    wrapper = ("import resource, sys, time; sys.path.insert(0, %r)\n"
               "from utils.cli.entry import run_cli\nimport compute_cld_scores, train_on_coresets, get_loss_values\n"
               "import torch, models, sklearn.datasets, utils.collect.collect_losses, utils.files.checkpoint  # a stage's baseline\n"
               "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\nt0 = time.time()\n%s\n"
               "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, base, time.time() - t0)"
               % (REPO, code))
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=120, cwd=REPO)
    peak, base, seconds = (float(x) for x in proc.stdout.split("PEAK")[1].split())
    return proc, peak - base, seconds


def test_a_hex_codec_pickle_bomb_is_refused_cheaply(tmp_path):
    # bytes rebuilt through _codecs.encode(..., 'hex') nested 29 times: 400 bytes asking for gigabytes
    inner = pickle.dumps(b"ab", protocol=2)
    body = b"\x80\x02" + b"c_codecs\nencode\n" * 29 + inner[2:-1]
    for _ in range(29):
        body += b"X\x03\x00\x00\x00hex\x86R"
    path = tmp_path / "bomb_losses.pickle"
    path.write_bytes(body + b".")
    proc, grown, seconds = _peak_rss_mb_of(
        f"print(run_cli(compute_cld_scores.main, ['--loss_path', {str(path)!r}]))")
    assert "refusing to call _codecs.encode with 'hex'" in proc.stderr and proc.stdout.startswith("2")
    assert grown < 200 and seconds < 2


def test_a_deflate_bomb_checkpoint_and_npz_are_refused_before_inflating(tmp_path):
    import zipfile

    bomb = tmp_path / "bomb_last.pth"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data.pkl", "w", force_zip64=True) as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(1024):
                f.write(chunk)
    assert bomb.stat().st_size < 5 << 20
    proc, grown, seconds = _peak_rss_mb_of(
        f"print(run_cli(get_loss_values.main, ['--evaluate_only', '--resume_path', {str(bomb)!r}, '--dataset', 'digits']))")
    assert "declares 1073741824 bytes" in proc.stderr and proc.stdout.startswith("2"), proc.stderr
    assert grown < 200 and seconds < 2
    from utils.errors import UserError as Refused
    from utils.files.npz import load_npz

    npz = tmp_path / "extra.npz"
    np.savez(npz, epochs=np.array(3))
    with zipfile.ZipFile(npz, "a") as z:
        z.writestr("junk.npy", b"x" * 100)
    with pytest.raises(Refused, match="unexpected member 'junk.npy'"):
        load_npz(str(npz), "CLD sums", ["epochs"])


@pytest.mark.parametrize("field,value,message", [
    ("checkpoints", {"last": "x", "snapshots": {"one": "x.pth"}}, "checkpoints.snapshots has the entry 'one'"),
    ("config", "a string", "'config' is not a dict of flags by name"),
    ("config", {"learning_rate": "abc"}, "its recorded config is corrupt (learning_rate = 'abc')"),
])
def test_crafted_loss_file_metadata_is_one_line(field, value, message, reference, tmp_path):
    d = load_losses(reference["loss"])
    path = _pickle(tmp_path / "crafted_losses.pickle", {**d, field: value})
    for method in ("herding", "glister", "cld"):
        assert_user_error(cli(compute_cld_scores, "--loss_path", path, "--method", method, "--device", "cpu"), message)


def test_a_cifar_batch_with_string_labels_is_one_line(tmp_path):
    root = str(tmp_path / "data")
    write_fake_cifar(root, "CIFAR10", per_class=2, test_per_class=1)
    batch = os.path.join(root, "cifar", "cifar-10-batches-py", "data_batch_1")
    with open(batch, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    d["labels"] = [str(x) for x in d["labels"]]
    with open(batch, "wb") as f:
        pickle.dump(d, f, protocol=2)
    proc = cli(get_loss_values, *flag_args(s1_flags(root, tmp_path / "out")))
    assert_user_error(proc, "data_batch_1", "'labels' holds", "not one integer label per image")


def test_a_symlinked_lock_or_trajectory_folder_is_refused_and_its_target_untouched(data, tmp_path):
    flags = s1_flags(data, tmp_path)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    os.makedirs(tmp_path / "ckpt")
    os.symlink(target, tmp_path / "ckpt" / f"{RUN1}.lock")
    assert_user_error(cli(get_loss_values, *flag_args(flags)), f"{RUN1}.lock is a symbolic link")
    assert target.read_text() == "keep me"
    os.remove(tmp_path / "ckpt" / f"{RUN1}.lock")
    os.makedirs(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", tmp_path / "ckpt" / f"{RUN1}_trajectories")
    assert_user_error(cli(get_loss_values, *flag_args(flags)), f"{RUN1}_trajectories is a symbolic link")
    assert os.listdir(tmp_path / "elsewhere") == []


def test_a_foreign_json_in_the_runs_folder_is_a_warning_before_training(data, reference, tmp_path):
    os.makedirs(tmp_path / "res" / "runs")
    (tmp_path / "res" / "runs" / "list.json").write_text("[1,2]")
    proc = cli(train_on_coresets, *flag_args(s3_flags(data, reference["scores"], tmp_path)))
    assert proc.returncode == 0, proc.stderr
    warning = next(line for line in proc.stderr.splitlines() if "list.json" in line)
    assert warning.startswith("warning: ") and "results.csv leaves it out" in warning
    assert pd.read_csv(tmp_path / "res" / "results.csv")["name"].tolist() == ["run"]


@pytest.mark.parametrize("schedule,message", [("[5,2]", "strictly increasing"), ("[3,3]", "strictly increasing"),
                                              ("[0,2]", "epochs of 1 or more")])
def test_a_schedule_out_of_order_is_refused(schedule, message, tmp_path):
    assert_user_error(cli(get_loss_values, "--schedule", schedule, "--dataset", "digits"), "--schedule", message)
    assert_user_error(cli(train_on_coresets, "--schedule", schedule), "--schedule", message)


def test_a_refused_run_leaves_no_folder_it_made(data, tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    flags = {**s1_flags(data, tmp_path), "scores_dir": str(tmp_path / "blocker" / "scores")}
    assert_user_error(cli(get_loss_values, *flag_args(flags)), "cannot create folder", "blocker/scores")
    assert sorted(os.listdir(tmp_path)) == ["blocker"]  # not the checkpoint and log folders made before it
