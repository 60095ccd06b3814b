"""GradMatch (Killamsetty et al., *GRAD-MATCH: Gradient Matching based Data Subset Selection for
Efficient Deep Model Training*, ICML 2021; DeepCore's GradMatch): orthogonal matching pursuit of
the class's mean validation gradient (last layer) by the training examples' gradients; a
selection is trained on its examples of nonzero weight, weighted by the nonnegative
least-squares coefficients of the target on them.

With ``--gradient_target train`` the target is the class's mean training gradient, what
DeepCore's main.py runs (it passes no validation set).

Differs from DeepCore: DeepCore adds a ridge term (lam = 1) to each refit of the pursuit and
solves NNLS for its final weights; we refit with the plain projection. Its weights
(``deepcore/methods/gradmatch.py``, ``orthogonal_matching_pursuit``) solve NNLS on the
ridge-regularised normal equations ``(G + I) x = c``; ours solve the nonnegative least-squares
fit of the target itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


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
    import torch

    from utils.methods import tensors as T

    R, E = T.f64(R), T.f64(E)
    n = T.check_rows(R, E)
    G = T.gradient_gram(R, E)
    if R_val is None:
        c, bb = G.mean(1), float(G.mean())
    else:
        c = T.gradient_gram(R, E, R_val, E_val).mean(1)
        bb = float(T.gradient_gram(R_val, E_val).mean())
    diag = G.diagonal()
    corr = c.clone()                                      # <g_j, residual>
    L = torch.zeros(n, n, dtype=G.dtype, device=G.device)  # L[:, k] = <g_j, q_k>
    taken = torch.zeros(n, dtype=torch.bool, device=G.device)
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n, dtype=np.float64)
    res2, k, t = max(bb, 0.0), 0, 0
    while t < n and res2 > T.REL_ZERO * bb:
        p = T.first_max(corr.masked_fill(taken, -np.inf))
        lp = L[p, :k]
        piv2 = float(diag[p] - lp.square().sum())
        if piv2 > T.REL_ZERO * float(diag[p]):
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
    import torch
    from scipy.optimize import nnls

    from utils.methods import tensors as T

    selected = np.asarray(selected, dtype=np.int64)
    R, E = T.f64(R), T.f64(E)
    idx = torch.as_tensor(selected, device=R.device)
    Rs, Es = R[idx], E[idx]
    G = T.gradient_gram(Rs, Es)
    c = (T.gradient_gram(Rs, Es, R, E).mean(1) if R_val is None else T.gradient_gram(Rs, Es, R_val, E_val).mean(1))
    lam, V = torch.linalg.eigh(G)
    keep = lam > T.REL_ZERO * float(lam.max().clamp(min=0.0)) if lam.numel() else lam > 0
    lam, V = lam[keep], V[:, keep]
    if lam.numel() == 0:
        return np.zeros(selected.size)
    M = (lam.sqrt()[:, None] * V.T).cpu().numpy()
    y = ((V.T @ c) / lam.sqrt()).cpu().numpy()
    return nnls(M, y, maxiter=50 * max(selected.size, 1))[0]


def _target(f: ClassFeatures, gradient_target: str) -> tuple:
    """The target's gradient factors: the class's validation rows, or (None, None) for its
    training rows (``gradient_target`` 'train': what DeepCore's main.py runs, with no dst_val)."""
    return f.val_gradients() if gradient_target == "val" else (None, None)


def score(f: ClassFeatures, gradient_target: str = "val", **_: Any) -> tuple[np.ndarray, np.ndarray]:
    """The class's GradMatch order and gains (:func:`gradmatch` of its gradients and target)."""
    return gradmatch(*f.gradients(), *_target(f, gradient_target))


def weights(f: ClassFeatures, selected: np.ndarray, gradient_target: str = "val", **_: Any) -> np.ndarray:
    """The weights of the class's selection ``selected`` (rows; :func:`gradmatch_weights`)."""
    return gradmatch_weights(*f.gradients(), selected, *_target(f, gradient_target))


METHOD = model_method("gradmatch", ("grads",), "orthogonal-matching-pursuit order matching the class's mean "
                      "validation gradient", "top", score, ("gradient_target",), greedy=True, validation=True,
                      paper="Killamsetty et al. 2021 (DeepCore)", weights=weights)
