"""Lock files exist only while held: a clean run leaves no ``.lock`` file, and removing a lock on
release never lets two processes hold it at once (utils/files/locks.py)."""
from __future__ import annotations

import contextlib
import glob
import io
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from utils.files import locks
from utils.files.locks import RunBusy, RunLock, busy, exclusive, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The spawned processes of the race test import this module: only light imports at its top.


def _locks_under(root: str) -> list[str]:
    """Every ``*.lock`` file under ``root`` (hidden ones too)."""
    return sorted(os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names
                  if name.endswith(".lock"))


# ----------------------------------------------------------------------------- a clean run

def test_a_clean_stage_1_run_leaves_no_lock_file(data, tmp_path):
    """A run (stage 1 here, stage 3 the same way) holds its lock for its whole life; after a tiny
    clean run (1 epoch, one batch, on the tiny CIFAR-10) no lock file is left in its folders."""
    import get_loss_values
    from conftest import s1_flags

    with contextlib.redirect_stdout(io.StringIO()):
        loss = get_loss_values.main(**s1_flags(data, tmp_path, epochs=1, batch_size=32))
    assert os.path.isfile(loss) and glob.glob(str(tmp_path / "ckpt" / "*_last.pth"))
    assert _locks_under(str(tmp_path)) == []


def test_results_csv_rewritten_under_its_lock_leaves_no_lock_file(tmp_path):
    from utils.coreset_training.results import write_result

    results = str(tmp_path / "res")
    write_result(results, "a", {"name": "a", "final_test_acc": 1.0})
    write_result(results, "b", {"name": "b", "final_test_acc": 2.0})
    assert sorted(os.listdir(results)) == ["results.csv", "runs"]
    assert _locks_under(str(tmp_path)) == []


def test_the_grid_lock_around_a_stage_2_output_is_gone_after_it(tmp_path):
    from utils.grid import runner
    from utils.grid.plan import Step

    step = Step(2, {}, str(tmp_path / "Scores" / "x_CLD.pickle"), str(tmp_path / "Scores" / "x_CLD.pickle.lock"))
    with runner._held(step):
        assert busy(step.lock)
    assert os.listdir(tmp_path / "Scores") == [] and not busy(step.lock)


# ----------------------------------------------------------------------------- held, released, stale

def test_a_held_lock_is_busy_and_a_released_one_leaves_no_file(tmp_path):
    path = str(tmp_path / "run.lock")
    lock = RunLock(path, "run x")
    assert os.path.exists(path) and f"process {os.getpid()}" in open(path).read()
    assert busy(path)
    with pytest.raises(RunBusy, match="run y is running in process"):
        RunLock(path, "run y")
    lock.release()
    assert not os.path.exists(path) and not busy(path)
    lock.release()  # twice: nothing more happens
    with exclusive(path):
        assert busy(path)
    assert os.listdir(tmp_path) == [] and not busy(path)


def test_busy_and_wait_for_create_no_file_and_busy_removes_a_stale_one(tmp_path):
    path = str(tmp_path / "sub" / "x.lock")
    assert not busy(path)
    wait_for(path)  # nobody holds it: returns at once
    assert not os.path.exists(tmp_path / "sub")
    os.makedirs(tmp_path / "sub")
    with open(path, "w") as f:  # left by a killed holder: no process holds it
        f.write("process 1 on elsewhere\n")
    assert not busy(path)
    assert not os.path.exists(path)


def test_a_killed_holder_leaves_its_file_unlocked_and_the_next_holder_removes_it(tmp_path):
    path = str(tmp_path / "x.lock")
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                              "from utils.files.locks import RunLock; lock = RunLock(sys.argv[2], 'x'); "
                              "print('held', flush=True); time.sleep(60)", REPO, path], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert busy(path)
    finally:
        child.kill()
        child.wait()
    assert os.path.exists(path)  # its file stays, but the kernel dropped its lock
    RunLock(path, "run x").release()
    assert not os.path.exists(path)


def test_a_lock_file_no_longer_at_its_path_is_let_go_and_taken_again(tmp_path, monkeypatch):
    """The file just locked is no longer the one the path names (moved away between open and lock,
    so the kernel still counts a name for it): it is let go, and the lock is taken on the file the
    path names now, the holder's name written only there."""
    path, moved = str(tmp_path / "x.lock"), str(tmp_path / "moved")
    real, seen = locks._names, []

    def names(p, fd):
        seen.append(os.fstat(fd).st_ino)
        if len(seen) == 1:
            os.rename(p, moved)
        return real(p, fd)

    monkeypatch.setattr(locks, "_names", names)
    lock = RunLock(path, "run x")
    assert seen[0] == os.stat(moved).st_ino != os.stat(path).st_ino == seen[1]
    assert open(moved).read() == "" and f"process {os.getpid()}" in open(path).read()
    lock.release()
    assert os.listdir(tmp_path) == ["moved"]


# ----------------------------------------------------------------------------- mutual exclusion

ROUNDS = 100


@contextlib.contextmanager
def _run_lock(path: str):
    """A RunLock taken as soon as it is free (tried again and again, never waited on)."""
    while True:
        try:
            held = RunLock(path, "the counter")
            break
        except RunBusy:
            time.sleep(0.0005)
    try:
        yield
    finally:
        held.release()


def _increment(path: str, counter: str, use_run_lock: bool) -> None:
    """ROUNDS times: take the lock, mark the section occupied (a second process inside fails at
    once), read the counter, yield the CPU, write it plus one; between rounds, probe the lock
    (busy() removes a file no process holds)."""
    inside = counter + ".inside"
    for _ in range(ROUNDS):
        with _run_lock(path) if use_run_lock else exclusive(path):
            os.close(os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # FileExistsError: two inside
            with open(counter) as f:
                value = int(f.read())
            time.sleep(0.0002)
            with open(counter, "w") as f:
                f.write(str(value + 1))
            os.unlink(inside)
        busy(path)


def test_processes_taking_and_removing_one_lock_never_hold_it_at_once(tmp_path):
    path, counter = str(tmp_path / "c.lock"), str(tmp_path / "count")
    with open(counter, "w") as f:
        f.write("0")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_increment, args=(path, counter, i % 2 == 0)) for i in range(4)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * 4
    assert int(open(counter).read()) == 4 * ROUNDS
    assert not os.path.exists(path)
