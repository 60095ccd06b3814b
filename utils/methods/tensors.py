"""The torch helpers that the model methods' math shares (the DeepCore baselines + Moderate-DS).

Each model method (one module of :mod:`utils.methods`) computes on one class's features:
embeddings ``E`` (N, D) from the penultimate layer, softmax probabilities ``P`` (N, C) and, for
the gradient methods, the last-layer loss gradient factors ``R = P - onehot(y)`` (N, C). The
caller passes one class at a time with its rows in ascending dataset index, so "ties go to the
lower dataset index" means "to the lower row".

Definitions follow DeepCore (Guo, Zhao, Bai, *DeepCore: A Comprehensive Library for Coreset
Selection in Deep Learning*, DEXA 2022) and the methods' papers; every place where a method
differs from DeepCore's code is said in its module's docstring and its function's.

Conventions. Inputs are torch tensors on any device; all arithmetic runs in float64 on that
device. Scores come back as numpy float64 (N,), higher = ranked first (what the method's authors
select first). Greedy methods rank all N rows (every prefix of ``order`` is the method's
selection at that budget) and return numpy ``order`` int64 (N,) (row positions in pick order)
and ``gains`` float64 (N,) (the criterion value at the step that picked ``order[i]``). Exact
ties go to the lower row: greedy steps take the first row whose criterion is within
``TIE_RTOL`` of the best (:func:`first_max`), and rankings use stable sorts.

Exact ties need bitwise-equal values for identical rows. Elementwise ops and per-row reductions
guarantee that; BLAS matrix products do not (a duplicated row in a GEMM's edge tile can round
differently, and ``X @ X.T`` is not exactly symmetric). So every Gram matrix is computed on the
distinct rows only and symmetrised (:func:`gradient_gram`, and CAL's embedding Gram), and
per-step updates use row reductions.

Gradient embeddings. The cross-entropy gradient w.r.t. the final linear layer (bias, weight) of
example i is ``g_i = [r_i, r_i (x) e_i]`` (C (D + 1) entries). It is never materialised for a
whole class: ``<g_i, g_j> = <r_i, r_j> (1 + <e_i, e_j>)`` (:func:`gradient_gram`).

Torch is imported here at the top: the method modules import this module inside the functions
that compute, so that the registry stays torch-free.
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
# Greedy criteria within this fraction of the best one are ties: values equal in exact arithmetic
# (facility-location gains of two rows that only cover each other, say) differ in their last bits
# by the order of a sum, and would otherwise be broken by rounding rather than by the lower row.
TIE_RTOL = 1e-12


# ----------------------------------------------------------------------------- helpers

def first_max(x: torch.Tensor, scale: float | None = None) -> int:
    """The lowest position whose value ties with the maximum: within ``TIE_RTOL`` of ``scale``,
    the magnitude of what the values are computed from (default the maximum's own)."""
    top = x.max()
    if not torch.isfinite(top):
        return int(torch.argmax(x))
    return int(torch.nonzero(x >= top - TIE_RTOL * (top.abs() if scale is None else scale))[0])


def f64(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a float64 tensor on its own device (no autograd history)."""
    return torch.as_tensor(x).detach().to(torch.float64)


def as_numpy(x: torch.Tensor, dtype: type = np.float64) -> np.ndarray:
    """``x`` as a CPU numpy array of ``dtype`` (what every method's math returns)."""
    return x.detach().cpu().numpy().astype(dtype, copy=False)


def check_rows(*arrays: torch.Tensor) -> int:
    """The common number of rows of 2-D ``arrays`` (ValueError if they disagree)."""
    n = arrays[0].shape[0]
    for a in arrays:
        if a.dim() != 2 or a.shape[0] != n:
            raise ValueError(f"expected 2-D inputs with {n} rows, got shape {tuple(a.shape)}")
    return n


def check_first(first: int, n: int) -> int:
    """``first`` as an int, checked to be a row position."""
    if not 0 <= int(first) < n:
        raise ValueError(f"first must be a row position in [0, {n}), got {first}")
    return int(first)


def unique_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of ``x`` and, per row, the index of its distinct row (``x == u[inv]``)."""
    return torch.unique(x, dim=0, return_inverse=True)


def squared_distances(g: torch.Tensor) -> torch.Tensor:
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


def clamped_probs(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities clamped to ``>= P_MIN`` (float64) and their logarithms."""
    p = f64(P).clamp(min=P_MIN)
    return p, p.log()


def farthest_first(n: int, first: int,
                   dist_to: Callable[[int], torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center: start at ``first``, then repeatedly the row farthest from its nearest
    center. ``dist_to(p)`` gives the (n,) distances of every row to row ``p``."""
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n, dtype=np.float64)
    order[0], gains[0] = first, np.inf
    mind = dist_to(first).clone()
    mind[first] = -np.inf          # selected rows stay at -inf: min(-inf, .) = -inf
    for t in range(1, n):
        p = first_max(mind)
        order[t], gains[t] = p, float(mind[p])
        mind = torch.minimum(mind, dist_to(p))
        mind[p] = -np.inf
    return order, gains


# ----------------------------------------------------------------------------- gradient embeddings

def gradient_embeddings(R: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """Explicit last-layer gradient embeddings ``g_i = [r_i, flatten(r_i e_i^T)]``.

    The bias part (C) comes first, then the (C, D) weight block flattened row-major (class is
    the slow index), i.e. the order of ``torch.cat([linear.bias.grad, linear.weight.grad.flatten()])``.
    Memory: N C (D + 1) doubles, so only for small problems; the methods' math never calls it.

    Args:
        R: ``softmax(logits) - onehot(y)`` (N, C).
        E: embeddings (N, D).

    Returns:
        float64 (N, C (D + 1)) on the inputs' device.
    """
    R, E = f64(R), f64(E)
    check_rows(R, E)
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
    R, E = f64(R), f64(E)
    check_rows(R, E)
    c = R.shape[1]
    u, inv = unique_rows(torch.cat([R, E], dim=1))
    ru, eu = u[:, :c], u[:, c:]
    if R2 is None and E2 is None:
        g = ((ru @ ru.T) * (1.0 + eu @ eu.T))[inv][:, inv]
        return 0.5 * (g + g.T)
    if R2 is None or E2 is None:
        raise ValueError("give both R2 and E2, or neither")
    R2, E2 = f64(R2), f64(E2)
    check_rows(R2, E2)
    return ((ru @ R2.T) * (1.0 + eu @ E2.T))[inv]


def cosine_kernel(R: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
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


def facility_greedy(S: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
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
        p = first_max(gain, scale)
        order[t], gains[t] = p, float(gain[p])
        cur = torch.maximum(cur, S[p])
        taken[p] = True
    return order, gains
