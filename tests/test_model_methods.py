"""The model-based methods of stage 2 (DeepCore's baselines and Moderate-DS) end to end: weight
snapshots of the stage-1 run, one evaluation pass, score files that stage 3 trains on, and the
exported feature matrices from which an independent implementation recomputes the rankings."""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest

import compute_cld_scores
import get_loss_values
import train_on_coresets
from fakedata import write_fake_cifar
from test_robustness import cli, s1_flags
from conftest import assert_user_error
from utils.files.checkpoint import load_checkpoint
from utils.files.losses import load_losses
from utils.files.scores import load_scores
from utils.methods import registry as methods

MODEL_METHODS = sorted(m.name for m in methods.METHODS.values() if m.uses_model)
RUN = "CIFAR10_resnet20_seed1234"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """Stage 1 on a tiny CIFAR-10: 3 epochs, a weight snapshot after epoch 2."""
    base = tmp_path_factory.mktemp("run")
    data = str(base / "data")
    write_fake_cifar(data, "CIFAR10", per_class=8, test_per_class=2)
    with contextlib.redirect_stdout(io.StringIO()):
        loss = get_loss_values.main(**s1_flags(data, base, snapshot_epochs=[2], learning_rate=0.02))
    return {"data": data, "base": str(base), "loss": loss, "losses": load_losses(loss)}


def _score(run, method, tmp_path, **flags) -> dict:
    out = str(tmp_path / f"{method}_scores.pickle")
    with contextlib.redirect_stdout(io.StringIO()):
        compute_cld_scores.main(loss_path=run["loss"], method=method, output_path=out, device="cpu", **flags)
    return load_scores(out)


def test_every_registered_method_scores_and_only_craig_and_gradmatch_weigh():
    for m in methods.METHODS.values():
        assert callable(m.score), m.name
        assert m.weights is None or callable(m.weights), m.name
    assert sorted(m.name for m in methods.METHODS.values() if m.weighted) == ["craig", "gradmatch"]


def test_the_registry_imports_without_torch():
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import sys; import utils.methods.registry; assert 'torch' not in sys.modules, 'torch was imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_stage1_keeps_the_snapshots_and_records_them(run):
    d = run["losses"]
    snap = os.path.join(run["base"], "ckpt", f"{RUN}_epoch2.pth")
    assert d["checkpoints"]["snapshots"] == {2: snap} and load_checkpoint(snap)["epoch"] == 2
    assert load_checkpoint(snap)["kind"] == "snapshot" and "optimizer" not in load_checkpoint(snap)


@pytest.mark.parametrize("method", MODEL_METHODS)
def test_every_model_method_writes_a_score_file_that_stage3_trains_on(method, run, tmp_path):
    extra = {"deepfool_max_iter": 5} if method == "deepfool" else {"budgets": [2]} if methods.get(method).weighted \
        else {}
    rec = _score(run, method, tmp_path, snapshot_epoch=2, **extra)
    d = run["losses"]
    assert rec["method"] == method and rec["snapshot_epoch"] == 2 and rec["snapshot"].endswith(f"{RUN}_epoch2.pth")
    assert rec["greedy"] == methods.get(method).greedy and rec["options"]["collect_precision"] == "fp32"
    for c in np.unique(d["tr_lbl"]):
        members = np.sort(d["train_indices"][d["tr_lbl"] == c])
        assert np.array_equal(np.sort(rec["indices"][c]), members)  # every example of the class, once
        assert rec["scores"][c].shape == rec["indices"][c].shape and np.isfinite(rec["scores"][c][1:]).all()
        if not rec["greedy"]:
            assert np.all(np.diff(rec["scores"][c]) <= 0)
    path = str(tmp_path / f"{method}_scores.pickle")
    with contextlib.redirect_stdout(io.StringIO()):
        result = train_on_coresets.main(score_path=path, data_path=run["data"], samples_per_class=2, epochs=1,
                                        device="cpu", workers=0, download=False, batch_size=8,
                                        checkpoint_path=str(tmp_path / "c"), logpath=str(tmp_path / "l"),
                                        results_dir=str(tmp_path / "r"))
    top = sorted(int(i) for v in rec["indices"].values() for i in v[:2])
    if method == "gradmatch":  # trained on the examples of nonzero weight only
        top = sorted(int(i) for c, v in rec["indices"].items() for i, w in zip(v[:2], rec["weights"]["k2"][c]) if w > 0)
    assert result["method"] == method and result["coreset_indices"] == top
    assert result["weighted"] == methods.get(method).weighted


def test_the_default_weights_are_the_one_snapshot_the_run_kept(run, tmp_path):
    rec = _score(run, "least_confidence", tmp_path)
    assert rec["snapshot_epoch"] == 2 and rec["snapshot"].endswith(f"{RUN}_epoch2.pth")
    assert_user_error(cli(compute_cld_scores, "--loss_path", run["loss"], "--method", "herding", "--snapshot_epoch",
                          "7", "--device", "cpu"), "kept no weights after epoch 7", "snapshots: 2", "final weights: epoch 3")


# ----------------------------------------------------------------------------- independent recomputation

def _ranked(scores, cls_idx):
    """Highest first, ties to the lower dataset index."""
    return cls_idx[np.lexsort((cls_idx, -scores))]


def _class_rows(features, c):
    lbl, idx = features["labels"], features["train_indices"]
    rows = np.flatnonzero(lbl == c)
    rows = rows[np.argsort(idx[rows], kind="stable")]
    return rows, idx[rows]


def _exported(run, method, tmp_path):
    path = str(tmp_path / f"{method}.npz")
    rec = _score(run, method, tmp_path, save_features=path)
    with np.load(path, allow_pickle=False) as f:
        return rec, {k: f[k] for k in f.files}


def _best(values, chosen, scale=None):
    """The documented tie rule: the lowest row within 1e-12 of the scale of the values (values
    equal in exact arithmetic may differ in their last bits)."""
    v = np.array([-np.inf if j in chosen else x for j, x in enumerate(values)])
    return int(np.flatnonzero(v >= v.max() - 1e-12 * (abs(v.max()) if scale is None else scale))[0])


def _herding(e):
    mu, chosen, total = e.mean(0), [], np.zeros(e.shape[1])
    for t in range(1, len(e) + 1):
        chosen.append(_best([-np.sum((t * mu - total - x) ** 2) for x in e], chosen))
        total += e[chosen[-1]]
    return chosen


def _kcenter(e, first):
    chosen = [first]
    while len(chosen) < len(e):
        chosen.append(_best([min(np.linalg.norm(e[j] - e[k]) for k in chosen) for j in range(len(e))], chosen))
    return chosen


@pytest.mark.parametrize("method", ["herding", "kcenter", "moderate", "least_confidence", "entropy", "margin"])
def test_embedding_and_probability_methods_recomputed_from_the_exported_matrix(method, run, tmp_path):
    rec, f = _exported(run, method, tmp_path)
    matrix = f["embeddings"] if "embeddings" in f else f["probs"]
    assert matrix.dtype == np.float32 and matrix.shape[0] == len(run["losses"]["train_indices"])
    for c in rec["indices"]:
        rows, idx = _class_rows(f, c)
        x = matrix[rows].astype(np.float64)
        if method == "herding":
            expected = idx[_herding(x)]
        elif method == "kcenter":
            first = int(np.flatnonzero(idx == rec["indices"][c][0])[0])  # the recorded first center
            expected = idx[_kcenter(x, first)]
        elif method == "moderate":
            d = np.linalg.norm(x - x.mean(0), axis=1)
            expected = _ranked(-np.abs(d - np.median(d)), idx)
        else:
            p = np.sort(x, axis=1)[:, ::-1]
            score = {"least_confidence": 1 - p[:, 0], "entropy": -(x * np.log(np.where(x > 0, x, 1))).sum(1),
                     "margin": -(p[:, 0] - p[:, 1])}[method]
            expected = _ranked(score, idx)
        np.testing.assert_array_equal(rec["indices"][c], expected)


def _greedy(gain_of, n, scale):
    chosen = []
    for _ in range(n):
        chosen.append(_best([gain_of(chosen, j) for j in range(n)], chosen, scale))
    return chosen


@pytest.mark.parametrize("method", ["grand", "facility_location", "graph_cut"])
def test_gradient_methods_recomputed_from_the_exported_gradients(method, run, tmp_path):
    rec, f = _exported(run, method, tmp_path)
    grads = f["grads"].astype(np.float64)
    assert grads.shape[1] == 10 * (64 + 1)  # C x (D + 1): bias, then the weight block
    for c in rec["indices"]:
        rows, idx = _class_rows(f, c)
        g = grads[rows]
        norms = np.linalg.norm(g, axis=1)
        if method == "grand":
            np.testing.assert_array_equal(rec["indices"][c], _ranked(norms, idx))
            continue
        s = 0.5 + 0.5 * (g @ g.T) / np.outer(norms, norms)
        if method == "facility_location":
            def gain(chosen, j):
                best = s[:, chosen].max(1) if chosen else np.zeros(len(g))
                return np.maximum(s[:, j] - best, 0).sum()
            scale = len(g)  # gains sum n differences of similarities of at most 1
        else:
            def gain(chosen, j):
                return s[:, j].sum() - 2 * s[chosen, j].sum() - s[j, j]
            scale = 3 * len(g)
        np.testing.assert_array_equal(rec["indices"][c], idx[_greedy(gain, len(g), scale)])


def test_snapshots_survive_a_resume(run, tmp_path):
    flags = s1_flags(run["data"], tmp_path, epochs=2, snapshot_epochs=[1, 2, 3])
    with contextlib.redirect_stdout(io.StringIO()):
        get_loss_values.main(**flags)
        first = {e: open(tmp_path / "ckpt" / f"{RUN}_epoch{e}.pth", "rb").read() for e in (1, 2)}
        path = get_loss_values.main(**dict(flags, epochs=3, resume_path=str(tmp_path / "ckpt" / f"{RUN}_last.pth")))
    assert sorted(load_losses(path)["checkpoints"]["snapshots"]) == [1, 2, 3]
    for e, raw in first.items():
        assert open(tmp_path / "ckpt" / f"{RUN}_epoch{e}.pth", "rb").read() == raw


def test_several_snapshots_take_the_40_epoch_one_or_are_refused_naming_them(run, tmp_path):
    from utils.methods.record import default_snapshot

    assert default_snapshot([], 30, "r") == 30 and default_snapshot([10], 30, "r") == 10
    assert default_snapshot([10, 40, 60], 90, "r") == 40
    flags = s1_flags(run["data"], tmp_path, snapshot_epochs=[1, 2])
    with contextlib.redirect_stdout(io.StringIO()):
        loss = get_loss_values.main(**flags)
    assert_user_error(cli(compute_cld_scores, "--loss_path", loss, "--method", "herding", "--device", "cpu"),
                      "kept weight snapshots after epochs 1, 2", "--snapshot_epoch")


def test_the_summary_and_the_score_file_name_the_weights_used(run, tmp_path):
    proc = cli(compute_cld_scores, "--loss_path", run["loss"], "--method", "herding", "--device", "cpu",
               "--output_path", str(tmp_path / "h.pickle"))
    assert proc.returncode == 0 and f"{RUN}_epoch2.pth (after epoch 2)" in proc.stdout
    rec = load_scores(str(tmp_path / "h.pickle"))
    assert rec["snapshot_epoch"] == 2 and rec["options"]["selection_model"] == "snapshot"


# ----------------------------------------------------------------------------- weights and targets

def _class_gradients(f, c):
    rows, idx = _class_rows(f, c)
    return f["grads"].astype(np.float64)[rows], idx


def test_craig_weights_count_the_examples_nearest_each_selected_one(run, tmp_path):
    assert sorted(_score(run, "craig", tmp_path / "default")["weights"]) == ["k1"]  # the printed command's k
    path = str(tmp_path / "craig.npz")
    rec = _score(run, "craig", tmp_path, budgets=[2, 0.5], save_features=path)
    with np.load(path, allow_pickle=False) as f:
        f = {k: f[k] for k in f.files}
    assert sorted(rec["weights"]) == ["f0.5", "k2"]
    for c in rec["indices"]:
        g, idx = _class_gradients(f, c)
        for key, k in (("k2", 2), ("f0.5", int(np.floor(0.5 * len(idx) + 0.5)))):
            chosen = [int(np.flatnonzero(idx == i)[0]) for i in rec["indices"][c][:k]]
            d = np.linalg.norm(g[:, None, :] - g[None, sorted(chosen), :], axis=2)
            counts = np.bincount(d.argmin(1), minlength=k)
            expected = [counts[sorted(chosen).index(j)] for j in chosen]
            np.testing.assert_array_equal(rec["weights"][key][c], expected)
            assert rec["weights"][key][c].sum() == len(idx)  # every example of the class is some medoid's


def test_gradmatch_weights_are_the_nonnegative_least_squares_fit_of_the_target(run, tmp_path):
    from scipy.optimize import nnls

    for target in ("val", "train"):
        path = str(tmp_path / f"gm_{target}.npz")
        rec = _score(run, "gradmatch", tmp_path / target, budgets=[3], gradient_target=target, save_features=path)
        assert rec["options"]["gradient_target"] == target
        with np.load(path, allow_pickle=False) as f:
            f = {k: f[k] for k in f.files}
        for c in rec["indices"]:
            g, idx = _class_gradients(f, c)
            if target == "val":
                b = f["val_grads"].astype(np.float64)[f["val_labels"] == c].mean(0)
            else:
                b = g.mean(0)
            chosen = [int(np.flatnonzero(idx == i)[0]) for i in rec["indices"][c][:3]]
            np.testing.assert_allclose(rec["weights"]["k3"][c], nnls(g[chosen].T, b)[0], rtol=1e-6, atol=1e-9)


def test_a_budget_larger_than_a_class_is_refused_before_the_evaluation_pass(run, tmp_path):
    sizes = np.bincount(run["losses"]["tr_lbl"])
    c = int(np.argmin(sizes))
    # A data folder that does not exist: the evaluation pass would fail on it, so the budget is checked first.
    proc = cli(compute_cld_scores, f"--loss_path={run['loss']}", "--method=craig", f"--budgets=[2,{sizes[c] + 1}]",
               f"--output_path={tmp_path / 'craig.pickle'}", "--device=cpu", f"--data_path={tmp_path / 'nowhere'}")
    assert_user_error(proc, f"--budgets {sizes[c] + 1}: class {c} has only {sizes[c]} training examples")
    assert not os.listdir(tmp_path)


def test_the_gradient_target_changes_gradmatch_and_is_recorded(run, tmp_path):
    val = _score(run, "gradmatch", tmp_path / "v")
    train = _score(run, "gradmatch", tmp_path / "t", gradient_target="train")
    assert val["options"]["gradient_target"] == "val" and train["options"]["gradient_target"] == "train"
    assert any(not np.array_equal(val["indices"][c], train["indices"][c]) for c in val["indices"])


def test_stage3_trains_craig_weighted_by_default_and_unweighted_on_request(run, tmp_path):
    _score(run, "craig", tmp_path, budgets=[2])
    path = str(tmp_path / "craig_scores.pickle")
    common = dict(score_path=path, data_path=run["data"], samples_per_class=2, epochs=1, device="cpu", workers=0,
                  download=False, batch_size=8, checkpoint_path=str(tmp_path / "c"), logpath=str(tmp_path / "l"),
                  results_dir=str(tmp_path / "r"))
    with contextlib.redirect_stdout(io.StringIO()):
        weighted = train_on_coresets.main(**common)
        plain = train_on_coresets.main(**common, weighted=False, name="plain")
    assert weighted["weighted"] is True and plain["weighted"] is False and plain["coreset_weights"] is None
    rec = load_scores(path)
    by_class = {}
    for i, w in zip(weighted["coreset_indices"], weighted["coreset_weights"]):
        c = next(c for c, v in rec["indices"].items() if i in v)
        by_class[c] = by_class.get(c, 0) + w
    assert by_class == {c: len(v) for c, v in rec["indices"].items()}  # per class: the pool size
    import pandas as pd

    rows = pd.read_csv(tmp_path / "r" / "results.csv").set_index("name")
    assert rows.loc["plain", "weighted"] == False and rows.loc[weighted["name"], "snapshot_epoch"] == 2  # noqa: E712
    proc = cli(train_on_coresets, *[f"--{k}={v}" for k, v in {**common, "samples_per_class": 3}.items()])
    assert_user_error(proc, "craig weights for the budgets k2, not k3", "--budgets 3", "--weighted false")


def test_a_weighted_loss_is_the_weighted_mean_of_the_example_losses():
    import torch

    from utils.train.engine import _LossStep

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y, w = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0]), torch.tensor([1.0, 3.0, 0.5, 2.0, 0.0])
    loss, totals = _LossStep(model, "cpu", None)(x, y, w)
    each = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    assert torch.allclose(loss, (each * w).sum() / w.sum())
    assert torch.allclose(totals[0], each.double().sum())  # the log keeps the plain loss
