"""Log-determinant (Iyer et al., *Submodular Combinatorial Information Measures with Applications
in Machine Learning*, ALT 2021; DeepCore's Submodular method with its LogDeterminant function):
greedy ``f(A) = log det S_AA`` with DeepCore's cosine kernel on the last-layer gradients.

The gain of x is ``log(s_xx - s_xA S_AA^-1 s_Ax)``, the log of x's residual variance after
projecting out A, kept for every candidate by an incremental Cholesky factorisation. Rows
numerically in the span of the selected ones have gain ``-inf`` and follow in position order.

Differs from DeepCore: DeepCore's LogDeterminant gain returns the quadratic form
``s_xA S_AA^-1 s_Ax`` instead, and so picks the *most* redundant example; we use the true gain.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


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
    import torch

    from utils.methods import tensors as T

    S = T.cosine_kernel(R, E)
    n = S.shape[0]
    diag = S.diagonal().clone()
    var = diag.clone()                                    # residual variance per candidate
    L = torch.zeros(n, n, dtype=S.dtype, device=S.device)  # L[:, k] = <x, q_k>, q_k orthonormal
    taken = torch.zeros(n, dtype=torch.bool, device=S.device)
    order = np.empty(n, dtype=np.int64)
    gains = np.full(n, -np.inf)
    t = 0
    while t < n:
        gain = torch.where(var > T.REL_ZERO * diag, var.clamp(min=1e-300).log(), -np.inf)
        gain.masked_fill_(taken, -np.inf)
        p = T.first_max(gain)
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


def score(f: ClassFeatures, **_: Any) -> tuple[np.ndarray, np.ndarray]:
    """The class's log-determinant order and gains (:func:`log_determinant` of its gradients)."""
    return log_determinant(*f.gradients())


METHOD = model_method("log_determinant", ("grads",), "log-determinant greedy order (cosine similarity of gradients)",
                      "top", score, greedy=True, paper="Iyer et al. 2021 (DeepCore's Submodular)")
