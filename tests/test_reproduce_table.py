"""reproduce_table.py / utils/grid/: a tiny grid end to end on a fake CIFAR-10, its table, its
resumption after a kill, its dry run and its emitted script, and the grid's reach over every flag
of every stage."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shlex
import statistics
import re
import subprocess
import sys

import pytest

import compute_cld_scores
import get_loss_values
import reproduce_table
import train_on_coresets
import utils.cli.stages
import utils.collect.collect_losses
import utils.coreset_training.train_on_coreset
import utils.scoring.compute_scores
from fakedata import write_fake_cifar
from utils.cli import config
from utils.cli.config import GRID
from utils.cli.entry import run_cli
from utils.errors import UserError
from utils.grid import plan as grid, runner, table
from utils.methods import registry as methods

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def grid_flags(root: str) -> dict:
    """2 methods x 2 sizes x 2 seeds, 3 scoring epochs (CLD needs 3), 1 training epoch."""
    return dict(
        dataset="CIFAR10", score_model_arch="resnet20", model_archs="resnet20", methods=["cld", "loss"],
        orders="top", samples_per_class=[2, 4], seeds=[0, 1], score_epochs=3, epochs=1, schedule=[],
        data_path=os.path.join(root, "data"), device="cpu", precision="fp32", batch_size=32, test_batch_size=64,
        workers=0, scores_dir=os.path.join(root, "Scores"), splits_dir=os.path.join(root, "Splits"),
        checkpoint_path=os.path.join(root, "Checkpoint"), logpath=os.path.join(root, "Logs"),
        results_dir=os.path.join(root, "Results"),
    )


class Counter:
    """Wraps runner.run_stage and remembers every (stage, flags) it ran."""

    def __init__(self):
        self.calls: list[tuple[int, dict]] = []
        self.real = runner.run_stage

    def __call__(self, stage, flags):
        self.calls.append((stage, dict(flags)))
        return self.real(stage, flags)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The grid run once; an unrelated earlier run sits in the same results folder."""
    root = str(tmp_path_factory.mktemp("grid"))
    write_fake_cifar(os.path.join(root, "data"), "CIFAR10", per_class=10, test_per_class=3)
    flags = grid_flags(root)
    stray = os.path.join(flags["results_dir"], "runs", "CIFAR10_resnet20_coreset_cld_top_k2_seed7.json")
    os.makedirs(os.path.dirname(stray))
    with open(stray, "w") as f:
        json.dump({"method": "cld", "order": "top", "score_model_arch": "resnet20", "model_arch": "resnet20",
                   "samples_per_class": 2, "fraction": None, "coreset_size": 20, "final_test_acc": 99.0,
                   "best_test_acc": 99.0}, f)
    counter = Counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "run_stage", counter)
        rows = reproduce_table.main(**flags)
    return root, flags, rows, counter


def read_table(results_dir: str) -> list[dict]:
    with open(os.path.join(results_dir, "table.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_grid_runs_each_stage_once_per_cell(finished):
    _, _, _, counter = finished
    stages = [s for s, _ in counter.calls]
    assert stages == [1, 2, 2] + [3] * 8  # stage 1 once, stage 2 per method, stage 3 per cell
    assert {f["manual_seed"] for s, f in counter.calls if s == 3} == {0, 1}


def test_table_matches_the_run_results(finished):
    _, flags, rows, _ = finished
    written = read_table(flags["results_dir"])
    assert len(written) == 4 and len(rows) == 4  # 2 methods x 2 sizes (the stray seed-7 run stays out)
    assert tuple(written[0]) == table.TABLE_COLUMNS
    runs_dir = os.path.join(flags["results_dir"], "runs")
    for row in written:
        assert row["n_seeds"] == "2" and row["order"] == "top" and row["fraction"] == ""
        accs, sizes = [], set()
        for seed in (0, 1):
            name = f"CIFAR10_resnet20_coreset_{row['method']}_top_k{row['samples_per_class']}_seed{seed}"
            with open(os.path.join(runs_dir, name + ".json")) as f:
                result = json.load(f)
            accs.append(result["final_test_acc"])
            sizes.add(result["coreset_size"])
        assert float(row["mean_test_acc"]) == pytest.approx(statistics.mean(accs), abs=1e-4)
        assert float(row["std_test_acc"]) == pytest.approx(statistics.stdev(accs), abs=1e-4)  # ddof=1
        assert sizes == {int(row["coreset_size"])} == {10 * int(row["samples_per_class"])}
    assert [(r["method"], r["samples_per_class"]) for r in written] == [("cld", "2"), ("cld", "4"), ("loss", "2"), ("loss", "4")]


def test_markdown_and_plot(finished):
    _, flags, _, _ = finished
    with open(os.path.join(flags["results_dir"], "table.md")) as f:
        md = f.read()
    assert "| cld (top) |" in md and "| loss (top) |" in md and "±" in md and "k=2 (20)" in md
    with open(os.path.join(flags["results_dir"], "accuracy_vs_size.png"), "rb") as f:
        png = f.read()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_killed_grid_reruns_only_the_missing_run(finished):
    _, flags, _, _ = finished
    runs_dir = os.path.join(flags["results_dir"], "runs")
    name = "CIFAR10_resnet20_coreset_loss_top_k4_seed1"
    with open(os.path.join(runs_dir, name + ".json")) as f:
        before = json.load(f)
    os.remove(os.path.join(runs_dir, name + ".json"))  # killed after its last epoch, before its result
    stamps = {p: os.path.getmtime(os.path.join(runs_dir, p)) for p in os.listdir(runs_dir)}
    counter = Counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "run_stage", counter)
        reproduce_table.main(**flags)
    assert [(s, f["name"]) for s, f in counter.calls] == [(3, name)]
    last = os.path.join(flags["checkpoint_path"], name + "_last.pth")
    assert counter.calls[0][1]["resume_path"] == last  # continued from its checkpoint, not refused
    with open(os.path.join(runs_dir, name + ".json")) as f:
        assert json.load(f)["final_test_acc"] == before["final_test_acc"]
    assert stamps == {p: os.path.getmtime(os.path.join(runs_dir, p)) for p in stamps}  # others untouched
    assert len(read_table(flags["results_dir"])) == 4


def test_dry_run_prints_and_runs_nothing(finished, tmp_path, capsys):
    flags = grid_flags(str(tmp_path))
    counter = Counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "run_stage", counter)
        assert reproduce_table.main(**flags, dry_run=True) == []
    out = capsys.readouterr().out.splitlines()
    commands = [line for line in out if line.startswith("python ")]
    assert len(commands) == 1 + 2 + 8 and commands[0].startswith("python get_loss_values.py")
    assert counter.calls == [] and os.listdir(tmp_path) == []
    # On the finished grid every step is reported done.
    reproduce_table.main(**finished[1], dry_run=True)
    assert sum(line.startswith("# skip") for line in capsys.readouterr().out.splitlines()) == 11


def test_printed_commands_parse_back_to_the_same_flags(tmp_path, monkeypatch):
    """Every printed command, run through its script's own command line, calls the stage with the
    step's flags (checked and completed with the defaults)."""
    g = GRID.settings({**grid_flags(str(tmp_path)), "score_schedule": [1], "learning_rate": 0.05,
                       "tag": "t1", "data_path": "2024", "compile": "max-autotune-no-cudagraphs"})
    seen = []
    scored = utils.scoring.compute_scores.Scored("out.pickle", {}, {})
    for module, name in ((utils.collect.collect_losses, "collect_losses"), (utils.scoring.compute_scores, "score"),
                         (utils.coreset_training.train_on_coreset, "train_on_coreset")):
        monkeypatch.setattr(module, name, lambda options: seen.append(options) or scored)
    monkeypatch.setattr(utils.cli.stages, "next_command", lambda *a: ("python train_on_coresets.py", ""))
    scripts = {1: get_loss_values, 2: compute_cld_scores, 3: train_on_coresets}
    steps = grid.plan(g)
    for step in steps:
        words = shlex.split(grid.command(step))
        assert words[1] == step.script
        assert run_cli(scripts[step.stage].main, words[2:]) == 0
        assert dataclasses.asdict(seen.pop()) == dict(grid.FLAGSETS[step.stage].settings(step.flags))
    loss_step = steps[0]
    assert loss_step.flags["schedule"] == [1] and loss_step.flags["data_path"] == "2024"
    assert "--data_path 2024" in grid.command(loss_step)  # a folder named like a number stays a string


def test_the_grid_sets_every_flag_of_every_stage_and_agrees_on_defaults():
    """Each stage flag is forwarded under its own name (same default), under score_ for stage 1's
    recipe (default: the stage-3 value, which has the same default), or set per step by the grid."""
    for stage, flagset in grid.FLAGSETS.items():
        for flag in flagset:
            if flag.name in config.GRID_SETS[stage] and flag.name not in config.STAGE1_RECIPE:
                continue
            if stage == 1 and flag.name in config.STAGE1_RECIPE:
                assert GRID[f"score_{flag.name}"].default is None, flag.name
                assert GRID[flag.name].default == flag.default, flag.name
                continue
            assert flag.name in GRID, f"stage {stage}: the grid cannot set --{flag.name}"
            assert GRID[flag.name].default == flag.default, (stage, flag.name)
    # ... and the values reach the steps: a non-default value of each forwarded flag.
    odd = {"momentum": 0.5, "weight_decay": 0.001, "gamma": 0.5, "disable_nesterov": True, "val_split_ratio": 0.2,
           "download": False, "collect_precision": "same", "snapshot_epochs": [2], "el2n_epochs": 3,
           "score_learning_rate": 0.07, "allow_missing_classes": True}
    g = GRID.settings({**grid_flags("/tmp/x"), **odd, "methods": ["cld", "el2n"]})
    steps = grid.plan(g)
    by_stage = {s.stage: s.flags for s in steps}  # stage 2: el2n's step, the last
    # A method's option reaches that method alone (stage 2 refuses another method's option).
    (cld,) = [s.flags for s in steps if s.stage == 2 and s.flags["method"] == "cld"]
    assert "el2n_epochs" not in cld and by_stage[2]["method"] == "el2n" and by_stage[2]["el2n_epochs"] == 3
    assert by_stage[1]["learning_rate"] == 0.07 and by_stage[3]["learning_rate"] == 0.1
    for name, value in odd.items():
        if name.startswith("score_"):
            continue
        assert any(flags.get(name) == value for flags in by_stage.values()), name


def test_reproduce_table_help_lists_every_recipe_flag_of_stage_1(capsys):
    assert run_cli(reproduce_table.main, ["--help"]) == 0
    text = capsys.readouterr().out  # the help goes to stdout, with no pager
    for name in config.STAGE1_RECIPE:
        assert f"--{name}" in text and f"--score_{name}" in text, name


def test_random_order_runs_once_for_all_methods(tmp_path):
    g = GRID.settings({**grid_flags(str(tmp_path)), "orders": ["top", "random"]})
    runs = [(s.flags["score_path"], s.flags.get("order", "top")) for s in grid.plan(g) if s.stage == 3]
    assert len(runs) == (2 + 1) * 2 * 2  # (cld top, loss top, one random) x 2 sizes x 2 seeds
    assert {p for p, o in runs if o == "random"} == {p for p, _ in runs if "CLD_" in p}


def test_resume_decision(tmp_path):
    last = str(tmp_path / "run_last.pth")
    step = grid.Step(3, {"name": "run"}, output=str(tmp_path / "run.json"), lock=str(tmp_path / "run.lock"),
                     last=last)
    assert grid.decide(step) == ("run", {"name": "run"})
    (tmp_path / "run_last.pth").write_bytes(b"")
    assert grid.decide(step) == ("resume", {"name": "run", "resume_path": last})
    (tmp_path / "run.json").write_text("{}")
    assert grid.decide(step)[0] == "skip"


def test_emit_script(tmp_path):
    flags = grid_flags(str(tmp_path))
    path = str(tmp_path / "grid.sh")
    reproduce_table.main(**flags, emit_script=path)
    with open(path) as f:
        lines = f.read().splitlines()
    tags = [line.rsplit("# ", 1)[1] for line in lines if not line.startswith("#") and "  # " in line]
    assert tags == ["stage1"] + ["stage2"] * 2 + ["stage3"] * 8 + ["table"]
    assert lines[-1].startswith("python reproduce_table.py --dataset CIFAR10")
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    assert not os.path.exists(flags["results_dir"])


@pytest.mark.parametrize("change,message", [
    ({"fractions": [0.1]}, "one of them"),
    ({"samples_per_class": None}, "one of them"),
    ({"methods": ["nope"]}, "unknown --methods 'nope'"),
    ({"orders": ["sideways"]}, "unknown --orders"),
    ({"model_archs": ["resnet7"]}, "unknown model"),
    ({"score_epochs": 2}, "at least 3"),
    ({"seeds": [-1]}, r"--seeds must lie in \[0, "),
    ({"seed": 3}, "unknown flag --seed"),
])
def test_bad_flags_are_user_errors(tmp_path, change, message):
    with pytest.raises(UserError, match=message):
        reproduce_table.main(**{**grid_flags(str(tmp_path)), **change}, dry_run=True)


def test_jobs_run_the_coreset_runs_in_parallel_workers(finished, tmp_path):
    """--jobs 2: the stage-3 runs go to two worker processes; every run lands once."""
    root, flags, _, _ = finished
    parallel = {**flags, "results_dir": str(tmp_path / "Results"), "checkpoint_path": str(tmp_path / "C"),
                "logpath": str(tmp_path / "L"), "jobs": 2}
    rows = reproduce_table.main(**parallel)
    names = sorted(os.listdir(os.path.join(parallel["results_dir"], "runs")))
    assert len(names) == 8 and len(rows) == 4
    with open(os.path.join(parallel["results_dir"], "results.csv")) as f:
        assert sorted(r["name"] + ".json" for r in csv.DictReader(f)) == names


def test_the_paper_style_comparison_grid_lists_every_method(tmp_path, capsys):
    """CLD against every DeepCore method, 3 seeds: the dry run names a stage-2 command per method."""
    every = [m.name for m in methods.METHODS.values() if m.name != "random"]
    flags = {**grid_flags(str(tmp_path)), "methods": every, "seeds": [0, 1, 2], "samples_per_class": None,
             "fractions": [0.01, 0.05, 0.1, 0.2, 0.3], "orders": ["top", "random"]}
    reproduce_table.main(**flags, dry_run=True)
    out = capsys.readouterr().out
    for method in every:
        assert f"compute_cld_scores.py --loss_path" in out and f"--method {method}" in out, method
    runs = [line for line in out.splitlines() if line.startswith("python train_on_coresets.py")]
    assert len(runs) == (len(every) + 1) * 5 * 3  # each method's top, one random, x 5 sizes x 3 seeds


def test_a_random_row_is_named_as_the_uniform_baseline(tmp_path):
    """A random order reads a method's file but not its scores: its row must not carry the method's name."""
    g = GRID.settings({**grid_flags(str(tmp_path)), "orders": ["top", "random"], "samples_per_class": [2]})
    row = dict(score_model_arch="resnet20", model_arch="resnet20", samples_per_class=2, fraction=None,
               coreset_size=20, n_seeds=2, min_train_acc=100.0, std_test_acc=0.5, converged=True)
    md = table.table_markdown([{**row, "method": "cld", "order": "top", "mean_test_acc": 41.0},
                               {**row, "method": "cld", "order": "random", "mean_test_acc": 40.0}], g)
    assert "| cld (top) | 41.00 ± 0.50 |" in md
    assert "| random (uniform per class) | 40.00 ± 0.50 |" in md and "cld (random)" not in md


def _dry_run(capsys, **flags) -> list[str]:
    assert run_cli(reproduce_table.main, [f"--{k}={v if not isinstance(v, list) else ','.join(map(str, v))}"
                                          for k, v in flags.items()] + ["--dry_run"]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("python ")]


def test_the_dry_run_names_the_weights_of_every_model_method(tmp_path, capsys):
    flags = {**grid_flags(str(tmp_path)), "methods": ["cld", "herding", "craig", "el2n"], "snapshot_epochs": [2]}
    stage2 = [line for line in _dry_run(capsys, **flags) if "compute_cld_scores.py" in line]
    by_method = {re.search(r"--method (\w+)", line).group(1): line for line in stage2}
    assert "--snapshot_epoch" not in by_method["cld"] and "--snapshot_epoch" not in by_method["el2n"]
    assert "--snapshot_epoch 2" in by_method["herding"] and "--snapshot_epoch 2" in by_method["craig"]
    assert "--budgets '[2,4]'" in by_method["craig"] and "--budgets" not in by_method["herding"]
    # Several snapshots and none of 40 epochs: which weights is a question, asked before any work.
    proc = subprocess.run([sys.executable, "reproduce_table.py", *[f"--{k}={v if not isinstance(v, list) else ','.join(map(str, v))}"
                           for k, v in {**flags, "snapshot_epochs": [1, 2]}.items()], "--dry_run"],
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True, text=True)
    assert proc.returncode == 2 and "kept weight snapshots after epochs 1, 2" in proc.stderr


def test_deepcore_selection_model_adds_a_stage1_run_of_its_recipe(tmp_path, capsys):
    flags = {**grid_flags(str(tmp_path)), "methods": ["cld", "herding"], "selection_model": "deepcore",
             "selection_epochs": 5}
    lines = _dry_run(capsys, **flags)
    stage1 = [line for line in lines if "get_loss_values.py" in line]
    assert len(stage1) == 2
    extra = next(line for line in stage1 if "/deepcore_selection" in line)
    assert "--schedule '[]'" in extra and "--noaugment" in extra and "--epochs 5" in extra
    herding = next(line for line in lines if "--method herding" in line)
    assert "/deepcore_selection/" in herding and "--snapshot_epoch 5" in herding
    assert "--selection_model deepcore" in herding
    cld = next(line for line in lines if "--method cld" in line)
    assert "/deepcore_selection/" not in cld
    runs = [line for line in lines if "train_on_coresets.py" in line and "herding" in line]
    assert runs and all("herding+deepcore" in line for line in runs)
