"""utils/core/cld.py and the trajectory methods (utils/methods/): golden numbers for CLD and every baseline, ranking, epoch selection, errors."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from utils.cli.config import STAGE2
from utils.errors import UserError
from utils.files.losses import SIGNAL_KEYS
from utils.core import cld as S
from utils.methods import aum, dyn_unc, el2n, forgetting, loss, random, registry as methods
from utils.scoring.compute_scores import check_signals
from utils.core.ranking import rank_per_class


def make_losses(tr_loss, val_loss, tr_lbl, val_lbl, train_indices=None, epoch=None, **signals):
    """A validated-looking loss dict (the shape utils.files.losses.load_losses returns)."""
    tr_loss = np.asarray(tr_loss, dtype=np.float32)
    val_loss = np.asarray(val_loss, dtype=np.float32)
    n_ep, n = tr_loss.shape
    d = {
        "epoch": np.arange(n_ep, dtype=np.int64) if epoch is None else np.asarray(epoch, dtype=np.int64),
        "tr_loss": tr_loss, "val_loss": val_loss,
        "tr_lbl": np.asarray(tr_lbl, dtype=np.int64), "val_lbl": np.asarray(val_lbl, dtype=np.int64),
        "train_indices": np.arange(n, dtype=np.int64) if train_indices is None
        else np.asarray(train_indices, dtype=np.int64),
        "val_indices": np.arange(1000, 1000 + val_loss.shape[1], dtype=np.int64),
    }
    d.update({k: np.asarray(v) for k, v in signals.items()})
    return d


# ----------------------------------------------------------------------------- CLD golden

def golden_losses():
    # Class 0 validation: a = [2, 1, 1, 0.5], b = [4, 3, 2, 2.5] -> V0 = [3, 2, 1.5, 1.5]
    #   dV0 = [-1, -0.5, 0], mean -0.5, centred y = [-0.5, 0, 0.5], sum y^2 = 0.5
    # Class 1 validation: c = [1, 2, 3, 4] -> dV1 = [1, 1, 1]: zero variance -> every CLD of class 1 is 0
    val = np.array([[2.0, 4.0, 1.0],
                    [1.0, 3.0, 2.0],
                    [1.0, 2.0, 3.0],
                    [0.5, 2.5, 4.0]])
    # Training columns (dataset index, class):
    #   z1 (40, 0) [2, 1, 0.5, 0.5]: d = [-1, -0.5, 0] = dV0             -> r = 1
    #   z2 (11, 0) [1, 1, 2, 2.5]:   d = [0, 1, 0.5], centred [-0.5, 0.5, 0]
    #        sxy = 0.25, sxx = 0.5, r = 0.25 / sqrt(0.5 * 0.5)           -> r = 0.5
    #   z3 (22, 0) [1, 2, 2, 1]:     d = [1, 0, -1], centred the same
    #        sxy = -0.5 - 0.5 = -1, sxx = 2, r = -1 / sqrt(2 * 0.5)      -> r = -1
    #   z4 (35, 0) [0.7, 0.7, 0.7, 0.7]: d = 0, zero variance           -> r = 0
    #   z5 (13, 0) [3, 2, 1, 0]:     d = [-1, -1, -1], zero variance     -> r = 0
    #   z6 (7, 1)  [1, 2, 2, 1]:     class 1 has zero-variance dV        -> r = 0
    tr = np.array([[2.0, 1.0, 1.0, 0.7, 3.0, 1.0],
                   [1.0, 1.0, 2.0, 0.7, 2.0, 2.0],
                   [0.5, 2.0, 2.0, 0.7, 1.0, 2.0],
                   [0.5, 2.5, 1.0, 0.7, 0.0, 1.0]])
    return make_losses(tr, val, [0, 0, 0, 0, 0, 1], [0, 0, 1], train_indices=[40, 11, 22, 35, 13, 7])


def test_cld_golden_four_epochs():
    d = golden_losses()
    np.testing.assert_allclose(S.cld(d), [1.0, 0.5, -1.0, 0.0, 0.0, 0.0], atol=1e-12)


def test_cld_golden_ranking_ties_by_index():
    d = golden_losses()
    ranked, sc = rank_per_class(S.cld(d), d["tr_lbl"], d["train_indices"])
    assert list(ranked) == [0, 1]
    # z4 (35) and z5 (13) tie at 0: ascending dataset index
    assert ranked[0].tolist() == [40, 11, 13, 35, 22]
    np.testing.assert_allclose(sc[0], [1.0, 0.5, 0.0, 0.0, -1.0], atol=1e-12)
    assert ranked[1].tolist() == [7] and ranked[0].dtype == np.int64


def test_cld_zero_variance_is_zero_not_nan():
    # a flat trajectory, an equal-step one, and a class whose validation differences are
    # constant: all 0 (the paper's "zero std -> correlation 0"), never NaN
    tr = np.array([[0.1, 0.75, 1.0], [0.1, 0.5, 2.0], [0.1, 0.25, 4.0], [0.1, 0.0, 3.0]])
    val = np.array([[1.0, 1.0], [0.5, 2.0], [0.4, 3.0], [0.1, 4.0]])
    d = make_losses(tr, val, [0, 0, 1], [0, 1])
    out = S.cld(d)
    assert out.tolist() == [0.0, 0.0, 0.0]


def naive_cld(d):
    """Straightforward per-example reference: np.corrcoef of float64 differences."""
    tr = d["tr_loss"].astype(np.float64)
    val = d["val_loss"].astype(np.float64)
    out = np.empty(tr.shape[1])
    for j in range(tr.shape[1]):
        c = d["tr_lbl"][j]
        x = np.diff(tr[:, j])
        y = np.diff(val[:, d["val_lbl"] == c].mean(axis=1))
        out[j] = 0.0 if x.std() == 0 or y.std() == 0 else np.corrcoef(x, y)[0, 1]
    return out


def test_cld_equals_naive_corrcoef_on_random_trajectories(monkeypatch):
    monkeypatch.setattr(S, "_CHUNK_ELEMS", 300)  # many chunks, including a ragged last one
    rng = np.random.default_rng(3)
    n_ep, n, n_val, n_cls = 9, 700, 60, 6
    tr = rng.gamma(2.0, 1.0, (n_ep, n))
    tr[:, 10] = 2.5          # constant trajectory -> 0
    tr[:, 11] = 0.0
    d = make_losses(tr, rng.gamma(2.0, 1.0, (n_ep, n_val)), rng.integers(0, n_cls, n), np.arange(n_val) % n_cls,
                    train_indices=rng.permutation(5000)[:n])
    got = S.cld(d)
    np.testing.assert_allclose(got, naive_cld(d), rtol=0, atol=1e-12)
    assert got[10] == 0.0 and got[11] == 0.0


def test_planted_noise_is_ranked_last_in_its_class():
    rng = np.random.default_rng(0)
    n_ep, n_cls, per_cls, n_val = 30, 5, 80, 50
    t = np.arange(n_ep)[:, None]
    n = n_cls * per_cls
    lbl = np.arange(n) % n_cls
    clean = 4.0 * np.exp(-0.1 * t) + 0.05 * rng.standard_normal((n_ep, n))
    noisy = rng.choice(n, 25, replace=False)
    clean[:, noisy] = 2.0 + 0.05 * t + 0.05 * rng.standard_normal((n_ep, noisy.size))  # rises
    val = 4.0 * np.exp(-0.1 * t) + 0.05 * rng.standard_normal((n_ep, n_val))            # falls
    d = make_losses(np.abs(clean), np.abs(val), lbl, np.arange(n_val) % n_cls, train_indices=np.arange(n) + 100)
    ranked, _ = rank_per_class(S.cld(d), d["tr_lbl"], d["train_indices"])
    for c in range(n_cls):
        planted = set((noisy[lbl[noisy] == c] + 100).tolist())
        assert set(ranked[c][len(ranked[c]) - len(planted):].tolist()) == planted


def test_cld_memory_is_chunked():
    # 40 MB float32 matrix: the scorer may use a few MB of work space, never an (E-1, N) float64 copy
    rng = np.random.default_rng(1)
    n_ep, n = 50, 200_000
    d = make_losses(rng.random((n_ep, n), dtype=np.float32), rng.random((n_ep, 100), dtype=np.float32),
                    np.arange(n) % 10, np.arange(100) % 10)
    tracemalloc.start()
    try:
        S.cld(d)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MB"  # output 1.6 MB + chunks; a copy would be 78 MB


# ----------------------------------------------------------------------------- errors

def test_class_without_validation_example_is_named():
    d = make_losses(np.random.default_rng(0).random((4, 6)), np.ones((4, 2)), [0, 0, 3, 3, 1, 1], [0, 1])
    with pytest.raises(UserError, match=r"class 3 has training examples but no validation example"):
        S.cld(d)


def test_nan_names_first_bad_epoch():
    tr = np.random.default_rng(0).random((6, 5))
    tr[4, 1] = np.nan
    tr[2, 3] = np.inf
    d = make_losses(tr, np.ones((6, 2)), [0] * 5, [0, 0], epoch=[10, 11, 12, 13, 14, 15])
    with pytest.raises(UserError, match=r"NaN/inf at epoch 12 \(first at training example 3\)"):
        S.cld(d)


def test_nan_in_validation_is_caught():
    val = np.ones((5, 2))
    val[1, 0] = np.nan
    d = make_losses(np.random.default_rng(0).random((5, 3)), val, [0] * 3, [0, 0])
    with pytest.raises(UserError, match=r"val_loss holds NaN/inf at epoch 1") as refused:
        S.cld(d)
    # Row 1: no --first_epochs keeps enough epochs before it, so none is suggested
    assert "--first_epochs" not in str(refused.value) and "Too few epochs precede it" in str(refused.value)
    val[1, 0], val[3, 1] = 1.0, np.inf
    with pytest.raises(UserError, match=r"Score only the epochs before it with --first_epochs 3"):
        S.cld(make_losses(np.random.default_rng(0).random((5, 3)), val, [0] * 3, [0, 0]))


@pytest.mark.parametrize("method,signal", [("forgetting", "tr_correct"), ("aum", "tr_margin"), ("el2n", "tr_el2n")])
def test_missing_signal_is_named(method, signal):
    d = make_losses(np.ones((4, 3)), np.ones((4, 1)), [0] * 3, [0])
    d["legacy"] = True
    with pytest.raises(UserError, match=rf"needs the signal '{signal}'.*legacy"):
        check_signals(d, methods.get(method))


def test_unknown_method():
    with pytest.raises(UserError, match="choose one of cld, random"):
        methods.get("magic")


def test_check_labels():
    d = make_losses(np.ones((4, 3)), np.ones((4, 1)), [0, 1, 5], [0])
    with pytest.raises(UserError, match="class 5.*declares 3 classes"):
        S.check_labels(d, 3)
    d["tr_lbl"][0] = -1
    with pytest.raises(UserError, match="negative"):
        S.check_labels(d)


# ----------------------------------------------------------------------------- epochs

def test_select_epochs_first_then_stride():
    d = make_losses(np.arange(30.0).reshape(10, 3), np.ones((10, 1)), [0] * 3, [0], epoch=np.arange(10) + 1,
                    tr_correct=np.ones((10, 3), dtype=bool))
    used = S.select_epochs(d, first_epochs=7, epoch_stride=3)
    assert used["epoch"].tolist() == [1, 4, 7]
    np.testing.assert_array_equal(used["tr_loss"], d["tr_loss"][[0, 3, 6]])
    assert used["tr_correct"].shape == (3, 3) and used["val_loss"].shape == (3, 1)
    assert np.shares_memory(used["tr_loss"], d["tr_loss"])  # a view, not a copy
    assert S.select_epochs(d)["epoch"].tolist() == list(range(1, 11))
    assert S.select_epochs(d, epoch_stride=4)["epoch"].tolist() == [1, 5, 9]


@pytest.mark.parametrize("kwargs,message", [
    ({"first_epochs": 2}, r"keeps 2 of the 10 recorded epochs; scoring needs at least 3"),
    ({"epoch_stride": 5}, r"keeps 2 of the 10"),
    ({"first_epochs": 11}, r"more epochs than the loss file records \(10\)"),
])
def test_select_epochs_errors(kwargs, message):
    d = make_losses(np.ones((10, 3)), np.ones((10, 1)), [0] * 3, [0])
    with pytest.raises(UserError, match=message):
        S.select_epochs(d, **kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"epoch_stride": 0}, r"--epoch_stride must lie in \[1, "),
    ({"first_epochs": -1}, r"--first_epochs must lie in \[0, "),
    ({"el2n_epochs": 0}, r"--el2n_epochs must lie in \[1, "),
    ({"dyn_unc_window": 1}, r"--dyn_unc_window must lie in \[2, "),
    ({"epoch_stride": 1.5}, r"--epoch_stride takes an integer, got 1.5"),
])
def test_scoring_options_are_checked_at_the_command_line_boundary(kwargs, message):
    with pytest.raises(UserError, match=message):
        STAGE2.settings(kwargs)


def test_fewer_than_three_recorded_epochs():
    d = make_losses(np.ones((2, 3)), np.ones((2, 1)), [0] * 3, [0])
    with pytest.raises(UserError, match="records 2 epoch"):
        S.select_epochs(d)


# ----------------------------------------------------------------------------- baselines

def test_loss_golden():
    d = make_losses([[1.0, 0.0], [2.0, 0.0], [3.0, 0.5]], np.ones((3, 1)), [0, 0], [0])
    np.testing.assert_allclose(loss.score(d), [2.0, 0.5 / 3])


def test_el2n_golden_window():
    el = np.array([[0.2, 1.0], [0.4, 1.0], [0.9, 0.1], [0.9, 0.1]])
    d = make_losses(np.ones((4, 2)), np.ones((4, 1)), [0, 0], [0], tr_el2n=el.astype(np.float32))
    np.testing.assert_allclose(el2n.score(d, el2n_epochs=2), [0.3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(el2n.score(d), [0.6, 0.55], rtol=1e-6)  # default 20 > 4 epochs: all


def test_forgetting_golden():
    correct = np.array([
        [1, 1, 0, 1, 0],   # 1->1, 1->0, 0->1, 1->0: 2 events
        [0, 0, 0, 0, 0],   # never correct: E = 5
        [1, 1, 1, 1, 1],   # 0
        [0, 1, 1, 1, 1],   # learned once, never forgotten: 0
        [1, 0, 0, 0, 0],   # 1
    ], dtype=bool).T
    d = make_losses(np.ones((5, 5)), np.ones((5, 1)), [0] * 5, [0], tr_correct=correct)
    np.testing.assert_array_equal(forgetting.score(d), [2, 5, 0, 0, 1])
    ranked, _ = rank_per_class(forgetting.score(d), d["tr_lbl"], d["train_indices"])
    assert ranked[0].tolist() == [1, 0, 4, 2, 3]  # never learned first; ties 0/0 by index


def test_aum_golden():
    margin = np.array([[-1.0, 2.0], [-2.0, 3.0], [0.0, 4.0]], dtype=np.float32)
    d = make_losses(np.ones((3, 2)), np.ones((3, 1)), [0, 0], [0], tr_margin=margin)
    np.testing.assert_allclose(aum.score(d), [-1.0, 3.0])
    ranked, _ = rank_per_class(aum.score(d), d["tr_lbl"], d["train_indices"])
    assert ranked[0].tolist() == [1, 0]  # low AUM (likely mislabeled) at the bottom


def test_dyn_unc_golden():
    # p = exp(-l): column 0 p = [.2, .4, .6, .8]; window 3: both windows have sample std 0.2
    # column 1 p = [.5, .5, .5, 1]: windows std 0 and std([.5, .5, 1]) = sqrt((2/36 + 4/36) / 2)
    #   = sqrt(1/12) = 0.288675; mean over the 2 windows = 0.144338
    p = np.array([[0.2, 0.5], [0.4, 0.5], [0.6, 0.5], [0.8, 1.0]])
    d = make_losses(-np.log(p), np.ones((4, 1)), [0, 0], [0])
    np.testing.assert_allclose(dyn_unc.score(d, dyn_unc_window=3), [0.2, np.sqrt(1 / 12) / 2], rtol=1e-6)
    # window longer than the run: one window of all 4 epochs
    np.testing.assert_allclose(dyn_unc.score(d), [np.std(p[:, 0], ddof=1), np.std(p[:, 1], ddof=1)], rtol=1e-6)


def test_random_seeded_and_independent_of_column_order():
    n = 50
    d = make_losses(np.ones((3, n)), np.ones((3, 1)), [0] * n, [0], train_indices=np.arange(n) * 2)
    a = random.score(d, seed=5)
    np.testing.assert_array_equal(a, random.score(d, seed=5))
    assert not np.array_equal(a, random.score(d, seed=6))
    perm = np.random.default_rng(0).permutation(n)
    d2 = dict(d, train_indices=d["train_indices"][perm])
    np.testing.assert_array_equal(random.score(d2, seed=5), a[perm])  # same example, same draw


def test_registry_is_complete():
    """Every record names a scorer that exists, what it reads, and its ends; aliases resolve."""
    for m in methods.METHODS.values():
        assert m.family in ("trajectory", "model") and m.hard_end in ("top", "bottom") and m.top_means
        if m.family == "trajectory":
            assert callable(m.score) and set(m.inputs) <= {"tr_loss", "val_loss", *SIGNAL_KEYS}
            assert not m.greedy
        assert set(m.options) <= set(STAGE2.flags), m.name
    assert methods.get("uniform") is methods.get("random") and methods.get("CLD").name == "cld"
