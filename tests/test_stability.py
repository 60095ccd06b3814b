"""How early the ranking settles (--stability), the stage-1 stop rule (--stop_when_stable), and the
figures of stage 2 and the grid, against independent recomputations."""
from __future__ import annotations

import contextlib
import csv
import io
import os

import numpy as np
import pytest
from PIL import Image

import compute_cld_scores
import get_loss_values
from conftest import assert_user_error, cli, s1_flags
from utils.files.losses import load_losses
from utils.files.scores import load_scores
from utils.core.stability import StopRule, default_grid


def _pearson_cld(tr, val, tr_lbl, val_lbl):
    """CLD recomputed with np.corrcoef (constant sides 0)."""
    dx = np.diff(tr.astype(np.float64), axis=0)
    out = np.zeros(tr.shape[1])
    for j in range(tr.shape[1]):
        v = np.diff(val[:, val_lbl == tr_lbl[j]].astype(np.float64).mean(axis=1))
        if dx[:, j].std() > 0 and v.std() > 0:
            out[j] = np.corrcoef(dx[:, j], v)[0, 1]
    return out


def _top(scores, labels, indices, k):
    sets = {}
    for c in np.unique(labels):
        cols = np.flatnonzero(labels == c)
        order = cols[np.lexsort((indices[cols], -scores[cols]))]
        kc = int(k) if k >= 1 else max(1, int(np.floor(k * len(cols) + 0.5)))
        sets[int(c)] = set(indices[order[:kc]].tolist())
    return sets


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("digits")
    flags = dict(dataset="digits", model_arch="digits_cnn", epochs=10, batch_size=20, schedule=[6], augment=False,
                 device="cpu", precision="fp32", workers=0, checkpoint_path=str(base / "c"), logpath=str(base / "l"),
                 scores_dir=str(base / "s"), splits_dir=str(base / "sp"))
    with contextlib.redirect_stdout(io.StringIO()):
        return get_loss_values.main(**flags), str(base)


def test_stability_agrees_with_an_independent_recomputation(digits_run, tmp_path):
    loss, _ = digits_run
    out = str(tmp_path / "CLD_scores.pickle")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        compute_cld_scores.main(loss_path=loss, output_path=out, stability=True, stability_k=[5, 0.1],
                                figure=str(tmp_path / "curve.png"))
    assert "stability of cld" in printed.getvalue()
    with open(str(tmp_path / "CLD_scores_stability.csv")) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epochs", "k", "mean_jaccard", "min_jaccard", "spearman"]
    d = load_losses(loss)
    grid = default_grid(10)
    assert sorted({int(r["epochs"]) for r in rows}) == grid and grid[-1] == 10 and min(grid) >= 3
    from utils.core.cld import cld, select_epochs

    def scores(e):
        """CLD of the first e epochs: the project's, checked against np.corrcoef to 1e-9; the selection
        below uses the project's exact values, since with few epochs most scores tie at +-1 to rounding."""
        ours = cld(select_epochs(d, e))
        np.testing.assert_allclose(ours, _pearson_cld(d["tr_loss"][:e], d["val_loss"][:e], d["tr_lbl"], d["val_lbl"]),
                                   atol=1e-9)
        return ours

    full = scores(10)
    for r in rows:
        e, k = int(r["epochs"]), float(r["k"])
        early = scores(e)
        a, b = _top(early, d["tr_lbl"], d["train_indices"], k), _top(full, d["tr_lbl"], d["train_indices"], k)
        j = [len(a[c] & b[c]) / len(a[c] | b[c]) for c in a]
        assert abs(float(r["mean_jaccard"]) - np.mean(j)) < 1e-9 and abs(float(r["min_jaccard"]) - min(j)) < 1e-9
    assert all(float(r["mean_jaccard"]) == 1.0 and float(r["spearman"]) == 1.0 for r in rows if r["epochs"] == "10")
    assert Image.open(tmp_path / "curve.png").size[0] >= 800


def test_the_stop_rule_stops_at_the_first_epoch_meeting_it():
    labels, indices = np.repeat([0, 1], 10), np.arange(20)
    base = np.linspace(1, 0, 10)
    planted = {  # epoch -> scores: the top 3 of each class change, then settle from epoch 9 on
        3: np.r_[base, base], 6: np.r_[base[::-1], base[::-1]], 9: np.r_[base, base], 12: np.r_[base, base],
        15: np.r_[base, base]}
    rule = StopRule(0.9, 3, 3)
    verdicts = {e: rule.check(s, labels, indices) for e, s in planted.items() if rule.due(e)}
    assert verdicts == {3: False, 6: False, 9: False, 12: False, 15: True}  # 9 vs 6: 0; 12, 15: 1.0 twice
    rule = StopRule(0.9, 3, 3)
    for e in (3, 6, 9):
        rule.check(planted[e], labels, indices)
    restored = StopRule(0.9, 3, 3)
    restored.restore(rule.state(), "x")
    assert restored.check(planted[12], labels, indices) is False and restored.check(planted[15], labels, indices)
    assert [e for e in range(1, 16) if StopRule(0.9, 3, 3).due(e)] == [3, 6, 9, 12, 15]


def test_stage1_stops_when_stable_and_a_resume_continues_the_same_test(data, tmp_path):
    test = dict(stop_when_stable=0.5, stability_every=2, stability_k=0.5)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        straight = load_losses(get_loss_values.main(**s1_flags(data, tmp_path / "a", epochs=12, **test)))
    text = printed.getvalue()
    n = len(straight["epoch"])
    if n < 12:
        assert straight["stopped"]["epoch"] == n and f"stopped after epoch {n} of 12" in text
    else:
        assert "was never met" in text and "stopped" not in straight
    assert straight["tr_loss"].shape[0] == n
    with contextlib.redirect_stdout(io.StringIO()):
        get_loss_values.main(**s1_flags(data, tmp_path / "b", epochs=4, **test))
        last = str(tmp_path / "b" / "ckpt" / "CIFAR10_resnet20_seed1234_last.pth")
        resumed = load_losses(get_loss_values.main(**s1_flags(data, tmp_path / "b", epochs=12, resume_path=last,
                                                              **test)))
    assert len(resumed["epoch"]) == n and np.array_equal(resumed["tr_loss"], straight["tr_loss"])


def test_the_overview_figure_is_wide_and_a_missing_dataset_is_one_line(digits_run, data, reference, tmp_path):
    loss, _ = digits_run
    out = tmp_path / "f.png"
    with contextlib.redirect_stdout(io.StringIO()):
        compute_cld_scores.main(loss_path=loss, output_path=str(tmp_path / "s.pickle"), figure=str(out))
    assert Image.open(out).size[0] >= 1000
    assert_user_error(cli(compute_cld_scores, "--loss_path", reference["loss"], "--output_path",
                          str(tmp_path / "x.pickle"), "--figure", str(tmp_path / "g.png"), "--data_path",
                          str(tmp_path / "nowhere")), "CIFAR10 is expected in torchvision's layout")
    assert_user_error(cli(compute_cld_scores, "--loss_path", loss, "--method", "el2n", "--figure", "x.png"),
                      "--figure draws CLD's overview figure")


def test_the_method_overlap_of_a_grid_is_the_mean_per_class_jaccard(tmp_path):
    from utils.grid.method_figures import method_overlap

    rng = np.random.default_rng(0)
    rankings = {m: {c: rng.permutation(np.arange(10 * c, 10 * c + 10)) for c in range(3)} for m in "abc"}
    rows = method_overlap(rankings, [2, 0.5])
    for r in rows:
        k = int(r["budget"]) if r["budget"] >= 1 else 5
        want = np.mean([len(set(rankings[r["method_a"]][c][:k]) & set(rankings[r["method_b"]][c][:k]))
                        / len(set(rankings[r["method_a"]][c][:k]) | set(rankings[r["method_b"]][c][:k]))
                        for c in range(3)])
        assert abs(r["mean_jaccard"] - want) < 1e-9
    assert len(rows) == 2 * 9 and all(r["mean_jaccard"] == 1.0 for r in rows if r["method_a"] == r["method_b"])


def test_a_finished_grid_writes_the_overlap_it_measures(tmp_path):
    """The grid of test_reproduce_table (cld and loss): method_overlap.csv from its own score files."""
    import reproduce_table
    from test_reproduce_table import grid_flags
    from fakedata import write_fake_cifar

    root = str(tmp_path)
    write_fake_cifar(os.path.join(root, "data"), "CIFAR10", per_class=4, test_per_class=2)
    with contextlib.redirect_stdout(io.StringIO()):
        reproduce_table.main(**{**grid_flags(root), "seeds": [0], "samples_per_class": [1, 2],
                                "orders": ["top", "zero", "random"]})
    results = os.path.join(root, "Results")
    assert {"cld_orders.png", "method_overlap.png", "cld_overview.png"} <= set(os.listdir(results))
    with open(os.path.join(results, "method_overlap.csv")) as f:
        rows = list(csv.DictReader(f))
    scores = {m: load_scores(os.path.join(root, "Scores", f"{m.upper()}_CIFAR10_resnet20_seed0_scores.pickle"))
              for m in ("cld", "loss")}
    for r in rows:
        a, b, k = scores[r["method_a"]]["indices"], scores[r["method_b"]]["indices"], int(float(r["budget"]))
        want = np.mean([len(set(a[c][:k]) & set(b[c][:k])) / len(set(a[c][:k]) | set(b[c][:k])) for c in a])
        assert abs(float(r["mean_jaccard"]) - want) < 1e-9
    pairs = {(r["budget"], r["method_a"], r["method_b"]): float(r["mean_jaccard"]) for r in rows}
    assert all(pairs[(k, b, a)] == v for (k, a, b), v in pairs.items())  # symmetric


def test_a_run_killed_after_its_stop_decision_resumes_to_the_same_end(data, tmp_path, monkeypatch):
    """The decision is saved with the checkpoint of its epoch: killed at the loss-file write, the
    resumed run does not train on, and writes what the uninterrupted run wrote."""
    import utils.collect.row_store as row_store

    test = dict(stop_when_stable=0.1, stability_every=1, stability_k=0.5, epochs=10)
    with contextlib.redirect_stdout(io.StringIO()):
        straight = load_losses(get_loss_values.main(**s1_flags(data, tmp_path / "a", **test)))
    n = int(straight["stopped"]["epoch"])
    assert n < 10 and len(straight["epoch"]) == n

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, contextlib.redirect_stdout(io.StringIO()):
        m.setattr(row_store, "save_losses", killed)
        with pytest.raises(KeyboardInterrupt):
            get_loss_values.main(**s1_flags(data, tmp_path / "b", **test))
    last = str(tmp_path / "b" / "ckpt" / "CIFAR10_resnet20_seed1234_last.pth")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        resumed = load_losses(get_loss_values.main(**s1_flags(data, tmp_path / "b", resume_path=last, **test)))
    assert f"stopped after epoch {n} of 10" in printed.getvalue() and "decided before the interruption" in printed.getvalue()
    assert resumed["stopped"] == straight["stopped"]
    for key in ("epoch", "tr_loss", "val_loss", "tr_margin"):
        np.testing.assert_array_equal(resumed[key], straight[key])


def test_a_stability_count_as_large_as_a_class_is_refused_before_training(data, tmp_path):
    from conftest import assert_user_error, flag_args
    from test_robustness import cli

    flags = s1_flags(data, tmp_path / "run", stop_when_stable=0.9, stability_k=3)  # 3 training images a class
    proc = cli(get_loss_values, *flag_args(flags))
    assert_user_error(proc, "--stability_k 3 is not smaller than class", "a fraction below 1")
    assert not os.path.exists(tmp_path / "run" / "scores") and not os.path.exists(tmp_path / "run" / "splits")
    assert not any(name.endswith(".pth") for _, _, names in os.walk(tmp_path) for name in names)
