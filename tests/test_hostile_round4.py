"""Hostile review, round 4: control characters in flags and the emitted grid script, hand edits of
results.csv, the library API's bounds, and weighted coresets without usable weights."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import compute_cld_scores
import get_loss_values
import reproduce_table
import train_on_coresets
from conftest import assert_user_error, cli, flag_args, s3_flags
from utils import api
from utils.cli import config
from utils.coreset_training.results import write_result
from utils.errors import UserError
from utils.files.scores import load_scores
from utils.grid import plan as grid
from utils.grid import runner


def _tree(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def _grid_args(root: str, **more: str) -> list[str]:
    flags = {"dataset": "CIFAR10", "score_model_arch": "resnet20", "model_archs": "resnet20", "methods": "cld,loss",
             "orders": "top", "samples_per_class": "2", "seeds": "0,1", "epochs": "1", "score_epochs": "3",
             "data_path": os.path.join(root, "data"), "scores_dir": os.path.join(root, "S"),
             "checkpoint_path": os.path.join(root, "C"), "logpath": os.path.join(root, "L"),
             "results_dir": os.path.join(root, "R"), "splits_dir": os.path.join(root, "Sp"), **more}
    return [item for key, value in flags.items() for item in (f"--{key}", value)]


# ----------------------------------------------------------------------------- 1. control characters

@pytest.mark.parametrize("flag,value,what", [
    ("data_path", "/tmp/x\ntouch /tmp/PWN # stage3\n#", "a newline at position 6"),
    ("results_dir", "R\rX", "a carriage return at position 1"),
    ("emit_script", "g\n.sh", "a newline at position 1"),
    ("tag", "a\x1b[2J", "control character U+001B at position 1"),         # a name flag
    ("model_archs", "resnet20,res\x85net", "control character U+0085 at position 3"),  # a list of text
    ("launcher", "python\t-u", "a tab at position 6"),                     # free text
])
def test_a_control_character_in_a_text_flag_is_refused_at_the_flag(tmp_path, monkeypatch, flag, value, what):
    monkeypatch.chdir(tmp_path)
    proc = cli(reproduce_table, *_grid_args(str(tmp_path), **{"emit_script": "g.sh", flag: value}))
    assert_user_error(proc, f"--{flag} must not contain control characters ({what})")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("module,flag", [(get_loss_values, "data_path"), (get_loss_values, "logpath"),
                                         (compute_cld_scores, "loss_path"), (train_on_coresets, "name"),
                                         (train_on_coresets, "model_arch"), (train_on_coresets, "score_path")])
def test_every_stage_refuses_a_newline_in_a_path_name_or_text(tmp_path, monkeypatch, module, flag):
    monkeypatch.chdir(tmp_path)
    assert_user_error(cli(module, f"--{flag}", "a\nb"), f"--{flag} must not contain control characters "
                                                        "(a newline at position 1)")
    assert os.listdir(tmp_path) == []


def test_a_nul_from_python_is_refused_by_the_same_check():
    with pytest.raises(UserError, match=r"--data_path must not contain control characters \(a NUL character at "
                                        r"position 2\)"):
        config.STAGE1.settings(data_path="ab\0c")
    with pytest.raises(UserError, match="--name must not contain control characters"):
        config.STAGE3.settings(name="run\x7f")


def _recipes(script: str) -> dict[int, tuple[int, str]]:
    """{stage: (the header's count, its array-job recipe)} read from the emitted script's header."""
    found = {}
    for line in open(script).read().splitlines():
        m = re.fullmatch(r"#\s+stage(\d) \(tasks 1\.\.(\d+)\):\s+(.*)", line)
        if m:
            found[int(m.group(1))] = (int(m.group(2)), m.group(3))
    return found


def test_the_emitted_script_quotes_every_value_and_its_recipes_select_what_the_header_counts(tmp_path, monkeypatch):
    """Hostile but legal values (spaces, #, quotes, $(...), ;, a trailing '# stage3'): each task of each
    stage's array-job recipe runs exactly one whole command, with the values intact."""
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.chdir(root)
    hostile = "d # stage3 ';touch PWN1;' $(touch PWN2) `touch PWN3` \"q\" # stage3"
    name = "g # stage3"
    proc = cli(reproduce_table, *_grid_args(".", data_path=hostile, results_dir="R # stage2",
                                             launcher="python -u", emit_script=name))
    assert proc.returncode == 0, proc.stderr
    recipes = _recipes(name)
    assert {s: n for s, (n, _) in recipes.items()} == {1: 1, 2: 2, 3: 4}
    # A stand-in for python that records the words it is given, one JSON line per call.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    (bin_dir / "python").write_text(f"#!{sys.executable}\nimport json, sys\n"
                                    f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    for stage, (count, recipe) in recipes.items():
        selection = recipe.rsplit(" | sed ", 1)[0]
        lines = subprocess.run(["bash", "-c", selection], capture_output=True, text=True, check=True).stdout
        assert len(lines.splitlines()) == count  # exactly the lines the header counts
        for task in range(1, count + 1):
            log.unlink(missing_ok=True)
            run = subprocess.run(["bash", "-c", recipe], env=dict(env, SLURM_ARRAY_TASK_ID=str(task)),
                                 capture_output=True, text=True)
            assert run.returncode == 0, run.stderr
            calls = [json.loads(line) for line in log.read_text().splitlines()]
            words = calls[0][1:] if stage != 2 else calls[0]  # stage 2 runs under plain python
            assert len(calls) == 1 and words[0] == grid.SCRIPTS[stage] and (stage == 2 or calls[0][0] == "-u")
            if stage != 2:
                assert words[words.index("--data_path") + 1] == hostile
            if stage == 3:
                assert words[words.index("--results_dir") + 1] == "R # stage2"
    assert not [p for p in os.listdir(root) if p.startswith("PWN")]
    assert subprocess.run(["bash", "-n", name]).returncode == 0


def test_a_step_whose_command_would_break_its_line_is_not_written(tmp_path):
    step = grid.Step(2, {"loss_path": "a\nb", "method": "cld"}, str(tmp_path / "out.pickle"), str(tmp_path / "l"))
    with pytest.raises(UserError, match="must not contain control characters"):
        grid.write_script(str(tmp_path / "g.sh"), [step], "python reproduce_table.py")
    assert os.listdir(tmp_path) == []


def test_a_grid_worker_hands_its_notes_to_the_grid(monkeypatch):
    def stage(number, flags):
        print("epoch 1 ...")
        print("note: results.csv held rows or values no run explains (x); kept as y")
        runner.progress.warn("a  stray file")
    monkeypatch.setattr(runner, "run_stage", stage)
    seconds, notes, warnings = runner._worker_run({"device": "cpu"})
    assert seconds >= 0 and notes == ["note: results.csv held rows or values no run explains (x); kept as y"]
    assert warnings == [("", "warning: a stray file")]  # the grid prints it (once)


# ----------------------------------------------------------------------------- 2. hand edits of results.csv

def _csv(results: str) -> pd.DataFrame:
    return pd.read_csv(os.path.join(results, "results.csv"))


def _kept(results: str) -> list[str]:
    return sorted(f for f in os.listdir(results) if f.endswith(".kept") or f.endswith(".bak"))


def _edit(results: str, old: str, new: str, add: str = "") -> None:
    path = os.path.join(results, "results.csv")
    text = open(path, newline="").read()
    assert old in text
    with open(path, "w", newline="") as f:
        f.write(text.replace(old, new, 1) + add)


def test_a_row_added_by_hand_is_kept_and_said(tmp_path, capsys):
    results = str(tmp_path / "res")
    write_result(results, "a", {"name": "a", "final_test_acc": 1.0})
    width = len(_csv(results).columns)
    _edit(results, "a,", "a,", add="hand" + "," * (width - 2) + ",42.5\r\n")
    capsys.readouterr()
    write_result(results, "b", {"name": "b", "final_test_acc": 2.0})
    out = capsys.readouterr().out
    assert _csv(results)["name"].tolist() == ["a", "b"]  # the CSV is what the JSONs say
    [kept] = _kept(results)
    assert re.fullmatch(r"results\.csv\.\d{8}T\d{6}Z\.kept", kept)
    assert pd.read_csv(os.path.join(results, kept))["name"].tolist() == ["a", "hand"]
    assert f"note: {results}/results.csv held rows or values no run explains (row 'hand' has no run JSON); " \
           f"kept as {results}/{kept}" in out


def test_a_value_edited_by_hand_is_kept(tmp_path, capsys):
    results = str(tmp_path / "res")
    write_result(results, "a", {"name": "a", "final_test_acc": 1.0})
    _edit(results, ",1.0,", ",5.0,")
    write_result(results, "b", {"name": "b", "final_test_acc": 2.0})
    assert "row 'a': final_test_acc '5.0', its JSON gives '1.0'" in capsys.readouterr().out
    [kept] = _kept(results)
    assert pd.read_csv(os.path.join(results, kept)).set_index("name").loc["a", "final_test_acc"] == 5.0
    assert _csv(results)["final_test_acc"].tolist() == [1.0, 2.0]


def test_two_successive_rebuilds_keep_both_earlier_edits(tmp_path):
    results = str(tmp_path / "res")
    write_result(results, "a", {"name": "a", "final_test_acc": 1.0})
    _edit(results, ",1.0,", ",5.0,")
    write_result(results, "b", {"name": "b", "final_test_acc": 2.0})
    _edit(results, ",2.0,", ",7.0,")
    write_result(results, "c", {"name": "c", "final_test_acc": 3.0})
    kept = _kept(results)
    assert len(kept) == 2  # two files, even within the same second: never one over the other
    values = sorted(list(pd.read_csv(os.path.join(results, k)).set_index("name")["final_test_acc"].to_dict().items())
                    for k in kept)
    assert values == sorted([[("a", 5.0)], [("a", 1.0), ("b", 7.0)]])


def test_an_unedited_csv_and_an_overwritten_run_keep_nothing_aside(tmp_path, capsys):
    results = str(tmp_path / "res")
    write_result(results, "a", {"name": "a", "final_test_acc": 1.0})
    write_result(results, "a", {"name": "a", "final_test_acc": 9.0})  # --overwrite: its old JSON explained the row
    write_result(results, "b", {"name": "b", "final_test_acc": 2.0})
    assert _kept(results) == [] and "note:" not in capsys.readouterr().out
    assert _csv(results)["final_test_acc"].tolist() == [9.0, 2.0]


def test_a_csv_of_other_columns_is_kept_aside_every_time_never_replaced(tmp_path):
    results = str(tmp_path / "res")
    write_result(results, "a", {"name": "a"})
    path = os.path.join(results, "results.csv")
    for n in (1, 2):
        with open(path, "w") as f:
            f.write(f"edit,{n}\n")
        write_result(results, "a", {"name": "a"})
    kept = _kept(results)
    assert len(kept) == 2 and "results.csv.bak" in kept
    assert sorted(open(os.path.join(results, k)).read() for k in kept) == ["edit,1\n", "edit,2\n"]


def test_two_jsons_of_one_name_do_not_keep_the_csv_aside_at_every_rebuild(tmp_path, capsys):
    results = str(tmp_path / "res")
    write_result(results, "a", {"name": "a", "final_test_acc": 1.0})
    with open(os.path.join(results, "runs", "copy.json"), "w") as f:  # a copy of a's JSON, by hand
        json.dump({"name": "a", "final_test_acc": 1.0}, f)
    write_result(results, "b", {"name": "b"})
    write_result(results, "c", {"name": "c"})
    assert _kept(results) == [] and "note:" not in capsys.readouterr().out
    assert _csv(results)["name"].tolist() == ["a", "b", "c", "a"]


# ----------------------------------------------------------------------------- 3. the API

def _trajectories(n=60, v=30, classes=3, epochs=6):
    rng = np.random.default_rng(0)
    return rng.random((epochs, n)), np.arange(n) % classes, rng.random((epochs, v)), np.arange(v) % classes


def test_api_cld_with_a_huge_label_costs_what_a_small_one_does():
    import tracemalloc

    tr, tl, val, vl = _trajectories()
    small = api.cld(tr, tl, val, vl)
    tracemalloc.start()
    try:
        huge = api.cld(tr, np.where(tl == 2, 200_000_000, tl), val, np.where(vl == 2, 200_000_000, vl))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(small, huge) and peak < 2**20
    with pytest.raises(ValueError, match="class 200000000 has training examples but no validation example"):
        api.cld(tr, np.where(tl == 2, 200_000_000, tl), val, vl)


@pytest.mark.parametrize("call,message", [
    (lambda t: api.cld(t["tr"], t["tl"].astype(np.uint64) + np.uint64(2**63), t["val"], t["vl"]),
     "train_labels holds class label 9223372036854775810, beyond int64's 2**63 - 1"),
    (lambda t: api.cld(t["tr"], t["tl"], t["val"], t["vl"].astype(np.float32)),
     "val_labels must be a 1-D array of integer class labels, got float32"),
    (lambda t: api.cld(t["tr"], t["tl"] > 0, t["val"], t["vl"]), "integer class labels, got bool"),
    (lambda t: api.cld(t["tr"] * 1e300, t["tl"], t["val"], t["vl"]), "train_losses holds a value of magnitude"),
    (lambda t: api.rank(t["s"], t["tl"], np.arange(60, dtype=np.uint64) + np.uint64(2**63)),
     "indices holds dataset index 9223372036854775867, beyond int64's 2**63 - 1"),
    (lambda t: api.rank(t["s"], t["tl"], np.r_[np.arange(59), 3]), "indices lists example 3 twice"),
    (lambda t: api.rank(t["s"], t["tl"], np.r_[-1, np.arange(1, 60)]), "indices holds a negative dataset index (-1)"),
    (lambda t: api.baseline("herding", t["tl"], embeddings=np.full((60, 4), 1e300)),
     "embeddings holds a value of magnitude 1e+300, beyond 1e+15"),
    (lambda t: api.baseline("margin", t["tl"], logits=np.full((60, 3), -4e38)), "logits holds a value of magnitude"),
    (lambda t: api.baseline("margin", t["tl"], logits=np.ones((60, 3)), indices=np.zeros(60, np.int64)),
     "indices lists example 0 twice"),
    (lambda t: api.select({0: [1, 2]}, samples_per_class=1, scores={0: [np.nan, 1.0]}),
     "the scores of class 0 hold NaN values"),
    (lambda t: api.select({0: [1, 2]}, samples_per_class=1, scores={0: [np.inf, 1.0]}, order="zero"),
     "the scores of class 0 hold NaN or infinite values"),
    (lambda t: api.select({0: [1, 2, 1]}, samples_per_class=1), "ranked lists example 1 twice (in class 0)"),
    (lambda t: api.select({0: [1, 2], 3: [4, 2]}, samples_per_class=1),
     "ranked lists example 2 twice (in class 0 and class 3)"),
    (lambda t: api.select({0: [1, -2]}, samples_per_class=1), "the ranking of class 0 holds a negative dataset index"),
    (lambda t: api.select({0: [1.5, 2.0]}, samples_per_class=1), "integer dataset indices, got float64"),
    (lambda t: api.select({0: np.array([2**63], dtype=np.uint64)}, samples_per_class=1), "beyond int64's 2**63 - 1"),
    (lambda t: api.select({0.5: [1, 2]}, samples_per_class=1), "class key 0.5 is not a class label"),
    (lambda t: api.select({-1: [1, 2]}, samples_per_class=1), "class key -1 is not a class label"),
])
def test_the_api_refuses_what_the_stages_refuse(call, message):
    tr, tl, val, vl = _trajectories()
    with pytest.raises(ValueError) as err:
        call({"tr": tr, "tl": tl, "val": val, "vl": vl, "s": np.linspace(0, 1, 60)})
    assert message in str(err.value)


def test_features_just_below_the_bound_give_no_nan():
    rng = np.random.default_rng(1)
    labels = np.arange(90) % 3
    emb = rng.uniform(-1, 1, (90, 64)) * api.MAX_FEATURE
    logits = rng.uniform(-1, 1, (90, 3)) * api.MAX_FEATURE
    for method in ("herding", "kcenter", "moderate", "margin", "entropy", "craig", "facility_location"):
        _, scores = api.baseline(method, labels, embeddings=emb, logits=logits)
        assert not any(np.isnan(v).any() for v in scores.values()), method


def test_a_greedy_methods_infinite_gains_still_select_by_rank():
    rng = np.random.default_rng(2)
    labels = np.arange(30) % 3
    ranked, gains = api.baseline("kcenter", labels, embeddings=rng.standard_normal((30, 4)))
    assert any(np.isinf(g).any() for g in gains.values())
    assert len(api.select(ranked, scores=gains, samples_per_class=2)) == 6


# ----------------------------------------------------------------------------- 4. weighted coresets

def _weighted_file(reference, tmp_path, method: str, weights=None) -> str:
    """The reference CLD score file relabelled as ``method``'s, with ``{class: weights}`` of budget k2."""
    with open(reference["scores"], "rb") as f:
        raw = pickle.load(f)
    raw = {**raw, "method": method}
    raw.pop("weights", None)
    if weights is not None:
        raw["weights"] = {"k2": {c: np.asarray(weights(c), dtype=np.float64) for c in raw["indices"]}}
    path = tmp_path / f"{method.upper()}_scores.pickle"
    with open(path, "wb") as f:
        pickle.dump(raw, f)
    return str(path)


def _refused(data, path, tmp_path, *fragments, **extra):
    proc = cli(train_on_coresets, *flag_args(s3_flags(data, path, str(tmp_path / "out"), **extra)))
    assert_user_error(proc, *fragments)
    assert not os.path.exists(tmp_path / "out")


def test_a_weighted_method_without_weights_is_refused_or_trained_unweighted_with_a_note(data, reference, tmp_path):
    path = _weighted_file(reference, tmp_path, "craig")
    _refused(data, path, tmp_path, "holds no craig weights", "craig trains weighted", "--weighted false")
    proc = cli(train_on_coresets, *flag_args(s3_flags(data, path, str(tmp_path / "out"), weighted="false")))
    assert proc.returncode == 0, proc.stderr
    assert "note: craig's coresets carry weights (DeepCore's weighted subsets), but --weighted false trains this " \
           "one unweighted; recorded as weighted false" in proc.stdout
    row = pd.read_csv(tmp_path / "out" / "res" / "results.csv").iloc[0]
    assert row["weighted"] == False  # noqa: E712


@pytest.mark.parametrize("weights,fragments", [
    (lambda c: [0.0, 0.0] if c == 3 else [1.0, 1.0], ("every craig weight of class 3 (budget k2) is zero",)),
    (lambda c: [0.0, 0.0], ("every craig weight of class 0 (budget k2) is zero",)),
    (lambda c: [3e38, 3e38] if c == 5 else [1.0, 1.0], ("craig weights of class 5 (budget k2) sum beyond float32",)),
    (lambda c: [1e300, 1.0] if c == 1 else [1.0, 1.0], ("craig weights of class 1 (budget k2) sum beyond float32",)),
    (lambda c: [2e38, 1.0], ("sum beyond float32", "--weighted false")),  # each class fits, the coreset does not
    (lambda c: [np.nan, 1.0], ("weights of class", "are not nonnegative numbers")),
    (lambda c: [-1.0, 1.0], ("weights of class", "are not nonnegative numbers")),
])
def test_unusable_weights_are_refused_before_training(data, reference, tmp_path, weights, fragments):
    _refused(data, _weighted_file(reference, tmp_path, "craig", weights), tmp_path, *fragments)


def test_a_gradmatch_class_without_a_nonzero_weight_is_a_missing_class(data, reference, tmp_path):
    path = _weighted_file(reference, tmp_path, "gradmatch", lambda c: [0.0, 0.0] if c == 4 else [0.0, 2.0])
    _refused(data, path, tmp_path, "every gradmatch weight of class 4 (budget k2) is zero",
             "--allow_missing_classes")
    proc = cli(train_on_coresets, *flag_args(s3_flags(data, path, str(tmp_path / "out"), allow_missing_classes="true")))
    assert proc.returncode == 0, proc.stderr
    assert "note: gradmatch gives no example of class 4 a nonzero weight (budget k2)" in proc.stdout
    result = json.load(open(tmp_path / "out" / "res" / "runs" / "run.json"))
    ranked = load_scores(path)["indices"]
    assert result["weighted"] is True and result["coreset_size"] == 9
    assert sorted(result["coreset_indices"]) == sorted(int(v[1]) for c, v in ranked.items() if c != 4)
