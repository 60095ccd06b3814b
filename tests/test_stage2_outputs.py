"""Stage 2 writes each output once and only when every part of the command holds: racing writers
of one score file (exactly one succeeds), flags checked against the loss file before the first file
is written, and no figure, table or export replaced without --overwrite."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import compute_cld_scores
from conftest import REPO, assert_user_error
from test_robustness import cli
from utils.files.scores import load_scores


def _run(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(REPO, "compute_cld_scores.py"), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_racing_writers_of_one_score_file_never_both_succeed(reference, tmp_path):
    for trial in range(3):
        out = str(tmp_path / f"out{trial}.pickle")
        procs = {m: _run("--loss_path", reference["loss"], "--method", m, "--output_path", out) for m in ("cld", "loss")}
        results = {m: (p.wait(timeout=120), p.stderr.read()) for m, p in procs.items()}
        winners = [m for m, (code, _) in results.items() if code == 0]
        assert len(winners) == 1, results
        loser = next(m for m in results if m not in winners)
        assert results[loser][0] == 2 and ("created by another process meanwhile" in results[loser][1]
                                            or "already exists" in results[loser][1]), results[loser]
        assert load_scores(out)["method"] == winners[0]
        assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


@pytest.mark.parametrize("case", ["class", "file_parent", "folder", "epochs", "budget", "unwritable"])
def test_a_flag_that_fails_on_the_loss_file_is_refused_before_anything_is_written(reference, tmp_path, case):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.png").mkdir()
    out = str(tmp_path / "s.pickle")
    args, message = {
        "class": (["--figure", str(tmp_path / "f.png"), "--figure_class", "10"], "--figure_class 10 is not a class"),
        "file_parent": (["--figure", str(tmp_path / "afile" / "f.png")], "is a file, so no folder"),
        "folder": (["--figure", str(tmp_path / "adir.png")], "is a folder"),
        "epochs": (["--stability", "--stability_epochs", "[1000]"], "--stability_epochs 1000"),
        "budget": (["--stability", "--stability_k", "[5000]"], "--stability_k 5000 is not smaller than class"),
        "unwritable": (["--figure", "/proc/f.png"], "the folder /proc is not writable"),
    }[case]
    before = sorted(os.listdir(tmp_path))
    assert_user_error(cli(compute_cld_scores, "--loss_path", reference["loss"], "--output_path", out, *args), message)
    assert sorted(os.listdir(tmp_path)) == before


def test_a_figure_a_stability_table_or_an_export_is_not_replaced_without_overwrite(reference, tmp_path):
    out = str(tmp_path / "s.pickle")
    table = str(tmp_path / "s_stability.csv")
    for existing, args in ((str(tmp_path / "f.png"), ["--figure", str(tmp_path / "f.png")]),
                           (table, ["--stability"]),
                           (str(tmp_path / "k.npy"), ["--export_coreset", str(tmp_path / "k.npy"), "--fraction", "0.5"])):
        with open(existing, "w") as f:
            f.write("mine")
        assert_user_error(cli(compute_cld_scores, "--loss_path", reference["loss"], "--output_path", out, *args),
                          f"{existing} already exists")
        assert open(existing).read() == "mine" and not os.path.exists(out)
        os.remove(existing)
    proc = cli(compute_cld_scores, "--loss_path", reference["loss"], "--output_path", out, "--stability")
    assert proc.returncode == 0 and os.path.exists(table)
    shutil.copy(table, table + ".first")
    proc = cli(compute_cld_scores, "--loss_path", reference["loss"], "--output_path", out, "--stability", "--overwrite")
    assert proc.returncode == 0 and open(table).read() == open(table + ".first").read()


def test_an_emitted_script_is_never_replaced(tmp_path):
    import reproduce_table
    from test_reproduce_table import grid_flags

    script = tmp_path / "grid.sh"
    script.write_text("# mine\n")
    flags = {**grid_flags(str(tmp_path)), "emit_script": str(script)}
    args = [item for key, value in flags.items() for item in (f"--{key}", ",".join(map(str, value))
                                                              if isinstance(value, list) else str(value))]
    assert_user_error(cli(reproduce_table, *args), f"--emit_script {script} already exists")
    assert script.read_text() == "# mine\n"


@pytest.mark.parametrize("stage", [1, 3])
def test_a_symlinked_output_of_a_run_is_refused_in_one_line(reference, data, tmp_path, stage):
    import get_loss_values
    import train_on_coresets
    from conftest import flag_args, s1_flags, s3_flags

    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    if stage == 1:
        flags = s1_flags(data, tmp_path)
        os.makedirs(flags["scores_dir"])
        link = os.path.join(flags["scores_dir"], "CIFAR10_resnet20_seed1234_losses.pickle")
        module = get_loss_values
    else:
        flags = s3_flags(data, reference["scores"], str(tmp_path))
        os.makedirs(os.path.join(flags["results_dir"], "runs"))
        link = os.path.join(flags["results_dir"], "runs", "run.json")
        module = train_on_coresets
    os.symlink(target, link)
    assert_user_error(cli(module, *flag_args(flags)), f"{link} is a symbolic link")
    assert target.read_bytes() == b""


def test_a_figure_of_a_sums_file_and_flags_for_outputs_not_asked_for_are_refused_before_writing(reference, tmp_path):
    import numpy as np

    from cld_recorder import LossRecorder

    rng = np.random.default_rng(0)
    rec = LossRecorder(str(tmp_path / "rec"), np.arange(30) % 3, np.arange(9) % 3, epochs=4, trajectories="sums")
    for _ in range(4):
        rec.add_epoch(rng.random(30), rng.random(9))
    sums = rec.finish()
    out = str(tmp_path / "s.pickle")
    for args, message in (([sums, "--figure", str(tmp_path / "f.png"), "--export_coreset", str(tmp_path / "k.npy"),
                            "--fraction", "0.5"], 'trajectories="full"'),
                          ([reference["loss"], "--figure_class", "1"], "--figure_class chooses the class --figure"),
                          ([reference["loss"], "--stability_epochs", "[3]"], "give --stability too")):
        before = sorted(os.listdir(tmp_path))
        assert_user_error(cli(compute_cld_scores, "--loss_path", *args[:1], "--output_path", out, *args[1:]), message)
        assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("args, message", [
    (["--el2n_epochs", "3"], "--el2n_epochs is an option of el2n; cld does not read it"),
    (["--snapshot_epoch", "2"], "--snapshot_epoch is an option of the model methods; cld does not read it"),
    (["--method", "herding", "--first_epochs", "2"],
     "--first_epochs is an option of the trajectory methods; herding does not read it"),
    (["--method", "el2n", "--cal_neighbors", "3"], "--cal_neighbors is an option of cal; el2n does not read it"),
    (["--method", "loss", "--seed", "3"], "--seed is an option of random, kcenter, contextual_diversity; loss"),
])
def test_an_option_of_another_method_is_refused_not_ignored(reference, tmp_path, args, message):
    out = str(tmp_path / "s.pickle")
    assert_user_error(cli(compute_cld_scores, "--loss_path", reference["loss"], "--output_path", out, *args), message)
    assert not os.path.exists(out)
