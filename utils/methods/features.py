"""What stage 2's evaluation pass hands a model method: one class's logits, penultimate embeddings
and labels (:class:`ClassFeatures`), and the views of them that the methods read.

From the logits: probabilities ``P = softmax(z)``, and the last-layer gradient factors
``R = P - onehot(y)``: the gradient of example i's loss w.r.t. the final layer is
``g_i = [r_i, r_i (x) e_i]`` (bias, then weights), which the methods' math never materialises
(:func:`utils.methods.tensors.gradient_gram`). The pass itself is :mod:`utils.scoring.snapshot`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from utils.methods import tensors

MAX_FULL_GRADS = 1 << 30  # bytes: a larger gradient matrix is exported as its two factors


@dataclass
class Features:
    """Logits, embeddings and labels of a list of examples, in that list's order (device tensors)."""
    logits: torch.Tensor
    embeddings: torch.Tensor
    labels: torch.Tensor

    def take(self, rows: np.ndarray) -> "Features":
        return Features(self.logits[rows], self.embeddings[rows], self.labels[rows])


@dataclass
class ClassFeatures:
    """What the evaluation pass gave for one class: its training rows, and its validation rows
    (empty unless the method reads them)."""
    cls: int
    indices: np.ndarray  # dataset indices of the training rows, ascending
    train: Features
    val: Features
    full_gradients: bool = False  # see :meth:`gradients`

    @property
    def embeddings(self) -> torch.Tensor:
        return self.train.embeddings

    @property
    def probs(self) -> torch.Tensor:
        """float32, as ``--save_features`` writes them (the methods compute in float64 from these)."""
        return torch.softmax(self.train.logits, dim=1)

    @property
    def residual(self) -> torch.Tensor:
        """``R = softmax(z) - onehot(y)``: the gradient of the loss w.r.t. the logits."""
        return residual(self.train.logits, self.train.labels)

    def gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training rows' last-layer gradients as factors ``(R, E)`` of ``g = [r, r (x) e]``.

        Where the whole gradient matrix is small enough to export (:data:`MAX_FULL_GRADS`) it is
        formed here, rounded to float32 as ``--save_features`` writes it, and returned as
        ``(g, an empty E)``, for which the methods' factorised Gram ``<r_i, r_j> (1 + <e_i, e_j>)``
        is ``<g_i, g_j>``: the ranking is then computed from exactly the exported matrix.
        """
        return factors(self.train, self.full_gradients)

    def val_gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        return factors(self.val, self.full_gradients)

    def first_center(self, seed: int) -> int:
        """k-center's first pick: a row drawn uniformly with the run's seed (one draw per class)."""
        return int(np.random.default_rng([int(seed), int(self.cls)]).integers(len(self.indices)))


def residual(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``softmax(logits) - onehot(labels)``, the gradient of the loss w.r.t. the logits."""
    p = torch.softmax(logits, dim=1)
    return p - torch.nn.functional.one_hot(labels.long(), p.shape[1]).to(p.dtype)


def factors(f: Features, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The last-layer gradients of ``f`` as ``(R, E)``, or with ``full`` as the float32 gradient
    matrix and an empty E (see :meth:`ClassFeatures.gradients`)."""
    r = residual(f.logits, f.labels)
    if not full:
        return r, f.embeddings
    g = tensors.gradient_embeddings(r, f.embeddings).float()
    return g, g[:, :0]
