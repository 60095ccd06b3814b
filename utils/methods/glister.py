"""GLISTER (Killamsetty et al., *GLISTER: Generalization based Data Subset Selection for Efficient
and Robust Learning*, AAAI 2021; DeepCore's Glister): a greedy order in which each step adds the
training example whose last-layer gradient raises the validation log-likelihood most, by a
one-step Taylor estimate after a gradient step on the examples already selected.

The step size ``--glister_eta`` defaults to the stage-1 run's learning rate, as DeepCore's does.
With ``--gradient_target train`` the class's training rows stand for the validation set, as in
DeepCore's run (its main.py passes no validation set).

Differs from DeepCore: DeepCore passes its update hook to the optimiser under a misspelt keyword,
so its validation gradient is never updated and its order is the static ranking of the first
step; we apply the update.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

    from utils.methods.features import ClassFeatures


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
    import torch

    from utils.methods import tensors as T

    R, E, Zv, Ev = T.f64(R), T.f64(E), T.f64(Z_val), T.f64(E_val)
    n = T.check_rows(R, E)
    m = T.check_rows(Zv, Ev)
    if m == 0:
        raise ValueError("glister needs at least one validation row")
    c = R.shape[1]
    onehot = torch.nn.functional.one_hot(torch.as_tensor(Y_val, device=Zv.device).long(), c).to(Zv.dtype)
    # Gains are computed per distinct training row (matrix products on duplicates need not
    # round alike), then expanded: equal rows get bitwise-equal gains.
    u, inv = T.unique_rows(torch.cat([R, E], dim=1))
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
        p = T.first_max(gain)
        order[t], gains[t] = p, float(gain[p])
        q = int(inv[p])
        acc += K[q][:, None] * ru[q][None, :]
        taken[p] = True
    return order, gains


def score(f: ClassFeatures, glister_eta: float, gradient_target: str = "val",
          **_: Any) -> tuple[np.ndarray, np.ndarray]:
    """The class's GLISTER order and gains (:func:`glister`) against its validation rows, or with
    ``gradient_target`` 'train' its training rows."""
    # target "train": the training rows stand for the validation set, as in DeepCore's run
    target = f.val if gradient_target == "val" else f.train
    return glister(f.residual, f.embeddings, target.logits, target.labels, target.embeddings, glister_eta)


# GLISTER's step size defaults to the run's learning rate, as DeepCore's does
METHOD = model_method("glister", ("grads", "logits", "embeddings"), "greedy order raising the validation "
                      "log-likelihood most (Taylor estimate)", "top", score, ("glister_eta", "gradient_target"),
                      greedy=True, validation=True, run_defaults=(("glister_eta", "learning_rate"),),
                      paper="Killamsetty et al. 2021 (DeepCore)")
