"""What the scripts print is what they do: the training plan and its warnings, models that never fit
their coreset, the next command, reruns of finished runs, missing inputs, progress in a log file,
and help without a pager (the README's by-hand recipe: test_readme_blocks.py)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import pytest

import compute_cld_scores
import train_on_coresets
from conftest import REPO, assert_user_error, cli, flag_args, s3_flags
from utils.grid.runner import GridClock
from utils.grid.table import summarise, table_markdown
from utils.train.options import optimizer_steps, recipe_for_steps


def test_stage3_states_its_steps_warns_when_they_are_few_and_flags_a_model_that_did_not_fit(data, reference,
                                                                                           tmp_path):
    # 20 examples at batch 8 for 3 epochs: 3 batches an epoch, 9 steps.
    proc = cli(train_on_coresets, *flag_args(s3_flags(data, reference["scores"], tmp_path, threads=2)))
    assert proc.returncode == 0, proc.stderr
    assert "training plan: 9 optimizer steps (3 epochs x 3 batches of at most 8)" in proc.stdout
    assert "on cpu (2 threads; --threads to change)" in proc.stdout
    # Few steps alone are no warning (a small coreset may fit in few); they are advised against only
    # in the warning about a model that did not fit its coreset, after training.
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert "too few" not in proc.stderr
    with open(tmp_path / "res" / "runs" / "run.json") as f:
        saved = json.load(f)
    assert saved["optimizer_steps"] == 9 and saved["fit_threshold"] == 90.0
    assert saved["converged"] == (saved["final_train_acc"] >= 90.0)
    assert (len(warnings) == 1) == (not saved["converged"])
    if not saved["converged"]:
        assert "did not learn it" in warnings[0] and "recorded as converged false" in warnings[0]
        assert warnings[0].endswith("; it took only 9 optimizer steps (at least 100 are advised): e.g. --batch_size 1 "
                                    "--epochs 5 gives 100")
    # Any threshold above the accuracy reached flags the run, and the table marks its cell.
    strict = cli(train_on_coresets, *flag_args(s3_flags(data, reference["scores"], tmp_path / "b",
                                                        fit_threshold=100.0, epochs=1)))
    with open(tmp_path / "b" / "res" / "runs" / "run.json") as f:
        unfit = json.load(f)
    if unfit["final_train_acc"] < 100.0:
        assert unfit["converged"] is False and "below --fit_threshold 100" in strict.stderr
        assert "; it took only 3 optimizer steps (at least 100 are advised): e.g. --batch_size 1 --epochs 5" \
            in strict.stderr and "too few" not in strict.stderr
        row, = summarise([unfit])
        from utils.cli.config import GRID
        g = GRID.settings(dataset="CIFAR10", score_model_arch=["resnet20"], model_archs=["resnet20"],
                          samples_per_class=[2], epochs=1, score_epochs=3)
        md = table_markdown([{**row, "model_arch": "resnet20", "score_model_arch": "resnet20"}], g)
        assert " †" in md and "did not fit its coreset" in md


def test_steps_and_the_recipe_that_reaches_enough_of_them():
    assert optimizer_steps(130, 128, 8) == 16 and optimizer_steps(130, 10, 8) == 104
    assert optimizer_steps(45, 8, 2, world=2) == 2 * 3  # 23 examples a process, 3 batches
    assert recipe_for_steps(130, 128, 8) == (10, 8)
    assert recipe_for_steps(4, 128, 8) == (1, 25)
    assert recipe_for_steps(45000, 128, 164) == (128, 164)  # enough already: unchanged
    for n, b, e in ((130, 128, 8), (7, 64, 3), (1000, 512, 1)):
        batch, epochs = recipe_for_steps(n, b, e)
        assert optimizer_steps(n, batch, epochs) >= 100 and batch <= b and epochs >= e


def test_a_missing_loss_file_names_the_stage1_command_that_writes_it(tmp_path):
    path = tmp_path / "out" / "digits_digits_cnn_seed7_losses.pickle"
    assert_user_error(cli(compute_cld_scores, "--loss_path", str(path)), f"loss file {path} not found",
                      "python get_loss_values.py --dataset digits --model_arch digits_cnn --manual_seed 7 "
                      f"--scores_dir {path.parent}")
    sums = tmp_path / "CIFAR100_resnet18_seed1_cld_sums.npz"
    assert_user_error(cli(compute_cld_scores, "--loss_path", str(sums)), "get_loss_values.py", "--trajectories sums")
    assert not os.listdir(tmp_path)


def test_a_finished_stage3_run_restores_a_lost_results_row(data, reference, tmp_path):
    flags = s3_flags(data, reference["scores"], tmp_path)
    assert cli(train_on_coresets, *flag_args(flags)).returncode == 0
    csv_path = tmp_path / "res" / "results.csv"
    csv_path.unlink()  # as a kill between the run's JSON and its row would leave it
    proc = cli(train_on_coresets, *flag_args(flags))
    assert proc.returncode == 0 and "already complete:" in proc.stdout and "is restored" in proc.stdout
    assert "run," in csv_path.read_text()


def test_the_grid_clock_uses_each_stage_own_durations():
    clock = GridClock({1: 1, 2: 2, 3: 10}, jobs=2)
    assert "ETA ? (no stage-1 run timed yet)" in clock.text()
    clock.done(1, 600.0)
    assert "ETA ? (no stage-2 run timed yet)" in clock.text()
    clock.done(2, 4.0)
    assert "ETA ? (no stage-3 run timed yet)" in clock.text()
    clock.done(3, 10.0)
    assert clock.text().endswith("ETA 49s")  # 1 x 4 s + 9 x 10 s / 2 jobs
    assert (clock.finished, clock.total) == (3, 13)


@pytest.mark.parametrize("script", ["get_loss_values.py", "compute_cld_scores.py", "train_on_coresets.py",
                                    "reproduce_table.py"])
def test_help_on_a_terminal_opens_no_pager(script, tmp_path):
    """Under script(1) stdout is a terminal, where a pager would wait for a key."""
    command = f"{shlex.quote(sys.executable)} {shlex.quote(os.path.join(REPO, script))} --help"
    started = time.perf_counter()
    proc = subprocess.run(["script", "-qc", command, os.devnull], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert time.perf_counter() - started < 10 and proc.returncode == 0
    assert "INFO" not in proc.stdout and "usage: python" in proc.stdout and "--data_path" in proc.stdout
