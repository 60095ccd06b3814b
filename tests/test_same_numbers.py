"""The same inputs give the same numbers as when tests/fixtures/fingerprints.json was written
(before the methods moved to one module each and the stages took option records): every
trajectory method's score file, every model method's rankings and weights, every selection order."""
from __future__ import annotations

import json
import os

from fingerprints import fingerprints


def test_every_method_and_order_computes_what_it_computed_before(tmp_path):
    expected = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "fingerprints.json")))
    got = fingerprints(str(tmp_path))
    assert got.keys() == expected.keys()
    for part in expected:
        changed = sorted(name for name in expected[part] if got[part].get(name) != expected[part][name])
        assert got[part].keys() == expected[part].keys() and not changed, f"{part}: {changed}"


def test_a_changed_number_changes_its_fingerprint():
    from fingerprints import _digest, _rounded, ranking_digest

    import numpy as np

    a = {0: np.array([3, 1, 2]), 1: np.array([0])}
    scores = {0: np.array([0.9, 0.5, 0.1]), 1: np.array([1.0])}
    assert ranking_digest(a, scores) != ranking_digest({0: np.array([1, 3, 2]), 1: np.array([0])}, scores)
    assert ranking_digest(a, scores) != ranking_digest(a, {**scores, 1: np.array([1.0 + 1e-6])})
    assert ranking_digest(a, scores) == ranking_digest(a, {**scores, 1: np.array([1.0 + 1e-13])})  # rounding only
    assert _digest(_rounded([0.1])) != _digest(_rounded([0.2]))
