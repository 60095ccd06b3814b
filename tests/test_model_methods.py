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
from utils.scoring import methods

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


def test_every_registered_method_has_exactly_one_scorer_in_its_family_table():
    from utils.scoring import model, trajectory

    tables = {"trajectory": trajectory.SCORERS, "model": model.SCORERS}
    for m in methods.METHODS.values():
        assert callable(tables[m.family][m.name]), m.name
        other = "model" if m.family == "trajectory" else "trajectory"
        assert m.name not in tables[other], m.name
    assert set(trajectory.SCORERS) | set(model.SCORERS) == set(methods.METHODS)


def test_stage1_keeps_the_snapshots_and_records_them(run):
    d = run["losses"]
    snap = os.path.join(run["base"], "ckpt", f"{RUN}_epoch2.pth")
    assert d["checkpoints"]["snapshots"] == {2: snap} and load_checkpoint(snap)["epoch"] == 2
    assert load_checkpoint(snap)["kind"] == "snapshot" and "optimizer" not in load_checkpoint(snap)


@pytest.mark.parametrize("method", MODEL_METHODS)
def test_every_model_method_writes_a_score_file_that_stage3_trains_on(method, run, tmp_path):
    extra = {"deepfool_max_iter": 5} if method == "deepfool" else {}
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
    assert result["method"] == method and result["coreset_indices"] == sorted(
        int(i) for v in rec["indices"].values() for i in v[:2])


def test_the_default_weights_are_the_40_epoch_snapshot_else_the_final_ones(run, tmp_path):
    rec = _score(run, "least_confidence", tmp_path)
    assert rec["snapshot_epoch"] == 3 and rec["snapshot"].endswith(f"{RUN}_last.pth")  # no epoch-40 snapshot
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
