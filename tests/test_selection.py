"""utils/coreset_training/coreset.py: orders, CCS allocation and sampling, budgets, index checks."""
from __future__ import annotations

import numpy as np
import pytest

from utils.errors import UserError
from utils.core.selection import ORDERS, ccs_allocate, check_indices, class_budgets, select_class, select_coreset

# class 0: dataset indices 10..19 best first; class 1: 100..104 best first
RANKED = {0: np.arange(10, 20), 1: np.arange(100, 105)}
SCORES = {0: np.linspace(1, 0, 10), 1: np.linspace(1, 0, 5)}


@pytest.mark.parametrize("order,expected", [
    ("top", [10, 11, 12, 100, 101]),
    ("bottom", [17, 18, 19, 103, 104]),
    # middle: start (n - k) // 2 -> class 0 (n=10, k=3): 3..5; class 1 (n=5, k=2): 1..2
    ("middle", [13, 14, 15, 101, 102]),
])
def test_fixed_orders_exact(order, expected):
    got = select_coreset(RANKED, SCORES, {0: 3, 1: 2}, order=order)
    assert got.tolist() == expected and got.dtype == np.int64


def test_middle_even_budget_is_the_median_pair():
    assert select_class(np.arange(10), None, 2, "middle").tolist() == [4, 5]
    assert select_class(np.arange(9), None, 3, "middle").tolist() == [3, 4, 5]


def test_random_is_seeded_and_drawn_from_the_pool():
    budget = {0: 4, 1: 3}
    a = select_coreset(RANKED, None, budget, order="random", seed=1)
    assert a.tolist() == select_coreset(RANKED, None, budget, order="random", seed=1).tolist()
    assert len(set(a.tolist())) == 7
    assert sum(i in RANKED[0] for i in a) == 4 and sum(i in RANKED[1] for i in a) == 3
    draws = {tuple(select_coreset(RANKED, None, budget, order="random", seed=s)) for s in range(20)}
    assert len(draws) > 10
    # a class's draw does not depend on the other classes
    alone = select_coreset({0: RANKED[0]}, None, {0: 4}, order="random", seed=1)
    assert alone.tolist() == [i for i in a.tolist() if i < 100]


def test_output_sorted_and_legacy_scores_none_ok():
    got = select_coreset({1: np.array([9, 3, 7]), 0: np.array([5, 1])}, None, {0: 2, 1: 2}, order="top")
    assert got.tolist() == [1, 3, 5, 9]


# ----------------------------------------------------------------------------- CCS

def test_ccs_allocate_hand_computed():
    # non-empty strata by size: b1 (1), b4 (2), b2 (5), b3 (10); budget 9
    #   b1: min(1, 9 // 4 = 2) = 1, left 8; b4: min(2, 8 // 3 = 2) = 2, left 6
    #   b2: min(5, 6 // 2 = 3) = 3, left 3; b3: min(10, 3 // 1) = 3
    assert ccs_allocate([0, 1, 5, 10, 2], 9).tolist() == [0, 1, 3, 3, 2]


def test_ccs_allocate_always_spends_a_feasible_budget():
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(0, 8, rng.integers(1, 12)) * (rng.random() < 0.9)
        total = int(sizes.sum())
        budget = int(rng.integers(0, total + 1))
        alloc = ccs_allocate(sizes, budget)
        assert alloc.sum() == budget and np.all(alloc <= sizes) and np.all(alloc >= 0)


def ccs_class():
    # Score range [0, 50] -> 50 strata of width 1. Histogram: 1 example in stratum 0 (score 0),
    # 2 in stratum 10 (10.2), 5 in stratum 25 (25.5), 10 in stratum 49 (50.0, the top edge), plus
    # two "hardest" examples at 1000 that beta = 0.1 (floor(0.1 * 20) = 2) drops from the top.
    sc = np.array([1000.0] * 2 + [50.0] * 10 + [25.5] * 5 + [10.2] * 2 + [0.0])
    idx = np.arange(200, 220)  # best (highest score) first, as in a score file
    return idx, sc


def test_ccs_samples_the_allocation_per_stratum():
    idx, sc = ccs_class()
    chosen = select_coreset({0: idx}, {0: sc}, {0: 9}, order="ccs", seed=3, ccs_beta=0.1)
    by_score = sc[np.searchsorted(idx, chosen)]
    counts = {s: int(np.sum(by_score == s)) for s in (0.0, 10.2, 25.5, 50.0, 1000.0)}
    assert counts == {0.0: 1, 10.2: 2, 25.5: 3, 50.0: 3, 1000.0: 0}
    again = select_coreset({0: idx}, {0: sc}, {0: 9}, order="ccs", seed=3, ccs_beta=0.1)
    assert chosen.tolist() == again.tolist()


def test_ccs_hard_end_bottom_drops_the_low_scores():
    idx, sc = ccs_class()
    chosen = select_coreset({0: idx}, {0: sc}, {0: 18}, order="ccs", ccs_beta=0.1, hard_end="bottom")
    assert 219 not in chosen and 218 not in chosen and len(chosen) == 18  # 0.0 and one 10.2 dropped


def test_ccs_budget_larger_than_kept_pool():
    idx, sc = ccs_class()
    with pytest.raises(UserError, match=r"class 0: CCS with --ccs_beta 0.5 keeps 10 of 20"):
        select_coreset({0: idx}, {0: sc}, {0: 11}, order="ccs", ccs_beta=0.5)


def test_ccs_needs_scores():
    with pytest.raises(UserError, match="order 'ccs' needs per-example scores"):
        select_coreset(RANKED, None, {0: 2}, order="ccs")


def test_ccs_constant_scores_is_one_stratum():
    chosen = select_coreset({0: np.arange(30)}, {0: np.zeros(30)}, {0: 5}, order="ccs", seed=0)
    assert len(set(chosen.tolist())) == 5


# ----------------------------------------------------------------------------- budgets

def test_budgets_samples_per_class():
    assert class_budgets({0: 10, 1: 5}, samples_per_class=5) == {0: 5, 1: 5}
    with pytest.raises(UserError, match="class 1 has only 5 ranked examples, fewer than the 6"):
        class_budgets({0: 10, 1: 5}, samples_per_class=6)


def test_budgets_fraction_rounds_half_up_at_least_one():
    # 0.1 x 45 = 4.5 -> 5; 0.1 x 5 = 0.5 -> 1; 0.1 x 3 = 0.3 -> 0 -> at least 1; 0.1 x 100 -> 10
    assert class_budgets({0: 45, 1: 5, 2: 3, 3: 100}, fraction=0.1) == {0: 5, 1: 1, 2: 1, 3: 10}
    assert class_budgets({0: 7}, fraction=1.0) == {0: 7}


@pytest.mark.parametrize("kwargs,message", [
    ({}, "exactly one budget"),
    ({"samples_per_class": 2, "fraction": 0.1}, "exactly one budget"),
    ({"samples_per_class": 0}, "positive integer"),
    ({"fraction": 0.0}, r"in \(0, 1\]"),
    ({"fraction": 1.5}, r"in \(0, 1\]"),
])
def test_budget_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        class_budgets({0: 10}, **kwargs)


def test_unknown_order_and_bad_args():
    with pytest.raises(UserError, match="choose one of " + ", ".join(ORDERS)):
        select_coreset(RANKED, SCORES, {0: 1}, order="best")
    with pytest.raises(UserError, match="ccs_beta"):
        select_coreset(RANKED, SCORES, {0: 1}, order="ccs", ccs_beta=1.0)
    with pytest.raises(UserError, match="class 7 has no ranking"):
        select_coreset(RANKED, SCORES, {7: 1})


# ----------------------------------------------------------------------------- index checks

def test_check_indices_ok():
    check_indices(RANKED, n_train=105)
    check_indices({}, n_train=0)


@pytest.mark.parametrize("ranked,n_train,message", [
    ({0: np.array([1, 2]), 1: np.array([3, 105])}, 105, r"class 1 lists index 105, outside the training set \[0, 105\)"),
    ({0: np.array([1, -2])}, 10, "class 0 lists index -2"),
    ({0: np.array([1, 2, 1])}, 10, r"index 1 is listed twice \(class 0\)"),
    ({0: np.array([1, 2]), 3: np.array([4, 2])}, 10, r"index 2 is listed twice \(classes 0 and 3\)"),
])
def test_check_indices_errors(ranked, n_train, message):
    with pytest.raises(UserError, match=message):
        check_indices(ranked, n_train)
