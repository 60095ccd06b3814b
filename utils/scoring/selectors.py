"""Per-class coreset selection and scoring on feature matrices (the DeepCore baselines + Moderate-DS).

Pure functions of one class's features: embeddings ``E`` (N, D) from the penultimate layer,
softmax probabilities ``P`` (N, C) and, for the gradient methods, the last-layer loss gradient
factors ``R = P - onehot(y)`` (N, C). The caller passes one class at a time with its rows in
ascending dataset index, so "ties go to the lower dataset index" means "to the lower row".

Definitions follow DeepCore (Guo, Zhao, Bai, *DeepCore: A Comprehensive Library for Coreset
Selection in Deep Learning*, DEXA 2022) and the methods' papers; every place where we differ
from DeepCore's code is said in the function's docstring:

=====================  =================================================  ==========================
function               method (paper)                                     output
=====================  =================================================  ==========================
least_confidence       Least confidence (Coleman et al., ICLR 2020)       scores
entropy                Entropy (Coleman et al., ICLR 2020)                scores
margin                 Margin (Coleman et al., ICLR 2020)                 scores
moderate               Moderate-DS (Xia et al., ICLR 2023)                scores
herding                Herding (Welling, ICML 2009)                       order, gains
kcenter                k-Center Greedy (Sener & Savarese, ICLR 2018)      order, gains
contextual_diversity   Contextual Diversity (Agarwal et al., ECCV 2020)   order, gains
cal                    CAL (Margatina et al., EMNLP 2021)                 scores
grand                  GraNd (Paul et al., NeurIPS 2021)                  scores
craig                  CRAIG (Mirzasoleiman et al., ICML 2020)            order, gains
facility_location      Facility location (Iyer et al., ALT 2021)          order, gains
graph_cut              Graph cut (Iyer et al., ALT 2021)                  order, gains
log_determinant        Log-determinant (Iyer et al., ALT 2021)            order, gains
gradmatch              GradMatch (Killamsetty et al., ICML 2021)          order, gains
glister                GLISTER (Killamsetty et al., AAAI 2021)            order, gains
=====================  =================================================  ==========================

Conventions. Inputs are torch tensors on any device; all arithmetic runs in float64 on that
device. Scores come back as numpy float64 (N,), higher = ranked first (what the method's authors
select first). Greedy methods rank all N rows (every prefix of ``order`` is the method's
selection at that budget) and return numpy ``order`` int64 (N,) (row positions in pick order)
and ``gains`` float64 (N,) (the criterion value at the step that picked ``order[i]``). Exact
ties go to the lower row: greedy steps take the first row whose criterion is within
``TIE_RTOL`` of the best (:func:`_first_max`), and rankings use stable sorts.

Exact ties need bitwise-equal values for identical rows. Elementwise ops and per-row reductions
guarantee that; BLAS matrix products do not (a duplicated row in a GEMM's edge tile can round
differently, and ``X @ X.T`` is not exactly symmetric). So every Gram matrix is computed on the
distinct rows only and symmetrised (:func:`_gram`), and per-step updates use row reductions.

Gradient embeddings. The cross-entropy gradient w.r.t. the final linear layer (bias, weight) of
example i is ``g_i = [r_i, r_i (x) e_i]`` (C (D + 1) entries). It is never materialised for a
whole class: ``<g_i, g_j> = <r_i, r_j> (1 + <e_i, e_j>)`` (:func:`gradient_gram`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

# Probabilities are clamped to this before logarithms (symmetric KL): a zero probability would
# otherwise give inf - inf = NaN. 1e-12 is far below any probability a float32 softmax resolves
# above its own rounding, so it only changes exact zeros (and subnormal-level values).
P_MIN = 1e-12
# A squared residual below this fraction of its starting value is zero up to rounding: residuals
# are formed in Gram space as a difference of squared norms, whose rounding is ~1e-16 x (number
# of steps) of the squared norm, so anything smaller is noise (log-determinant, GradMatch).
REL_ZERO = 1e-12
# DeepCore's CRAIG shift, so that every similarity is strictly positive.
CRAIG_SHIFT = 1e-3


# ----------------------------------------------------------------------------- helpers

# Greedy criteria within this fraction of the best one are ties: values equal in exact arithmetic
# (facility-location gains of two rows that only cover each other, say) differ in their last bits
# by the order of a sum, and would otherwise be broken by rounding rather than by the lower row.
TIE_RTOL = 1e-12


def _first_max(x: torch.Tensor, scale: float | None = None) -> int:
    """The lowest position whose value ties with the maximum: within ``TIE_RTOL`` of ``scale``,
    the magnitude of what the values are computed from (default the maximum's own)."""
    top = x.max()
    if not torch.isfinite(top):
        return int(torch.argmax(x))
    return int(torch.nonzero(x >= top - TIE_RTOL * (top.abs() if scale is None else scale))[0])


def _first_min(x: torch.Tensor) -> int:
    return _first_max(-x)


def _f64(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a float64 tensor on its own device (no autograd history)."""
    return torch.as_tensor(x).detach().to(torch.float64)


def _np(x: torch.Tensor, dtype: type = np.float64) -> np.ndarray:
    """``x`` as a CPU numpy array of ``dtype`` (what every selector returns)."""
    return x.detach().cpu().numpy().astype(dtype, copy=False)


def _check_rows(*arrays: torch.Tensor) -> int:
    """The common number of rows of 2-D ``arrays`` (ValueError if they disagree)."""
    n = arrays[0].shape[0]
    for a in arrays:
        if a.dim() != 2 or a.shape[0] != n:
            raise ValueError(f"expected 2-D inputs with {n} rows, got shape {tuple(a.shape)}")
    return n


def _check_first(first: int, n: int) -> int:
    """``first`` as an int, checked to be a row position."""
    if not 0 <= int(first) < n:
        raise ValueError(f"first must be a row position in [0, {n}), got {first}")
    return int(first)


def _unique_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of ``x`` and, per row, the index of its distinct row (``x == u[inv]``)."""
    return torch.unique(x, dim=0, return_inverse=True)


def _gram(x: torch.Tensor) -> torch.Tensor:
    """``x @ x.T``, exactly symmetric, with bitwise-equal rows/columns for equal rows of ``x``."""
    u, inv = _unique_rows(x)
    g = (u @ u.T)[inv][:, inv]
    return 0.5 * (g + g.T)


def _squared_distances(g: torch.Tensor) -> torch.Tensor:
    """``||x_i - x_j||^2`` from the Gram matrix ``g`` of the rows x (exactly symmetric when ``g`` is;
    may be slightly negative from rounding)."""
    sq = g.diagonal()
    return sq[:, None] + sq[None, :] - 2.0 * g


def safe_divide(num: torch.Tensor, den: torch.Tensor, fill: float,
                positive: torch.Tensor | None = None) -> torch.Tensor:
    """``num / den`` where ``positive`` (default ``den``) is > 0, else ``fill``. Nothing is divided
    by zero, so no inf or NaN is formed (not even in the discarded entries, where it would reach
    gradients)."""
    ok = (den if positive is None else positive) > 0
    return torch.where(ok, num / torch.where(ok, den, 1.0), fill)


def _sym_kl_to(logp: torch.Tensor, p: torch.Tensor, a: int) -> torch.Tensor:
    """Symmetric KL between row ``a`` and every row: sum_c 0.5 (p_a - p)(log p_a - log p).

    Equal to 0.5 KL(a||b) + 0.5 KL(b||a) (DeepCore's contextual-diversity distance), and exactly
    symmetric in floating point.
    """
    return 0.5 * ((p[a] - p) * (logp[a] - logp)).sum(1)


def _clamped_probs(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities clamped to ``>= P_MIN`` (float64) and their logarithms."""
    p = _f64(P).clamp(min=P_MIN)
    return p, p.log()


def _farthest_first(n: int, first: int,
                    dist_to: Callable[[int], torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center: start at ``first``, then repeatedly the row farthest from its nearest
    center. ``dist_to(p)`` gives the (n,) distances of every row to row ``p``."""
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n, dtype=np.float64)
    order[0], gains[0] = first, np.inf
    mind = dist_to(first).clone()
    mind[first] = -np.inf          # selected rows stay at -inf: min(-inf, .) = -inf
    for t in range(1, n):
        p = _first_max(mind)
        order[t], gains[t] = p, float(mind[p])
        mind = torch.minimum(mind, dist_to(p))
        mind[p] = -np.inf
    return order, gains


# ----------------------------------------------------------------------------- probability scores

def least_confidence(P: torch.Tensor) -> np.ndarray:
    """Least-confidence uncertainty: ``1 - max_c P``.

    DeepCore scores the maximum *logit*; we use the maximum probability, as Coleman et al.
    define it (the two rank differently when logit scales differ between examples).

    Args:
        P: softmax probabilities (N, C).

    Returns:
        float64 (N,); the top is the least confident example.
    """
    return _np(1.0 - _f64(P).max(dim=1).values)


def entropy(P: torch.Tensor) -> np.ndarray:
    """Predictive entropy ``-sum_c P log P`` with ``0 log 0 = 0``.

    DeepCore adds 1e-6 inside the logarithm; we use the exact entropy.

    Args:
        P: softmax probabilities (N, C).

    Returns:
        float64 (N,); the top has the highest entropy.
    """
    P = _f64(P)
    return _np(-torch.special.xlogy(P, P).sum(1))


def margin(P: torch.Tensor) -> np.ndarray:
    """Margin uncertainty: ``-(p_top1 - p_top2)`` (with one class, ``p_top2 = 0``).

    Args:
        P: softmax probabilities (N, C).

    Returns:
        float64 (N,); the top has the smallest gap between its two most likely classes.
    """
    P = _f64(P)
    if P.shape[1] == 1:
        return _np(-P[:, 0])
    top = torch.topk(P, 2, dim=1).values
    return _np(-(top[:, 0] - top[:, 1]))


# ----------------------------------------------------------------------------- embedding methods

def moderate(E: torch.Tensor) -> np.ndarray:
    """Moderate-DS: closeness of each row's distance to the class mean to the median distance.

    ``d_i = ||e_i - mean(E)||``, score ``-|d_i - median(d)|`` with numpy's median (the average
    of the two middle values when N is even).

    Args:
        E: embeddings (N, D).

    Returns:
        float64 (N,); the top is the row whose distance is closest to the median.
    """
    E = _f64(E)
    d = torch.linalg.vector_norm(E - E.mean(0), dim=1)
    s = torch.sort(d).values
    n = s.shape[0]
    med = 0.5 * (s[(n - 1) // 2] + s[n // 2])
    return _np(-(d - med).abs())


def herding(E: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Herding: each step adds the row that brings the selected mean closest to the class mean.

    With ``mu`` the class mean and ``S`` the sum of the ``t - 1`` rows already picked, step t
    picks ``argmin_x ||t mu - S - x||`` over unselected rows (so the first pick is the row
    nearest the mean). DeepCore's code takes the ``argmax`` of this distance; we minimise, as
    herding (Welling 2009) and DeepCore's paper define it. O(N^2 D).

    Args:
        E: embeddings (N, D).

    Returns:
        ``(order, gains)``; ``gains[t]`` is the minimal distance ``||t mu - S - x||`` at step t.
    """
    E = _f64(E)
    n = _check_rows(E)
    mu = E.mean(0)
    acc = torch.zeros_like(mu)
    taken = torch.zeros(n, dtype=torch.bool, device=E.device)
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n, dtype=np.float64)
    for t in range(n):
        # Direct differences (not the Gram expansion): exact for identical rows, no cancellation.
        d2 = (E - ((t + 1) * mu - acc)).square().sum(1).masked_fill(taken, np.inf)
        p = _first_min(d2)
        order[t], gains[t] = p, float(d2[p].sqrt())
        acc += E[p]
        taken[p] = True
    return order, gains


def kcenter(E: torch.Tensor, first: int) -> tuple[np.ndarray, np.ndarray]:
    """k-Center Greedy (farthest-first traversal) in Euclidean distance.

    Args:
        E: embeddings (N, D).
        first: the first center (a row position; the caller draws it with a seeded RNG).

    Returns:
        ``(order, gains)``; ``order[0] = first`` with ``gains[0] = +inf``; then ``gains[t]`` is
        the distance of the picked row to its nearest earlier center (non-increasing).
    """
    E = _f64(E)
    n = _check_rows(E)
    return _farthest_first(n, _check_first(first, n),
                           lambda p: torch.linalg.vector_norm(E - E[p], dim=1))


def contextual_diversity(P: torch.Tensor, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Contextual diversity: k-Center Greedy over probability vectors with the symmetric KL.

    ``d(a, b) = sum_c 0.5 a log(a / b) + 0.5 b log(b / a)``, probabilities clamped to
    ``>= 1e-12`` first (not renormalised) so that zeros give finite distances.

    Args:
        P: softmax probabilities (N, C).
        first: the first center (row position, drawn by the caller).

    Returns:
        ``(order, gains)`` as :func:`kcenter` (``gains[0] = +inf``), distances in nats.
    """
    p, logp = _clamped_probs(P)
    n = _check_rows(p)
    return _farthest_first(n, _check_first(first, n), lambda a: _sym_kl_to(logp, p, a))


def cal(E: torch.Tensor, P: torch.Tensor, neighbors: int = 10) -> np.ndarray:
    """Contrastive Active Learning: mean divergence of a row's prediction from its neighbours'.

    Neighbours: the ``neighbors`` nearest *other* rows of the class in Euclidean distance of
    ``E`` (ties to the lower row; all ``N - 1`` when fewer). Divergence: DeepCore's symmetric KL
    (see :func:`contextual_diversity`, same clamp). DeepCore computes the neighbours with a
    separate ImageNet-pretrained model; here they come from whatever ``E`` the caller passes.
    DeepCore sorts this score ascending and so keeps the *lowest*; Margatina et al. select the
    highest (the contrastive examples), which is our top.

    Args:
        E: embeddings (N, D) for the neighbourhoods.
        P: softmax probabilities (N, C).
        neighbors: number of neighbours (>= 1).

    Returns:
        float64 (N,); N == 1 gives 0.
    """
    if neighbors < 1:
        raise ValueError(f"neighbors must be >= 1, got {neighbors}")
    E = _f64(E)
    p, logp = _clamped_probs(P)
    n = _check_rows(E, p)
    if n == 1:
        return np.zeros(1)
    d2 = _squared_distances(_gram(E)).fill_diagonal_(np.inf)  # squared: same order
    nbr = torch.sort(d2, dim=1, stable=True).indices[:, :min(neighbors, n - 1)]
    kl = 0.5 * ((p[:, None, :] - p[nbr]) * (logp[:, None, :] - logp[nbr])).sum(2)
    return _np(kl.mean(1))


# ----------------------------------------------------------------------------- gradient embeddings

def gradient_embeddings(R: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """Explicit last-layer gradient embeddings ``g_i = [r_i, flatten(r_i e_i^T)]``.

    The bias part (C) comes first, then the (C, D) weight block flattened row-major (class is
    the slow index), i.e. the order of ``torch.cat([linear.bias.grad, linear.weight.grad.flatten()])``.
    Memory: N C (D + 1) doubles, so only for small problems; the selectors never call it.

    Args:
        R: ``softmax(logits) - onehot(y)`` (N, C).
        E: embeddings (N, D).

    Returns:
        float64 (N, C (D + 1)) on the inputs' device.
    """
    R, E = _f64(R), _f64(E)
    _check_rows(R, E)
    return torch.cat([R, (R[:, :, None] * E[:, None, :]).flatten(1)], dim=1)


def gradient_gram(R: torch.Tensor, E: torch.Tensor, R2: torch.Tensor | None = None,
                  E2: torch.Tensor | None = None) -> torch.Tensor:
    """Inner products of gradient embeddings without materialising them.

    ``<g_i, g_j> = <r_i, r_j> (1 + <e_i, e_j>)``. Without ``R2``/``E2`` the result is the Gram
    matrix of the rows of (R, E): exactly symmetric, and identical rows give bitwise-identical
    rows and columns (so exact ties stay exact).

    Args:
        R, E: the first set (N, C), (N, D).
        R2, E2: an optional second set (M, C), (M, D).

    Returns:
        float64 (N, N) or (N, M) on the inputs' device.
    """
    R, E = _f64(R), _f64(E)
    _check_rows(R, E)
    c = R.shape[1]
    u, inv = _unique_rows(torch.cat([R, E], dim=1))
    ru, eu = u[:, :c], u[:, c:]
    if R2 is None and E2 is None:
        g = ((ru @ ru.T) * (1.0 + eu @ eu.T))[inv][:, inv]
        return 0.5 * (g + g.T)
    if R2 is None or E2 is None:
        raise ValueError("give both R2 and E2, or neither")
    R2, E2 = _f64(R2), _f64(E2)
    _check_rows(R2, E2)
    return ((ru @ R2.T) * (1.0 + eu @ E2.T))[inv]


def _cosine_kernel(R: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """DeepCore's similarity ``0.5 + 0.5 cos(g_i, g_j)`` on gradient embeddings (N, N).

    A zero gradient (an exactly fitted example) has cosine 0 with everything, itself included,
    so its kernel entries are 0.5; other diagonal entries are exactly 1.
    """
    g = gradient_gram(R, E)
    norm = g.diagonal().clamp(min=0.0).sqrt()
    nz = norm > 0
    denom = norm[:, None] * norm[None, :]
    cos = safe_divide(g, denom, 0.0).clamp(-1.0, 1.0)
    cos.diagonal().copy_(nz.to(cos.dtype))
    return 0.5 + 0.5 * cos


def grand(R: torch.Tensor, E: torch.Tensor) -> np.ndarray:
    """GraNd: norm of the last-layer gradient, ``||g_i|| = ||r_i|| sqrt(1 + ||e_i||^2)``.

    (DeepCore averages it over several independently trained models; the caller may average
    our scores over runs.)

    Args:
        R: ``softmax(logits) - onehot(y)`` (N, C).
        E: embeddings (N, D).

    Returns:
        float64 (N,); the top has the largest gradient norm.
    """
    R, E = _f64(R), _f64(E)
    _check_rows(R, E)
    return _np(torch.linalg.vector_norm(R, dim=1) * (1.0 + E.square().sum(1)).sqrt())


def _facility_greedy(S: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Greedy facility location ``F(A) = sum_i max_{j in A} S_ij`` (running max starts at 0).

    ``S`` must be symmetric: the gain of x is then a reduction over row x (bitwise equal for
    equal rows). Gains are exact marginal gains and a full sweep per step, so the order is the
    one lazy greedy gives too (up to its tie handling).
    """
    n = S.shape[0]
    scale = n * float(S.abs().max())  # a gain sums n differences of similarities: their rounding
    cur = torch.zeros(n, dtype=S.dtype, device=S.device)
    taken = torch.zeros(n, dtype=torch.bool, device=S.device)
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n, dtype=np.float64)
    for t in range(n):
        gain = (S - cur).clamp_(min=0.0).sum(1).masked_fill_(taken, -np.inf)
        p = _first_max(gain, scale)
        order[t], gains[t] = p, float(gain[p])
        cur = torch.maximum(cur, S[p])
        taken[p] = True
    return order, gains


def craig(R: torch.Tensor, E: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """CRAIG: facility location on gradient embeddings with DeepCore's distance similarity.

    ``d_ij = ||g_i - g_j||`` (from the Gram matrix, clamped at 0), ``s_ij = max(d) - d_ij + 1e-3``
    (DeepCore negates the distances and subtracts their minimum minus 1e-3), then greedy
    facility location (:func:`facility_location`). The per-medoid weights of a selection are
    :func:`craig_weights`.

    Args:
        R: ``softmax(logits) - onehot(y)`` (N, C).
        E: embeddings (N, D).

    Returns:
        ``(order, gains)``; gains are the marginal gains of facility location (non-increasing).
    """
    d = _squared_distances(gradient_gram(R, E)).clamp_(min=0.0).sqrt_()
    return _facility_greedy(d.max() - d + CRAIG_SHIFT)


def craig_weights(R: torch.Tensor, E: torch.Tensor, selected: np.ndarray) -> np.ndarray:
    """CRAIG's per-example weights of a selection: how many examples of the class are closest to
    each selected one (gradient distance; ties to the lower row), so they sum to the class size.

    DeepCore (``deepcore/methods/craig.py``, ``calc_weights``) adds 1 to every count (its weights
    sum to the class size plus the budget) and returns them in ascending index order beside a
    selection in greedy order; here each weight stands beside its own example.

    Args:
        R, E: the class's gradient factors (N, C), (N, D).
        selected: rows of the selection (any order).

    Returns:
        float64 weights aligned with ``selected``.
    """
    selected = np.asarray(selected, dtype=np.int64)
    d2 = _squared_distances(gradient_gram(_f64(R), _f64(E)))
    rows = np.sort(selected)  # argmin takes the first minimum: ties go to the lower row
    nearest = torch.argmin(d2[:, torch.as_tensor(rows, device=d2.device)], dim=1).cpu().numpy()
    counts = np.bincount(nearest, minlength=rows.size).astype(np.float64)
    return counts[np.searchsorted(rows, selected)]


def gradmatch_weights(R: torch.Tensor, E: torch.Tensor, selected: np.ndarray, R_val: torch.Tensor | None = None,
                      E_val: torch.Tensor | None = None) -> np.ndarray:
    """GradMatch's per-example weights of a selection: the nonnegative least-squares coefficients
    ``argmin_{x >= 0} ||sum_i x_i g_i - b||`` of the target b (as in :func:`gradmatch`) on the
    selected gradients; DeepCore trains on the examples whose weight is nonzero.

    Solved in Gram space: with ``G = V diag(l) V^T`` the Gram matrix of the selected rows and ``c``
    their inner products with b, ``||A x - b||^2 = ||diag(l)^(1/2) V^T x - diag(l)^(-1/2) V^T c||^2``
    plus a constant, which scipy's NNLS solves. DeepCore (``deepcore/methods/gradmatch.py``,
    ``orthogonal_matching_pursuit``) solves NNLS on ridge-regularised normal equations
    ``(G + I) x = c`` instead.

    Args:
        R, E: the class's gradient factors (N, C), (N, D).
        selected: rows of the selection.
        R_val, E_val: the target's rows (validation), or None for the class's training rows.

    Returns:
        float64 weights (>= 0) aligned with ``selected``.
    """
    from scipy.optimize import nnls

    selected = np.asarray(selected, dtype=np.int64)
    R, E = _f64(R), _f64(E)
    idx = torch.as_tensor(selected, device=R.device)
    Rs, Es = R[idx], E[idx]
    G = gradient_gram(Rs, Es)
    c = (gradient_gram(Rs, Es, R, E).mean(1) if R_val is None else gradient_gram(Rs, Es, R_val, E_val).mean(1))
    lam, V = torch.linalg.eigh(G)
    keep = lam > REL_ZERO * float(lam.max().clamp(min=0.0)) if lam.numel() else lam > 0
    lam, V = lam[keep], V[:, keep]
    if lam.numel() == 0:
        return np.zeros(selected.size)
    M = (lam.sqrt()[:, None] * V.T).cpu().numpy()
    y = ((V.T @ c) / lam.sqrt()).cpu().numpy()
    return nnls(M, y, maxiter=50 * max(selected.size, 1))[0]


def facility_location(R: torch.Tensor, E: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Facility location ``F(A) = sum_i max_{j in A} s_ij`` with ``s = 0.5 + 0.5 cos(g_i, g_j)``.

    DeepCore's Submodular method with its default cosine kernel on gradient embeddings. Plain
    greedy with every marginal gain recomputed each step gives the same order as lazy greedy.

    Args:
        R: ``softmax(logits) - onehot(y)`` (N, C).
        E: embeddings (N, D).

    Returns:
        ``(order, gains)``; gains are exact marginal gains (non-increasing, submodularity).
    """
    return _facility_greedy(_cosine_kernel(R, E))


def graph_cut(R: torch.Tensor, E: torch.Tensor, lam: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Graph cut ``f(A) = lam sum_{i in V, j in A} s_ij - sum_{i, j in A} s_ij`` (cosine kernel).

    Exact marginal gain of x: ``lam colsum_x - 2 sum_{a in A} s_ax - s_xx``. DeepCore drops the
    constant ``s_xx``, which changes no argmax when the diagonal is constant (zero gradients
    have ``s_xx = 0.5`` here, see :func:`facility_location`'s kernel). Plain greedy with a full
    sweep per step (same order as lazy greedy).

    Args:
        R: ``softmax(logits) - onehot(y)`` (N, C).
        E: embeddings (N, D).
        lam: weight of the coverage term.

    Returns:
        ``(order, gains)``; gains are exact marginal gains.
    """
    S = _cosine_kernel(R, E)
    n = S.shape[0]
    base = lam * S.sum(1) - S.diagonal()       # symmetric: row sums are column sums
    scale = (lam + 2.0) * n * float(S.abs().max())  # the magnitude of the sums a gain is made of
    acc = torch.zeros_like(base)                # sum_{a in A} s_ax
    taken = torch.zeros(n, dtype=torch.bool, device=S.device)
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n, dtype=np.float64)
    for t in range(n):
        gain = (base - 2.0 * acc).masked_fill_(taken, -np.inf)
        p = _first_max(gain, scale)
        order[t], gains[t] = p, float(gain[p])
        acc += S[p]
        taken[p] = True
    return order, gains


def log_determinant(R: torch.Tensor, E: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Log-determinant ``f(A) = log det S_AA`` (cosine kernel), greedy on the exact gain.

    Gain of x: ``log(s_xx - s_xA S_AA^-1 s_Ax)``, the log of x's residual variance after
    projecting out A, kept for every candidate by an incremental Cholesky factorisation (O(N k)
    per step). A residual ``<= 1e-12 s_xx`` (zero up to rounding: x numerically in the span of
    A) has gain ``-inf``; once every remaining row has, they follow in position order. Plain
    greedy with a full sweep per step (same order as lazy greedy). DeepCore's LogDeterminant
    gain returns the quadratic form ``s_xA S_AA^-1 s_Ax`` instead, and so picks the *most*
    redundant example; we use the true gain. Since every ``s_xx`` is 1, the first pick is row 0
    (unless its gradient is zero).

    Args:
        R: ``softmax(logits) - onehot(y)`` (N, C).
        E: embeddings (N, D).

    Returns:
        ``(order, gains)``; gains are natural-log marginal gains (``-inf`` for singular rows).
    """
    S = _cosine_kernel(R, E)
    n = S.shape[0]
    diag = S.diagonal().clone()
    var = diag.clone()                                    # residual variance per candidate
    L = torch.zeros(n, n, dtype=S.dtype, device=S.device)  # L[:, k] = <x, q_k>, q_k orthonormal
    taken = torch.zeros(n, dtype=torch.bool, device=S.device)
    order = np.empty(n, dtype=np.int64)
    gains = np.full(n, -np.inf)
    t = 0
    while t < n:
        gain = torch.where(var > REL_ZERO * diag, var.clamp(min=1e-300).log(), -np.inf)
        gain.masked_fill_(taken, -np.inf)
        p = _first_max(gain)
        if gain[p] == -np.inf:
            break
        order[t], gains[t] = p, float(gain[p])
        lp = L[p, :t]
        # Row reductions (not a matrix-vector product) keep equal rows bitwise equal.
        col = (S[p] - (L[:, :t] * lp).sum(1)) / var[p].sqrt()
        L[:, t] = col
        var = var - col.square()
        taken[p] = True
        t += 1
    order[t:] = torch.nonzero(~taken).flatten().cpu().numpy()
    return order, gains


def gradmatch(R: torch.Tensor, E: torch.Tensor, R_val: torch.Tensor | None = None,
              E_val: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """GradMatch: orthogonal matching pursuit of the mean validation gradient.

    Target ``b = mean_v g_v`` over the validation rows (R_val, E_val), or over the training rows
    when R_val is None. Each step picks the unselected row with the largest signed correlation
    ``<g_j, b - A x>`` with the residual (GradMatch's positive-combination rule), then refits
    ``x`` as the exact least-squares coefficients of b on the selected rows, so the residual
    shrinks monotonically. Everything runs in Gram space (incremental Cholesky / Gram-Schmidt of
    the selected rows). A row numerically in the span of the selected ones (squared pivot
    ``<= 1e-12 ||g_j||^2``) leaves the residual unchanged. Once ``||r||^2 <= 1e-12 ||b||^2``
    (``||r|| <= 1e-6 ||b||``: the Gram-space residual ``||b||^2 - sum beta^2`` cannot resolve
    less) the remaining rows follow by ``<g_j, b>`` descending (ties: lower row). DeepCore adds
    a ridge term (lam = 1) to each refit and solves NNLS for its final weights; we use the plain
    projection, and the weights of a selection are :func:`gradmatch_weights`.

    Args:
        R: ``softmax(logits) - onehot(y)`` of the class's training rows (N, C).
        E: their embeddings (N, D).
        R_val: the same for the class's validation rows (M, C), or None.
        E_val: their embeddings (M, D), or None.

    Returns:
        ``(order, gains)``; ``gains[t] = ||b - A_S x_S||`` after step t (non-increasing).
    """
    R, E = _f64(R), _f64(E)
    n = _check_rows(R, E)
    G = gradient_gram(R, E)
    if R_val is None:
        c, bb = G.mean(1), float(G.mean())
    else:
        c = gradient_gram(R, E, R_val, E_val).mean(1)
        bb = float(gradient_gram(R_val, E_val).mean())
    diag = G.diagonal()
    corr = c.clone()                                      # <g_j, residual>
    L = torch.zeros(n, n, dtype=G.dtype, device=G.device)  # L[:, k] = <g_j, q_k>
    taken = torch.zeros(n, dtype=torch.bool, device=G.device)
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n, dtype=np.float64)
    res2, k, t = max(bb, 0.0), 0, 0
    while t < n and res2 > REL_ZERO * bb:
        p = _first_max(corr.masked_fill(taken, -np.inf))
        lp = L[p, :k]
        piv2 = float(diag[p] - lp.square().sum())
        if piv2 > REL_ZERO * float(diag[p]):
            piv = piv2 ** 0.5
            col = (G[p] - (L[:, :k] * lp).sum(1)) / piv
            beta = float(corr[p]) / piv                   # <b, q_new>
            L[:, k] = col
            corr = corr - beta * col
            res2 = max(res2 - beta * beta, 0.0)           # monotone even in floating point
            k += 1
        order[t], gains[t] = p, res2 ** 0.5
        taken[p] = True
        t += 1
    if t < n:
        rest = torch.nonzero(~taken).flatten()
        rest = rest[torch.sort(c[rest], descending=True, stable=True).indices]
        order[t:] = rest.cpu().numpy()
        gains[t:] = res2 ** 0.5
    return order, gains


def glister(R: torch.Tensor, E: torch.Tensor, Z_val: torch.Tensor, Y_val: torch.Tensor,
            E_val: torch.Tensor, eta: float) -> tuple[np.ndarray, np.ndarray]:
    """GLISTER: greedy on the validation gradient after a one-step Taylor update of the model.

    The gain of training row i is ``<g_i, v>``, v the mean validation gradient embedding at the
    updated logits ``z'_v = z_v - eta / |S| sum_{s in S} r_s (1 + <e_v, e_s>)`` (one gradient
    step of size eta on the last layer with the selected rows' mean gradient; ``z' = z`` while
    S is empty): ``<g_i, v> = mean_v <r_i, r'_v> (1 + <e_i, e_v>)``, ``r'_v = softmax(z'_v) -
    onehot(y_v)``. The sum over S is kept incrementally (O(M (C + D)) per step). DeepCore passes
    its update hook to the optimiser under a misspelt keyword, so its validation gradient is
    never updated and its order is the static ranking of the first step; we apply the update.

    Args:
        R: ``softmax(logits) - onehot(y)`` of the class's training rows (N, C).
        E: their embeddings (N, D).
        Z_val: logits of the class's validation rows (M, C), M >= 1.
        Y_val: their integer labels (M,).
        E_val: their embeddings (M, D).
        eta: the step size (DeepCore: the training learning rate).

    Returns:
        ``(order, gains)``; ``gains[t]`` is the picked row's gain at its step.
    """
    R, E, Zv, Ev = _f64(R), _f64(E), _f64(Z_val), _f64(E_val)
    n = _check_rows(R, E)
    m = _check_rows(Zv, Ev)
    if m == 0:
        raise ValueError("glister needs at least one validation row")
    c = R.shape[1]
    onehot = torch.nn.functional.one_hot(torch.as_tensor(Y_val, device=Zv.device).long(), c).to(Zv.dtype)
    # Gains are computed per distinct training row (matrix products on duplicates need not
    # round alike), then expanded: equal rows get bitwise-equal gains.
    u, inv = _unique_rows(torch.cat([R, E], dim=1))
    ru = u[:, :c]
    K = 1.0 + u[:, c:] @ Ev.T                 # (U, M): 1 + <e_i, e_v>
    acc = torch.zeros_like(Zv)                # sum_{s in S} r_s (1 + <e_v, e_s>), (M, C)
    taken = torch.zeros(n, dtype=torch.bool, device=R.device)
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n, dtype=np.float64)
    for t in range(n):
        z = Zv if t == 0 else Zv - (eta / t) * acc
        rv = torch.softmax(z, dim=1) - onehot
        gain = ((ru @ rv.T) * K).mean(1)[inv].masked_fill_(taken, -np.inf)
        p = _first_max(gain)
        order[t], gains[t] = p, float(gain[p])
        q = int(inv[p])
        acc += K[q][:, None] * ru[q][None, :]
        taken[p] = True
    return order, gains
