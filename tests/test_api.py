"""utils/api.py and docs/api.md: every snippet of the document runs and prints what the document
says; the functions agree with independent recomputations; bad input is a ValueError."""
from __future__ import annotations

import contextlib
import io
import os
import re

import numpy as np
import pytest

from conftest import REPO
from utils import api

DOC = os.path.join(REPO, "docs", "api.md")


def test_every_snippet_of_the_api_document_runs_and_prints_what_it_says():
    text = open(DOC).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/api.md, snippet {i + 1}", "exec"), namespace)
    printed = re.search(r"prints\n\n```\n(.*?)```", text, re.S).group(1)
    assert out.getvalue() == printed


def _trajectories(seed=1, epochs=8, n=40, v=20, classes=4):
    rng = np.random.default_rng(seed)
    return (rng.random((epochs, n)).astype(np.float32), np.arange(n) % classes,
            rng.random((epochs, v)).astype(np.float32), np.arange(v) % classes)


def test_cld_equals_pearson_recomputed_with_corrcoef():
    tr, tl, val, vl = _trajectories()
    got = api.cld(tr, tl, val, vl)
    dv = np.diff(np.stack([val[:, vl == c].astype(np.float64).mean(axis=1) for c in range(4)], axis=1), axis=0)
    dx = np.diff(tr.astype(np.float64), axis=0)
    want = [np.corrcoef(dx[:, j], dv[:, tl[j]])[0, 1] for j in range(tr.shape[1])]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_rank_and_select_name_the_given_indices_best_first():
    scores = np.array([0.1, 0.9, 0.5, 0.9, -0.2, 0.3])
    labels = np.array([0, 0, 0, 1, 1, 1])
    indices = np.array([10, 11, 12, 20, 21, 22])
    ranked, aligned = api.rank(scores, labels, indices)
    assert ranked[0].tolist() == [11, 12, 10] and ranked[1].tolist() == [20, 22, 21]
    assert aligned[0].tolist() == [0.9, 0.5, 0.1]
    assert api.select(ranked, samples_per_class=1).tolist() == [11, 20]
    assert api.select(ranked, samples_per_class=1, order="bottom").tolist() == [10, 21]
    assert api.select(ranked, scores=aligned, samples_per_class=1, order="zero").tolist() == [10, 21]


def test_margin_baseline_ranks_the_smallest_probability_gap_first():
    rng = np.random.default_rng(3)
    labels = np.arange(30) % 3
    probs = rng.dirichlet(np.ones(5), size=30)
    ranked, _ = api.baseline("margin", labels, probs=probs)
    top2 = np.sort(probs, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    for c in range(3):
        members = np.flatnonzero(labels == c)
        assert ranked[c].tolist() == members[np.lexsort((members, gap[members]))].tolist()


@pytest.mark.parametrize("call,message", [
    (lambda t: api.cld(t["bad"], t["tl"], t["val"], t["vl"]), "train_losses holds NaN"),
    (lambda t: api.cld(t["tr"], t["tl"][:-1], t["val"], t["vl"]), "train_labels has 39 entries but there are 40"),
    (lambda t: api.cld(t["tr"], t["tl"], t["val"][:5], t["vl"]), "train_losses has 8 epochs (rows) but val_losses has 5"),
    (lambda t: api.cld(t["tr"][:2], t["tl"], t["val"][:2], t["vl"]), "CLD needs at least 3 epochs"),
    (lambda t: api.cld(t["tr"], t["tl"], t["val"], t["vl"] % 2), "class 2, 3 has training examples but no validation"),
    (lambda t: api.cld(t["tr"], t["tl"] * 0.5, t["val"], t["vl"]), "train_labels must be a 1-D array of integer"),
    (lambda t: api.rank(np.full(40, np.nan), t["tl"]), "scores must be a 1-D array of finite numbers"),
    (lambda t: api.baseline("cld", t["tl"]), "method 'cld' is not ranked from features"),
    (lambda t: api.baseline("nope", t["tl"]), "unknown method 'nope'"),
    (lambda t: api.baseline("entropy", t["tl"], probs=np.ones((40, 4)), logits=np.ones((40, 4))), "not both"),
    (lambda t: api.baseline("entropy", t["tl"], logits=np.ones((40, 2))), "labels go up to class 3"),
    (lambda t: api.baseline("gradmatch", t["tl"], embeddings=np.ones((40, 3)), logits=np.ones((40, 4))),
     "gradmatch reads validation examples"),
    (lambda t: api.select({0: [1, 2]}, samples_per_class=1, fraction=0.5), "give exactly one budget"),
    (lambda t: api.select({0: [1, 2]}, samples_per_class=1, order="sideways"), "unknown order 'sideways'"),
])
def test_bad_input_is_a_value_error_naming_the_problem(call, message):
    tr, tl, val, vl = _trajectories()
    bad = tr.copy()
    bad[2, 5] = np.inf
    with pytest.raises(ValueError) as err:
        call({"tr": tr, "tl": tl, "val": val, "vl": vl, "bad": bad})
    assert message in str(err.value)
