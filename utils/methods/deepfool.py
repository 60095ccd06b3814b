"""DeepFool (Ducoffe and Precioso, *Adversarial Active Learning for Deep Networks: a Margin Based
Approach*, 2018; DeepCore's DeepFool): batched DeepFool distances to the decision boundary, the
examples with the *smallest* distance (closest to the boundary) first.

DeepFool (Moosavi-Dezfooli, Fawzi, Frossard, *DeepFool: a simple and accurate method to fool deep
neural networks*, CVPR 2016) linearises the classifier around the current point and steps onto
the nearest linearised boundary until the prediction flips. Ducoffe & Precioso and DeepCore (Guo,
Zhao, Bai, DEXA 2022) use the size of the resulting perturbation as a margin. Unlike the other
model methods it reads the network itself: stage 2 hands :func:`score` the model and the whole
training split, not one class's features.

Differences from DeepCore's code: the boundary search is restricted to the ``candidates``
classes with the largest original logits (DeepFool's usual shortcut; DeepCore differentiates
every class), the flip test is made at the overshot point ``x + (1 + overshoot) r_tot`` (as in
the original DeepFool), and we return the L2 norm of ``r_tot`` (DeepCore returns its square,
which ranks the same).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from utils.methods.record import model_method

if TYPE_CHECKING:
    import torch

# Added to the step length so that the step lands just past the linearised boundary (DeepFool).
STEP_PAD = 1e-4


def deepfool_perturbations(model: torch.nn.Module, x: torch.Tensor, max_iter: int = 50, overshoot: float = 0.02,
                           candidates: int = 10) -> torch.Tensor:
    """DeepFool's accumulated perturbation ``r_tot`` for every example of a batch.

    At each iteration every still-unflipped example, at ``x_i = x + (1 + overshoot) r_tot``,
    takes the classic step onto the nearest linearised boundary among the candidate classes K
    (the ``candidates`` largest original logits other than the original prediction k0):
    ``l = argmin_k |f_k - f_k0| / ||w_k||`` with ``w_k = grad_x (f_k - f_k0)``, then
    ``r_tot += (|f_l - f_k0| + 1e-4) / ||w_l||^2 w_l``. An example stops once
    ``argmax f(x_i) != k0``, or after ``max_iter`` steps. A zero gradient for every candidate
    gives a zero step (the example cannot move).

    The model runs in eval mode (so that the examples of a batch are independent: per-example
    input gradients come from one backward pass of a batch sum) with its parameters' gradients
    off; its mode and ``requires_grad`` flags are restored afterwards. Autograd runs in x's
    dtype and on x's device (the caller chooses them).

    Args:
        model: a classifier returning logits (B, C).
        x: a batch of inputs (B, ...).
        max_iter: most DeepFool steps per example.
        overshoot: DeepFool's overshoot factor.
        candidates: number of competing classes searched (all when fewer exist).

    Returns:
        ``r_tot`` (B, ...), detached, same dtype and device as x.
    """
    import torch

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)     # only input gradients are needed: no weight-gradient work
        with torch.enable_grad():
            return _deepfool(model, x.detach(), max_iter, overshoot, candidates)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)


def deepfool_distances(model: torch.nn.Module, x: torch.Tensor, max_iter: int = 50, overshoot: float = 0.02,
                       candidates: int = 10) -> torch.Tensor:
    """DeepFool distance ``||r_tot||`` (L2 over all input dimensions) per example.

    See :func:`deepfool_perturbations`. Examples never flipped return the norm reached after
    ``max_iter`` steps. Smaller = closer to the boundary = ranked first by the method.

    Args:
        model: a classifier returning logits (B, C).
        x: a batch of inputs (B, ...).
        max_iter: most DeepFool steps per example.
        overshoot: DeepFool's overshoot factor.
        candidates: number of competing classes searched.

    Returns:
        (B,) distances, same dtype and device as x.
    """
    import torch

    r = deepfool_perturbations(model, x, max_iter, overshoot, candidates)
    return torch.linalg.vector_norm(r.flatten(1), dim=1)


def _deepfool(model: torch.nn.Module, x: torch.Tensor, max_iter: int, overshoot: float,
              candidates: int) -> torch.Tensor:
    import torch
    from torch import nn

    from utils.methods.tensors import safe_divide

    b = x.shape[0]
    r_tot = torch.zeros_like(x)
    if b == 0:
        return r_tot
    active = torch.arange(b, device=x.device)
    k0 = None
    for _ in range(max_iter):
        xi = (x[active] + (1.0 + overshoot) * r_tot[active]).requires_grad_(True)
        f = model(xi)
        if k0 is None:  # the first pass is at x itself (r_tot = 0): the original prediction and candidates
            f0 = f.detach()
            k0 = f0.argmax(1)
            m = min(int(candidates), f0.shape[1] - 1)
            if m < 1:
                break                   # one class: there is no boundary to cross
            others = f0.masked_fill(nn.functional.one_hot(k0, f0.shape[1]).bool(), float("-inf"))
            cand = torch.sort(others, dim=1, descending=True, stable=True).indices[:, :m]   # (B, m)
        still = f.detach().argmax(1) == k0[active]
        if not bool(still.any()):
            break
        fk0 = f.gather(1, k0[active, None])                                  # (A, 1)
        fdiff = f.gather(1, cand[active]) - fk0                               # (A, m)
        w = torch.stack([torch.autograd.grad(fdiff[:, j].sum(), xi, retain_graph=j + 1 < m)[0].flatten(1)
                         for j in range(m)], dim=1)                           # (A, m, numel)
        fdiff = fdiff.detach().abs()
        wn = torch.linalg.vector_norm(w, dim=2)
        dist = safe_divide(fdiff, wn, float("inf"))
        l = dist.argmin(1)
        rows = torch.arange(len(active), device=x.device)
        wl, wln, fl = w[rows, l], wn[rows, l], fdiff[rows, l]
        scale = safe_divide(fl + STEP_PAD, wln.square(), 0.0, positive=wln)
        step = (scale[:, None] * wl).view_as(xi)
        idx = active[still]
        r_tot[idx] += step[still]
        active = idx
    return r_tot


def score(model: torch.nn.Module, source: Any, indices: np.ndarray, batch_size: int, device: torch.device,
          precision: str, deepfool_max_iter: int, **_: Any) -> np.ndarray:
    """DeepFool distance of every example of ``indices`` (float32, in that order)."""
    import torch

    from utils import progress
    from utils.train.device import precision_context

    out = torch.zeros(len(indices), device=device)
    with precision_context(precision, device):
        for x, _, slots in progress.bar(source.eval_batches(indices, batch_size), "deepfool"):
            out[slots] = deepfool_distances(model, x, max_iter=deepfool_max_iter).float()
    return out.cpu().numpy()


METHOD = model_method("deepfool", ("model",), "smallest DeepFool perturbation that changes the prediction (closest to "
                      "the decision boundary)", "top", score, ("deepfool_max_iter",),
                      paper="Ducoffe and Precioso 2018 (DeepCore)")
