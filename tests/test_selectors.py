"""The model methods' math (utils/methods/<method>.py and their helpers, utils/methods/tensors.py)
against independent brute-force references (numpy loops, explicit set functions, autograd), plus
ties, degenerate inputs and tiny classes."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.methods import (cal, contextual_diversity, craig, entropy, facility_location, glister, gradmatch, grand,
                           graph_cut, herding, kcenter, least_confidence, log_determinant, margin, moderate, tensors)


# ----------------------------------------------------------------------------- inputs

def probs(rng, n, c, scale=2.0):
    z = rng.normal(size=(n, c)) * scale
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def grad_inputs(rng, n, c=3, d=4):
    """(R, E, y) as numpy: R = softmax - onehot for random logits and labels."""
    p = probs(rng, n, c)
    y = rng.integers(0, c, size=n)
    r = p.copy()
    r[np.arange(n), y] -= 1.0
    return r, rng.normal(size=(n, d)), y


def explicit_g(r, e):
    """Gradient embeddings written out in numpy: [r, r_1 e, r_2 e, ...]."""
    return np.concatenate([r] + [r[:, [k]] * e for k in range(r.shape[1])], axis=1)


def T(a, dtype=torch.float64):
    return torch.tensor(np.asarray(a), dtype=dtype)


def sym_kl(a, b):
    a, b = np.maximum(a, 1e-12), np.maximum(b, 1e-12)
    return float(np.sum(0.5 * a * np.log(a / b) + 0.5 * b * np.log(b / a)))


def cosine_kernel_np(g):
    n = g.shape[0]
    s = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            ni, nj = np.linalg.norm(g[i]), np.linalg.norm(g[j])
            s[i, j] = 0.5 + 0.5 * (g[i] @ g[j] / (ni * nj) if ni > 0 and nj > 0 else 0.0)
    return s


def brute_greedy(f, n, tol=1e-9):
    """Greedy on an explicit set function: gains f(A + x) - f(A) evaluated directly;
    near-ties (within rounding) go to the lower position."""
    chosen, gains = [], []
    for _ in range(n):
        base = f(chosen)
        cand = [x for x in range(n) if x not in chosen]
        g = np.array([f(chosen + [x]) - base for x in cand])
        best = g.max()
        pick = next(i for i, v in enumerate(g) if v >= best - tol * max(1.0, abs(best)))
        chosen.append(cand[pick])
        gains.append(g[pick])
    return np.array(chosen), np.array(gains)


def facility_value(s):
    return lambda A: float(s[:, A].max(1).sum()) if A else 0.0


# ----------------------------------------------------------------------------- uncertainty, moderate

def test_uncertainty_scores_equal_numpy_formulas():
    p = probs(np.random.default_rng(0), 30, 7)
    p[3, :] = 0.0
    p[3, 2] = 1.0                                   # exact zeros: 0 log 0 = 0
    top = np.sort(p, axis=1)[:, ::-1]
    np.testing.assert_allclose(least_confidence.least_confidence(T(p)), 1 - p.max(1), rtol=1e-12)
    ent = np.array([-sum(v * math.log(v) for v in row if v > 0) for row in p])
    np.testing.assert_allclose(entropy.entropy(T(p)), ent, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(margin.margin(T(p)), -(top[:, 0] - top[:, 1]), rtol=1e-12)
    for f in (least_confidence.least_confidence, entropy.entropy, margin.margin):
        out = f(T(p, torch.float32))
        assert out.dtype == np.float64 and out.shape == (30,)


def test_uncertainty_planted_examples_rank_first():
    p = probs(np.random.default_rng(1), 20, 5, scale=3.0)
    p[7] = 0.2                                      # uniform: least confident, highest entropy
    p[12] = [0.45, 0.45, 0.05, 0.03, 0.02]          # a tie between the top two classes
    assert np.argmax(least_confidence.least_confidence(T(p))) == 7
    assert np.argmax(entropy.entropy(T(p))) == 7
    assert np.argmax(margin.margin(T(p))) in (7, 12)
    assert margin.margin(T(p))[7] == 0.0 and margin.margin(T(p))[12] == 0.0


def test_moderate_equals_numpy_and_planted_median():
    rng = np.random.default_rng(2)
    for n in (9, 10):
        e = rng.normal(size=(n, 6))
        d = np.linalg.norm(e - e.mean(0), axis=1)
        np.testing.assert_allclose(moderate.moderate(T(e)), -np.abs(d - np.median(d)), rtol=1e-12, atol=1e-14)
    # Pairs +-v around the origin (mean 0) at distances 1, 2, 3, 4, 5, 10, 10.5: median 4.
    radii = [1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 10.5]
    e = np.array([s * rad * np.array([1.0, 0.0] if k % 2 else [0.0, 1.0]) for k, rad in enumerate(radii)
                  for s in (1, -1)])
    top = np.argsort(-moderate.moderate(T(e)), kind="stable")[:2]
    assert sorted(top) == [6, 7]


# ----------------------------------------------------------------------------- herding, k-center, CD, CAL

def herding_brute(x):
    n = len(x)
    mu = x.mean(0)
    chosen, gains = [], []
    for t in range(1, n + 1):
        best, arg = np.inf, -1
        for i in range(n):
            if i in chosen:
                continue
            d = np.linalg.norm(t * mu - x[chosen].sum(0) - x[i])
            if d < best:
                best, arg = d, i
        chosen.append(arg)
        gains.append(best)
    return np.array(chosen), np.array(gains)


def kcenter_brute(n, first, dist):
    chosen, gains = [first], [np.inf]
    while len(chosen) < n:
        best, arg = -1.0, -1
        for i in range(n):
            if i not in chosen:
                d = min(dist(i, c) for c in chosen)
                if d > best:
                    best, arg = d, i
        chosen.append(arg)
        gains.append(best)
    return np.array(chosen), np.array(gains)


@pytest.mark.parametrize("seed", range(4))
def test_herding_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(int(rng.integers(3, 8)), 5))
    order, gains = herding.herding(T(x, torch.float32))
    ref_order, ref_gains = herding_brute(x.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-9, atol=1e-9)
    assert order[0] == np.argmin(np.linalg.norm(x - x.mean(0), axis=1))


@pytest.mark.parametrize("seed", range(4))
def test_kcenter_matches_brute_force(seed):
    rng = np.random.default_rng(10 + seed)
    n = int(rng.integers(3, 8))
    x = rng.normal(size=(n, 4))
    first = int(rng.integers(n))
    order, gains = kcenter.kcenter(T(x), first)
    ref_order, ref_gains = kcenter_brute(n, first, lambda i, j: np.linalg.norm(x[i] - x[j]))
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-12)
    assert order[1] == np.argmax(np.linalg.norm(x - x[first], axis=1))
    assert gains[0] == np.inf and np.all(np.diff(gains[1:]) <= 1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_contextual_diversity_matches_brute_force(seed):
    rng = np.random.default_rng(20 + seed)
    n = int(rng.integers(3, 8))
    p = probs(rng, n, 5)
    p[0, 1] = 0.0                                   # an exact zero: clamped, finite distances
    first = int(rng.integers(n))
    order, gains = contextual_diversity.contextual_diversity(T(p), first)
    ref_order, ref_gains = kcenter_brute(n, first, lambda i, j: sym_kl(p[i], p[j]))
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-10)
    assert np.all(np.isfinite(gains[1:]))


@pytest.mark.parametrize("n,k", [(12, 4), (6, 10), (2, 10)])
def test_cal_matches_brute_force(n, k):
    rng = np.random.default_rng(n)
    e = rng.normal(size=(n, 3))
    p = probs(rng, n, 4)
    ref = np.empty(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        dist = np.array([np.linalg.norm(e[i] - e[j]) for j in others])
        nbrs = [others[j] for j in np.argsort(dist, kind="stable")[:k]]
        ref[i] = np.mean([sym_kl(p[j], p[i]) for j in nbrs])
    np.testing.assert_allclose(cal.cal(T(e), T(p), neighbors=k), ref, rtol=1e-10)


def test_cal_neighbour_ties_go_to_lower_position():
    # Row 0 at the origin; rows 1..4 all at distance 1; one neighbour: row 1 (lowest position).
    e = np.array([[0.0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]])
    p = np.array([[0.5, 0.5], [0.9, 0.1], [0.1, 0.9], [0.2, 0.8], [0.3, 0.7]])
    assert cal.cal(T(e), T(p), neighbors=1)[0] == pytest.approx(sym_kl(p[1], p[0]), rel=1e-12)


# ----------------------------------------------------------------------------- gradient embeddings

def autograd_gradients(z, e, y):
    """Per-example gradients of CE w.r.t. an nn.Linear's (bias, weight), via autograd."""
    n, d = e.shape
    lin = torch.nn.Linear(d, z.shape[1]).double()
    out = []
    for i in range(n):
        lin.zero_grad()
        # Make the layer produce logits z[i] for input e[i]: bias = z[i] - W e[i].
        with torch.no_grad():
            lin.bias.copy_(T(z[i]) - lin.weight @ T(e[i]))
        F.cross_entropy(lin(T(e[i : i + 1])), torch.tensor([int(y[i])]), reduction="sum").backward()
        out.append(torch.cat([lin.bias.grad, lin.weight.grad.flatten()]).numpy())
    return np.array(out)


def test_gradient_embeddings_gram_and_grand_equal_autograd():
    rng = np.random.default_rng(3)
    n, c, d = 5, 4, 3
    z = rng.normal(size=(n, c))
    e = rng.normal(size=(n, d))
    y = rng.integers(0, c, size=n)
    r = torch.softmax(T(z), 1).numpy() - np.eye(c)[y]
    g_ref = autograd_gradients(z, e, y)
    g = tensors.gradient_embeddings(T(r), T(e))
    assert g.dtype == torch.float64 and g.shape == (n, c * (d + 1))
    np.testing.assert_allclose(g.numpy(), g_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(tensors.gradient_gram(T(r), T(e)).numpy(), g_ref @ g_ref.T, rtol=1e-12, atol=1e-14)
    r2, e2, _ = grad_inputs(rng, 3, c, d)
    np.testing.assert_allclose(tensors.gradient_gram(T(r), T(e), T(r2), T(e2)).numpy(), g_ref @ explicit_g(r2, e2).T,
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grand.grand(T(r), T(e)), np.linalg.norm(g_ref, axis=1), rtol=1e-12)


def test_gradient_gram_is_exactly_symmetric_with_equal_duplicate_rows():
    rng = np.random.default_rng(4)
    r, e, _ = grad_inputs(rng, 200, 10, 64)
    r[199], e[199] = r[3], e[3]
    G = tensors.gradient_gram(T(r), T(e))
    assert torch.equal(G, G.T) and torch.equal(G[199], G[3])


# ----------------------------------------------------------------------------- submodular greedy

def _cosine_inputs(seed, n):
    """Random gradient factors of n rows and their explicit cosine kernel."""
    r, e, _ = grad_inputs(np.random.default_rng(seed), n)
    return r, e, cosine_kernel_np(explicit_g(r, e))


def _same_as_brute_force(result, f, n, atol=1e-12):
    """A greedy result equals the greedy on the set function ``f`` evaluated by brute force."""
    order, gains = result
    ref_order, ref_gains = brute_greedy(f, n)
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-9, atol=atol)
    return order, gains


@pytest.mark.parametrize("seed", range(3))
def test_facility_location_matches_explicit_greedy_and_bound(seed):
    n = 6
    r, e, s = _cosine_inputs(30 + seed, n)
    order, _ = _same_as_brute_force(facility_location.facility_location(T(r), T(e)), facility_value(s), n)
    f = facility_value(s)
    best = max(f(list(A)) for A in itertools.combinations(range(n), 3))
    assert f(list(order[:3])) >= (1 - 1 / math.e) * best


@pytest.mark.parametrize("seed", range(3))
def test_craig_matches_explicit_greedy(seed):
    rng = np.random.default_rng(40 + seed)
    n = 7
    r, e, _ = grad_inputs(rng, n)
    g = explicit_g(r, e)
    d = np.array([[np.linalg.norm(g[i] - g[j]) for j in range(n)] for i in range(n)])
    s = d.max() - d + 1e-3
    _same_as_brute_force(craig.craig(T(r), T(e)), facility_value(s), n)


@pytest.mark.parametrize("seed,lam", [(0, 1.0), (1, 1.0), (2, 0.3)])
def test_graph_cut_matches_explicit_greedy(seed, lam):
    n = 7
    r, e, s = _cosine_inputs(50 + seed, n)

    def f(A):
        return lam * s[:, A].sum() - s[np.ix_(A, A)].sum() if A else 0.0

    _same_as_brute_force(graph_cut.graph_cut(T(r), T(e), lam=lam), f, n, atol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_log_determinant_matches_explicit_greedy(seed):
    n = 7
    r, e, s = _cosine_inputs(60 + seed, n)

    def f(A):
        return np.linalg.slogdet(s[np.ix_(A, A)])[1] if A else 0.0

    order, gains = log_determinant.log_determinant(T(r), T(e))
    ref_order, ref_gains = brute_greedy(f, n)
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-7, atol=1e-9)


def test_log_determinant_puts_singular_rows_last_in_position_order():
    rng = np.random.default_rng(7)
    r, e, _ = grad_inputs(rng, 5, c=3, d=1)          # gradients span 4 dimensions (r sums to 0) ...
    r, e = np.concatenate([r, r[[1, 0]]]), np.concatenate([e, e[[1, 0]]])   # ... rows 5, 6 copy 1, 0
    order, gains = log_determinant.log_determinant(T(r), T(e))
    # The kernel 0.5 (1 1^T) + 0.5 cos has rank <= 5: after 5 picks everything is singular.
    assert np.all(np.isfinite(gains[:5])) and np.all(gains[5:] == -np.inf)
    rest = order[5:]
    assert list(rest) == sorted(rest)


# ----------------------------------------------------------------------------- GradMatch

def lstsq_residual(A, b):
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    return np.linalg.norm(b - A @ x)


@pytest.mark.parametrize("seed,with_val", [(0, True), (1, True), (2, False)])
def test_gradmatch_residuals_equal_least_squares(seed, with_val):
    rng = np.random.default_rng(70 + seed)
    n = 7
    r, e, _ = grad_inputs(rng, n)                   # 15-dimensional gradients
    g = explicit_g(r, e)
    if with_val:
        rv, ev, _ = grad_inputs(rng, 4)
        b = explicit_g(rv, ev).mean(0)
        order, gains = gradmatch.gradmatch(T(r), T(e), T(rv), T(ev))
    else:
        b = g.mean(0)
        order, gains = gradmatch.gradmatch(T(r), T(e))
    assert sorted(order) == list(range(n))
    assert order[0] == np.argmax(g @ b)
    assert np.all(np.diff(gains) <= 1e-12 * np.linalg.norm(b))
    ref = [lstsq_residual(g[order[: t + 1]].T, b) for t in range(n)]
    np.testing.assert_allclose(gains, ref, rtol=1e-8, atol=1e-7 * np.linalg.norm(b))
    # Each pick has the largest correlation with the residual left by the picks before it.
    for t in range(1, n):
        A = g[order[:t]].T
        res = b - A @ np.linalg.lstsq(A, b, rcond=None)[0]
        if np.linalg.norm(res) <= 1e-6 * np.linalg.norm(b):
            break
        corr = g @ res
        corr[order[:t]] = -np.inf
        assert corr[order[t]] >= corr.max() - 1e-9 * np.abs(corr[np.isfinite(corr)]).max()


def test_gradmatch_after_exact_match_ranks_rest_by_correlation():
    rng = np.random.default_rng(8)
    r, e, _ = grad_inputs(rng, 6)
    r[2], e[2] = [-0.9, 0.5, 0.4], e[2] * 10.0      # g_2 dominates every correlation with itself
    g = explicit_g(r, e)
    order, gains = gradmatch.gradmatch(T(r), T(e), T(r[[2]]), T(e[[2]]))   # target b = g_2
    assert order[0] == 2
    assert gains[0] <= 1e-6 * np.linalg.norm(g[2]) and np.all(gains[1:] == gains[0])
    rest = [j for j in range(6) if j != 2]
    corr = g[rest] @ g[2]
    assert list(order[1:]) == [rest[i] for i in np.argsort(-corr, kind="stable")]


def test_gradmatch_dependent_row_leaves_residual_unchanged():
    rng = np.random.default_rng(9)
    r, e, _ = grad_inputs(rng, 5)
    r, e = np.concatenate([r, r[:1]]), np.concatenate([e, e[:1]])   # row 5 = row 0
    rv, ev, _ = grad_inputs(rng, 3)
    order, gains = gradmatch.gradmatch(T(r), T(e), T(rv), T(ev))
    t0, t5 = list(order).index(0), list(order).index(5)
    assert t0 < t5 and gains[t5] == gains[t5 - 1]


# ----------------------------------------------------------------------------- GLISTER

def glister_brute(r, e, zv, yv, ev, eta):
    """GLISTER greedy with explicit gradient embeddings and autograd for the validation
    gradients at the Taylor-updated logits."""
    n, c = r.shape
    g = explicit_g(r, e)
    chosen, gains = [], []
    for _ in range(n):
        z = zv.copy()
        if chosen:
            step = g[chosen].mean(0)                 # mean gradient of the selected rows
            z = zv - eta * (step[:c][None, :] + ev @ step[c:].reshape(c, -1).T)
        zt = T(z).requires_grad_(True)
        F.cross_entropy(zt, torch.tensor(yv), reduction="sum").backward()
        v = explicit_g(zt.grad.numpy(), ev).mean(0)
        gain = g @ v
        gain[chosen] = -np.inf
        chosen.append(int(np.argmax(gain)))
        gains.append(gain[chosen[-1]])
    return np.array(chosen), np.array(gains)


@pytest.mark.parametrize("seed,eta", [(0, 0.5), (1, 2.0), (2, 0.1)])
def test_glister_matches_explicit_recomputation(seed, eta):
    rng = np.random.default_rng(80 + seed)
    n, c, d, m = 6, 3, 4, 5
    r, e, _ = grad_inputs(rng, n, c, d)
    zv, ev = rng.normal(size=(m, c)), rng.normal(size=(m, d))
    yv = rng.integers(0, c, size=m)
    order, gains = glister.glister(T(r), T(e), T(zv), torch.tensor(yv), T(ev), eta)
    rv = torch.softmax(T(zv), 1).numpy() - np.eye(c)[yv]
    assert order[0] == np.argmax(explicit_g(r, e) @ explicit_g(rv, ev).mean(0))
    ref_order, ref_gains = glister_brute(r, e, zv, yv, ev, eta)
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- ties, degenerate input

def dup_inputs(n=64, c=10, d=16):
    """Inputs with exact duplicate rows, including the last row (BLAS edge tiles) when n = 64."""
    rng = np.random.default_rng(11)
    r, e, _ = grad_inputs(rng, n, c, d)
    p = probs(rng, n, c)
    pairs = [(a, b) for a, b in [(2, 63), (10, 47), (31, 32), (5, 40)] if b < n]
    for a, b in pairs:
        r[b], e[b], p[b] = r[a], e[a], p[a]
    zv, ev = rng.normal(size=(5, c)), rng.normal(size=(5, d))
    return T(r, torch.float32), T(e, torch.float32), T(p, torch.float32), T(zv), torch.tensor(rng.integers(0, c, 5)), \
        T(ev), pairs


def greedy_calls(R, E, P, Zv, Yv, Ev):
    return {
        "herding": lambda: herding.herding(E),
        "kcenter": lambda: kcenter.kcenter(E, 0),
        "contextual_diversity": lambda: contextual_diversity.contextual_diversity(P, 0),
        "craig": lambda: craig.craig(R, E),
        "facility_location": lambda: facility_location.facility_location(R, E),
        "graph_cut": lambda: graph_cut.graph_cut(R, E),
        "log_determinant": lambda: log_determinant.log_determinant(R, E),
        "gradmatch": lambda: gradmatch.gradmatch(R, E, R[:7], E[:7]),
        "gradmatch_train": lambda: gradmatch.gradmatch(R, E),
        "glister": lambda: glister.glister(R, E, Zv, Yv, Ev, 0.5),
    }


def score_calls(R, E, P):
    return {
        "least_confidence": lambda: least_confidence.least_confidence(P),
        "entropy": lambda: entropy.entropy(P),
        "margin": lambda: margin.margin(P),
        "moderate": lambda: moderate.moderate(E),
        "cal": lambda: cal.cal(E, P, neighbors=3),
        "grand": lambda: grand.grand(R, E),
    }


def test_duplicate_rows_tie_toward_lower_position():
    R, E, P, Zv, Yv, Ev, pairs = dup_inputs()
    for name, call in greedy_calls(R, E, P, Zv, Yv, Ev).items():
        order, gains = call()
        assert sorted(order) == list(range(len(order))), name
        pos = {int(x): t for t, x in enumerate(order)}
        for a, b in pairs:
            assert pos[a] < pos[b], (name, a, b)
    for name, call in score_calls(R, E, P).items():
        s = call()
        for a, b in pairs:
            assert s[a] == s[b], (name, a, b)


def test_every_row_identical_gives_position_order():
    R, E, P, Zv, Yv, Ev, _ = dup_inputs(n=5)
    R, E, P = R[:1].repeat(5, 1), E[:1].repeat(5, 1), P[:1].repeat(5, 1)
    for name, call in greedy_calls(R, E, P, Zv, Yv, Ev).items():
        assert list(call()[0]) == [0, 1, 2, 3, 4], name


def test_zero_vectors_and_zero_probabilities_give_no_nan():
    R, E, P, Zv, Yv, Ev, _ = dup_inputs(n=12, c=4, d=3)
    R[[1, 6]] = 0.0                                 # exactly fitted examples: zero gradients
    E[[2, 6]] = 0.0
    P[3] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    for name, call in {**greedy_calls(R, E, P, Zv, Yv, Ev), **score_calls(R, E, P)}.items():
        out = call()
        vals = out[1] if isinstance(out, tuple) else out
        assert not np.any(np.isnan(vals)), name
    # A zero gradient has cosine 0 with everything, itself included: rows 1 and 6 both have
    # kernel rows of 0.5, so after row 1 row 6 is singular (and only it).
    order, gains = log_determinant.log_determinant(R, E)
    assert list(order).index(1) < list(order).index(6)
    assert gains[-1] == -np.inf and order[-1] == 6 and np.all(np.isfinite(gains[:-1]))


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_classes(n):
    R, E, P, Zv, Yv, Ev, _ = dup_inputs(n=n + 1)
    R, E, P = R[:n], E[:n], P[:n]
    for name, call in greedy_calls(R, E, P, Zv, Yv, Ev).items():
        order, gains = call()
        assert order.dtype == np.int64 and gains.dtype == np.float64, name
        assert sorted(order) == list(range(n)) and gains.shape == (n,), name
    for name, call in score_calls(R, E, P).items():
        s = call()
        assert s.dtype == np.float64 and s.shape == (n,) and np.all(np.isfinite(s)), name
    if n == 1:
        assert cal.cal(E, P)[0] == 0.0 and moderate.moderate(E)[0] == 0.0


def test_bad_arguments_raise():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError):
        kcenter.kcenter(x, 3)
    with pytest.raises(ValueError):
        cal.cal(x, x, neighbors=0)
    with pytest.raises(ValueError):
        tensors.gradient_gram(x, torch.zeros(4, 2))
