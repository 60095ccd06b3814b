"""One default per flag in --help, the method names in --help, stage 2's refusal of a --dataset or
--model_arch that differs from the loss file's, outputs added to a matching score file without
rescoring, and the API's messages and training-dynamics baselines."""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import pytest

import compute_cld_scores
from conftest import assert_user_error, cli
from utils import api
from utils.cli import config
from utils.cli.reference import SCRIPTS
from utils.files.losses import load_losses
from utils.files.scores import load_scores
from utils.methods import registry


@pytest.mark.parametrize("script,flags,summary", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_every_flag_of_every_help_states_its_default_at_most_once(script, flags, summary):
    text = flags.help_text(script, summary)
    blocks = re.findall(r"^    --(\w+)=\S+\n        (.*)$", text, re.M)
    assert len(blocks) == len(list(flags))
    twice = {name: line for name, line in blocks if len(re.findall(r"default", line, re.I)) > 1}
    assert not twice, twice


def test_the_help_of_stage_3_shows_one_default_for_samples_per_class_and_stage_2_for_stability_epochs():
    stage3 = config.STAGE3.help_text("train_on_coresets.py", "s")
    assert "(default: the paper's 100)" in stage3 and "(default: none)" not in stage3.split("--samples_per_class")[1] \
        .split("\n    --")[0]
    stage2 = config.STAGE2.help_text("compute_cld_scores.py", "s")
    line = stage2.split("--stability_epochs=")[1].split("\n    --")[0]
    assert line.count("default") == 1 and "[]" not in line


def test_the_help_of_method_lists_every_method_name():
    text = config.STAGE2.help_text("compute_cld_scores.py", "s")
    line = text.split("--method=")[1].split("\n    --")[0]
    for name in registry.names():
        assert re.search(rf"\b{name}\b", line), name


def test_the_dataset_and_model_flags_of_stage_2_default_to_the_file_in_the_flags_and_the_options():
    from utils.scoring.options import ScoreOptions

    fields = {f.name: f.default for f in dataclasses.fields(ScoreOptions)}
    assert fields["dataset"] is None and fields["model_arch"] is None
    assert config.STAGE2["dataset"].default is None and config.STAGE2["model_arch"].default is None


@pytest.mark.parametrize("args,fragment", [
    (["--dataset", "CIFAR100"], "--dataset CIFAR100"),
    (["--model_arch", "resnet18"], "--model_arch resnet18"),
])
def test_a_dataset_or_model_given_that_differs_from_the_loss_files_is_refused(reference, tmp_path, args, fragment):
    out = str(tmp_path / "s.pickle")
    proc = cli(compute_cld_scores, "--loss_path", reference["loss"], "--output_path", out, *args)
    assert_user_error(proc, fragment, "records")
    assert not os.path.exists(out)


def test_a_dataset_and_model_given_that_match_the_loss_file_are_accepted(reference, tmp_path):
    out = str(tmp_path / "s.pickle")
    proc = cli(compute_cld_scores, "--loss_path", reference["loss"], "--output_path", out, "--dataset", "cifar10",
               "--model_arch", "resnet20")
    assert proc.returncode == 0, proc.stderr
    assert load_scores(out)["dataset"] == "CIFAR10"


def test_outputs_are_added_to_a_matching_score_file_without_rescoring(reference, tmp_path):
    out = str(tmp_path / "s.pickle")
    base = ["--loss_path", reference["loss"], "--output_path", out]
    assert cli(compute_cld_scores, *base).returncode == 0
    before = open(out, "rb").read()
    stamp = os.stat(out).st_mtime_ns

    coreset = str(tmp_path / "c.npy")
    proc = cli(compute_cld_scores, *base, "--export_coreset", coreset, "--samples_per_class", "2")
    assert proc.returncode == 0, proc.stderr
    assert f"using the existing score file {out} (the same method and options)" in proc.stdout
    assert "wrote " not in proc.stdout.split("coreset")[0]  # no new score file
    assert np.load(coreset).size == 20

    proc = cli(compute_cld_scores, *base, "--stability", "--stability_epochs", "[3]")
    assert proc.returncode == 0, proc.stderr
    assert "using the existing score file" in proc.stdout
    fresh = str(tmp_path / "fresh.pickle")
    assert cli(compute_cld_scores, "--loss_path", reference["loss"], "--output_path", fresh, "--stability",
               "--stability_epochs", "[3]").returncode == 0
    assert open(out[:-7] + "_stability.csv").read() == open(fresh[:-7] + "_stability.csv").read()
    assert open(out, "rb").read() == before and os.stat(out).st_mtime_ns == stamp

    # the scores read back from the file are the scores of every training column
    from utils.core.cld import cld
    from utils.scoring.compute_scores import _values_of

    losses = load_losses(reference["loss"])
    np.testing.assert_array_equal(_values_of(load_scores(out), losses), cld(losses))

    # the requested output itself is not replaced without --overwrite
    assert_user_error(cli(compute_cld_scores, *base, "--export_coreset", coreset, "--samples_per_class", "2"),
                      "already exists")


@pytest.mark.parametrize("args", [["--method", "loss"], ["--first_epochs", "2"]])
def test_a_score_file_that_does_not_match_the_command_is_still_refused(reference, tmp_path, args):
    out = str(tmp_path / "s.pickle")
    assert cli(compute_cld_scores, "--loss_path", reference["loss"], "--output_path", out).returncode == 0
    proc = cli(compute_cld_scores, "--loss_path", reference["loss"], "--output_path", out, *args,
               "--export_coreset", str(tmp_path / "c.npy"), "--samples_per_class", "2")
    assert_user_error(proc, "already exists; pass --overwrite")
    assert not os.path.exists(tmp_path / "c.npy")


def _refusal(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


def test_api_messages_name_arguments_not_flags():
    ranked = {0: np.array([0, 2, 4]), 1: np.array([1, 3, 5])}
    messages = [
        _refusal(lambda: api.select(ranked, samples_per_class=1, fraction=0.5)),
        _refusal(lambda: api.select(ranked, samples_per_class=9)),
        _refusal(lambda: api.select(ranked, samples_per_class=1, order="zero")),
        _refusal(lambda: api.select(ranked, samples_per_class=1, seed=-1)),
        _refusal(lambda: api.select(ranked, fraction=2.0)),
    ]
    assert messages[0] == "give exactly one budget: samples_per_class or fraction"
    assert "scores=" in messages[2]
    for message in messages:
        assert "--" not in message and "legacy" not in message and "val_split_ratio" not in message, message
        assert "compute_cld_scores" not in message and "score file" not in message, message


def test_the_api_message_translation_drops_stage_advice():
    assert "val_split_ratio" not in api.api_message(
        "class 3 has training examples but no validation example, so its CLD is undefined; give every class "
        "validation examples (stage 1: a larger val_split_ratio)")


@pytest.mark.parametrize("method,argument,key", [("forgetting", "correct", "tr_correct"), ("el2n", "el2n", "tr_el2n"),
                                                 ("aum", "margin", "tr_margin"), ("loss", "losses", "tr_loss")])
def test_trajectory_baselines_of_the_api_equal_stage_2s(reference, tmp_path, method, argument, key):
    losses = load_losses(reference["loss"])
    out = str(tmp_path / f"{method}.pickle")
    assert cli(compute_cld_scores, "--loss_path", reference["loss"], "--method", method, "--output_path",
               out).returncode == 0
    record = load_scores(out)
    ranked, scores = api.baseline_from_trajectories(method, losses["tr_lbl"], indices=losses["train_indices"],
                                                    **{argument: losses[key]})
    assert set(ranked) == set(record["indices"])
    for c in ranked:
        assert ranked[c].tolist() == record["indices"][c].tolist()
        np.testing.assert_array_equal(scores[c], record["scores"][c])


def test_trajectory_baselines_refuse_what_they_do_not_read():
    labels = np.arange(6) % 2
    assert "reads correct" in _refusal(lambda: api.baseline_from_trajectories("forgetting", labels))
    assert "not ranked from per-epoch arrays" in _refusal(lambda: api.baseline_from_trajectories("cld", labels))
    assert "other than 0 and 1" in _refusal(
        lambda: api.baseline_from_trajectories("forgetting", labels, correct=np.full((3, 6), 2)))
    assert "columns" in _refusal(
        lambda: api.baseline_from_trajectories("aum", labels, margin=np.zeros((3, 5))))
