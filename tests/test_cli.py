"""The command line of every script: typed flags checked before any work, one-line errors, help,
progress in a log file."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

import compute_cld_scores
import get_loss_values
import reproduce_table
import train_on_coresets
from conftest import REPO, assert_user_error, run_script
from fakedata import write_fake_cifar
from utils.cli import config
from utils.cli.entry import run_cli
from utils.errors import UserError

SCRIPTS = {"get_loss_values.py": config.STAGE1, "compute_cld_scores.py": config.STAGE2,
           "train_on_coresets.py": config.STAGE3, "reproduce_table.py": config.GRID}


@pytest.mark.parametrize("script,typo,meant", [
    ("train_on_coresets.py", "--lr", "--learning_rate"),
    ("compute_cld_scores.py", "--metod", "--method"),
    ("get_loss_values.py", "--epoch", "--epochs"),
    ("reproduce_table.py", "--sample_per_class", "--samples_per_class"),
])
def test_a_mistyped_flag_is_refused_at_once_and_writes_nothing(script, typo, meant, tmp_path):
    started = time.perf_counter()
    proc = run_script(script, typo, "1", "--dataset", "digits", cwd=str(tmp_path))
    seconds = time.perf_counter() - started
    assert_user_error(proc, f"unknown flag {typo} (did you mean {meant}?)")
    assert os.listdir(tmp_path) == [] and seconds < 10  # interpreter start-up included; no torch import


@pytest.mark.parametrize("bench", ["bench_training.py", "bench_scores.py", "bench_methods.py"])
def test_benchmarks_refuse_a_mistyped_flag_in_one_line(bench, tmp_path):
    proc = run_script(os.path.join("bench", bench), "--smal", cwd=str(tmp_path), timeout=120)
    assert_user_error(proc, "unknown flag --smal", "did you mean --small?")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args,fragment", [
    (["--epochs", "abc"], "--epochs takes an integer, got 'abc'"),
    (["--epochs", "1.9"], "--epochs takes an integer, got '1.9'"),
    (["--epochs", "10000000000"], "--epochs must lie in [1, 100000], got 10000000000"),
    (["--schedule", "foo"], "--schedule takes an integer, got 'foo'"),
    (["--learning_rate", "abc"], "--learning_rate takes a number, got 'abc'"),
    (["--learning_rate", "nan"], "--learning_rate must be a finite number"),
    (["--workers", "abc"], "--workers takes an integer"),
    (["--val_split_ratio", "abc"], "--val_split_ratio takes a number"),
    (["--manual_seed", "1.5"], "--manual_seed takes an integer, got '1.5'"),
    (["--device", "meta"], "unknown --device 'meta'; use auto, cpu, cuda or cuda:N"),
    (["--download", "maybe"], "--download takes true/false, yes/no or 1/0"),
    (["--overwrite", "no", "extra"], "unexpected argument 'extra'"),
    (["positional"], "unexpected argument 'positional'"),
    (["--epochs", "3", "--epochs", "4"], "--epochs is given twice"),
    (["--epochs"], "--epochs needs a value"),
])
def test_values_fire_would_misread_are_refused(args, fragment):
    with pytest.raises(UserError) as err:
        config.STAGE1.settings(config.STAGE1.parse_argv(args))
    assert fragment in str(err.value)


def test_stage3_values_and_names():
    parse = config.STAGE3.parse_argv
    with pytest.raises(UserError, match="--fraction takes a number, got 'abc'"):
        parse(["--fraction", "abc"])
    with pytest.raises(UserError, match="cannot be part of a file name"):
        parse(["--name", "[1,2]"])
    with pytest.raises(UserError, match="cannot be part of a file name"):
        parse(["--name", "../escape"])
    # Folder flags are text even when they look like numbers or lists.
    assert parse(["--results_dir", "2024", "--data_path", "1e3", "--logpath", "a,b"]) == \
        {"results_dir": "2024", "data_path": "1e3", "logpath": "a,b"}


@pytest.mark.parametrize("words,value", [
    ([], True), (["true"], True), (["True"], True), (["YES"], True), (["1"], True),
    (["false"], False), (["No"], False), (["0"], False), (["=false"], False), (["=no"], False)])
def test_booleans_accept_true_false_yes_no_1_0_and_the_bare_flag(words, value):
    argv = ["--overwrite" + words[0]] if words and words[0].startswith("=") else ["--overwrite", *words]
    assert config.STAGE2.parse_argv(argv) == {"overwrite": value}


def test_a_no_prefix_turns_a_boolean_off():
    assert config.STAGE2.parse_argv(["--nooverwrite"]) == {"overwrite": False}


def test_overwrite_no_leaves_an_existing_output_untouched(tmp_path):
    from test_compute_cld_scores import run_losses
    from utils.files.losses import save_losses

    loss = str(tmp_path / "CIFAR10_resnet18_seed7_losses.pickle")
    save_losses(loss, run_losses())
    out = tmp_path / "x.pickle"
    out.write_bytes(b"precious")
    for word in ("no", "false", "0", "False"):
        proc = run_script("compute_cld_scores.py", "--loss_path", loss, "--output_path", str(out), "--method",
                          "loss", "--overwrite", word)
        assert_user_error(proc, "already exists; pass --overwrite")
    proc = run_script("compute_cld_scores.py", "--loss_path", loss, "--output_path", str(out), "--method", "loss",
                      "--overwrite=no")
    assert_user_error(proc, "already exists")
    assert out.read_bytes() == b"precious"


def test_keyword_calls_are_checked_like_the_command_line():
    with pytest.raises(UserError, match="unknown flag --lr .did you mean --learning_rate"):
        train_on_coresets.main(lr=0.01)
    with pytest.raises(UserError, match="--epochs takes an integer, got 1.9"):
        get_loss_values.main(epochs=1.9)


# ----------------------------------------------------------------------------- help

@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_lists_every_flag_once_with_its_own_help(script):
    proc = run_script(script, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "INFO" not in text and proc.stderr == ""  # no pager notice: the help is printed, not paged
    flagset = SCRIPTS[script]
    entries = re.findall(r"^ {4}(?:-\w, )?--(\w+)=", text, flags=re.M)
    assert entries == [f.name for f in flagset]  # one entry per flag, in order, no stray ones
    for flag in flagset:
        block = text.split(f"--{flag.name}=")[1].split("\n    -")[0]
        # each entry holds its own help, not a list of other flags (grouped entries garbled help)
        assert " ".join(flag.help.split())[:40] in " ".join(block.split()), flag.name
        names = "|".join(f.name for f in flagset)
        assert not re.search(rf"\b(?:{names})\b,\s*\b(?:{names})\b,\s*\b(?:{names})\b", block), flag.name


# ----------------------------------------------------------------------------- progress

def test_a_run_writing_to_a_file_shows_each_epoch_as_it_ends(tmp_path):
    """`python get_loss_values.py ... > log.txt &`: the first epoch's line is in the file while the run goes on."""
    data = str(tmp_path / "data")
    write_fake_cifar(data, "CIFAR10", per_class=8, test_per_class=2)
    log = tmp_path / "log.txt"
    args = [sys.executable, os.path.join(REPO, "get_loss_values.py"), "--data_path", data, "--dataset", "CIFAR10",
            "--model_arch", "resnet20", "--epochs", "60", "--device", "cpu", "--workers", "0", "--download", "false",
            "--batch_size", "16", "--scores_dir", str(tmp_path / "s"), "--splits_dir", str(tmp_path / "sp"),
            "--checkpoint_path", str(tmp_path / "c"), "--logpath", str(tmp_path / "l")]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=str(tmp_path))
        try:
            deadline = time.time() + 120
            while "epoch 1/60" not in log.read_text() and time.time() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert proc.poll() is None, log.read_text()  # still running
            line = next(x for x in log.read_text().splitlines() if x.startswith("epoch 1/60"))
        finally:
            proc.kill()
            proc.wait()
    assert re.search(r"train loss [\d.]+ acc [\d.]+%  test loss [\d.]+ acc [\d.]+%", line)
    assert re.search(r"\([\d.]+s train, [\d.]+s test, [\d.]+s collect; ETA \d", line)
    assert "\r" not in log.read_text() and "it/s" not in log.read_text()  # no progress bars in a file


def test_stage3_before_stage2_names_the_command_and_leaves_no_folder(tmp_path):
    from test_compute_cld_scores import run_losses
    from utils.files.losses import save_losses

    scores = tmp_path / "Scores"
    loss = scores / "CIFAR10_resnet18_seed7_losses.pickle"
    save_losses(str(loss), run_losses())
    proc = run_script("train_on_coresets.py", "--score_path", str(scores / "FORGETTING_CIFAR10_resnet18_seed7_scores.pickle"),
                      cwd=str(tmp_path))
    assert_user_error(proc, "not found; make it with: python compute_cld_scores.py --loss_path",
                      str(loss), "--method forgetting")
    proc = run_script("train_on_coresets.py", cwd=str(tmp_path))  # the default path of the chain
    assert_user_error(proc, "Scores/CLD_CIFAR100_resnet18_seed1234_scores.pickle not found",
                      "run get_loss_values.py (stage 1), then compute_cld_scores.py (stage 2)")
    assert sorted(os.listdir(tmp_path)) == ["Scores"] and os.listdir(scores) == [loss.name]


def test_the_scripts_main_is_thin():
    import inspect

    for module in (get_loss_values, compute_cld_scores, train_on_coresets, reproduce_table):
        assert len(inspect.getsource(module.main).splitlines()) < 60, module.__name__
    assert run_cli(train_on_coresets.main, ["--lr", "1"]) == 2


def test_the_flag_reference_is_generated_from_the_flag_records():
    from utils.cli.reference import REFERENCE, flag_reference

    with open(REFERENCE) as f:
        assert f.read() == flag_reference(), "docs/flags.md is stale: run python -m utils.cli.reference"
    for _, flagset, _ in __import__("utils.cli.reference", fromlist=["SCRIPTS"]).SCRIPTS:
        for flag in flagset:
            assert f"| `--{flag.name}` |" in flag_reference()


def test_a_command_line_is_parsed_by_fire_with_the_flags_own_types(monkeypatch):
    import fire

    import utils.cli.stages
    import utils.scoring.compute_scores

    commands, seen = [], []
    real = fire.Fire
    monkeypatch.setattr(fire, "Fire", lambda *a, **k: commands.append(k["command"]) or real(*a, **k))
    scored = utils.scoring.compute_scores.Scored("out.pickle", {}, {})
    monkeypatch.setattr(utils.scoring.compute_scores, "score", lambda options: seen.append(options) or scored)
    monkeypatch.setattr(utils.cli.stages, "next_command", lambda *a: ("python train_on_coresets.py", ""))
    argv = ["--method", "aum", "--first_epochs", "5", "--output_path", "007", "--nooverwrite"]
    assert run_cli(compute_cld_scores.main, argv) == 0
    assert commands == [argv]
    assert (seen[0].method, seen[0].first_epochs, seen[0].output_path, seen[0].overwrite) == ("aum", 5, "007", False)
    assert run_cli(compute_cld_scores.main, ["--first_epochs", "5.5"]) == 2 and len(commands) == 2  # Fire's parse fn refused it
    assert run_cli(compute_cld_scores.main, ["--frist_epochs", "5"]) == 2 and len(commands) == 2  # refused before Fire


def test_each_stage_takes_one_typed_field_per_flag_of_its_script_with_the_flags_default():
    import dataclasses

    from utils.collect.options import CollectOptions
    from utils.coreset_training.options import CoresetOptions
    from utils.scoring.options import ScoreOptions

    for flags, record in ((config.STAGE1, CollectOptions), (config.STAGE2, ScoreOptions),
                          (config.STAGE3, CoresetOptions)):
        assert [f.name for f in dataclasses.fields(record)] == [flag.name for flag in flags], record.__name__
        defaults = dataclasses.asdict(record())
        assert {flag.name: flag.default for flag in flags} == defaults, record.__name__
