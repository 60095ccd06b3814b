"""Fingerprints of what the stages compute from fixed inputs: every trajectory method's score file
(stage 2, end to end), every model method's per-class rankings and weights from fixed features,
and every selection order's coreset (stage 3's rule). ``tests/fixtures/fingerprints.json`` holds
them as this project computed them; ``test_same_numbers.py`` recomputes them.

Rankings and index sets are hashed exactly; scores to 7 significant digits. They are computed with
the portable CPU kernels (``--cpu_kernels portable``, the default; the test process pins them in
``conftest.py``), which give the same bits on every x86-64 CPU with AVX2.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

from utils.cpu_kernels import pin

pin("portable")  # before numpy and torch load, as the scripts do
import numpy as np  # noqa: E402

TRAJECTORY_METHODS = ("cld", "random", "loss", "el2n", "forgetting", "aum", "dyn_unc")
MODEL_METHODS = ("least_confidence", "entropy", "margin", "herding", "kcenter", "contextual_diversity", "cal",
                 "moderate", "grand", "craig", "gradmatch", "glister", "facility_location", "graph_cut",
                 "log_determinant")
ORDERS = ("top", "zero", "bottom", "middle", "random", "ccs")


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(part.dtype.str.encode() + str(part.shape).encode() + np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _rounded(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.array([float(f"{v:.7g}") for v in x])


def ranking_digest(indices: dict, scores: dict | None = None) -> str:
    parts = []
    for c in sorted(indices):
        parts.append(np.asarray(indices[c], np.int64))
        if scores is not None:
            parts.append(_rounded(scores[c]))
    return _digest(*parts)


def loss_dict(n_train: int = 120, n_val: int = 24, n_ep: int = 9, n_cls: int = 4, seed: int = 3) -> dict:
    """A stage-1 result whose numbers come from a seeded generator alone."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_ep)[:, None]
    d = {"dataset": "CIFAR10", "model_arch": "resnet18", "manual_seed": 7, "num_classes": n_cls,
         "config": {"epochs": n_ep, "learning_rate": 0.05}, "epoch": np.arange(n_ep),
         "tr_loss": (np.exp(-0.3 * t) * rng.uniform(0.5, 3, n_train) + 0.2 * rng.random((n_ep, n_train))).astype(np.float32),
         "val_loss": (np.exp(-0.3 * t) * rng.uniform(0.5, 3, n_val) + 0.2 * rng.random((n_ep, n_val))).astype(np.float32),
         "tr_lbl": np.arange(n_train) % n_cls, "val_lbl": np.arange(n_val) % n_cls,
         "train_indices": rng.permutation(n_train + n_val)[:n_train]}
    d["val_indices"] = np.setdiff1d(np.arange(n_train + n_val), d["train_indices"])
    d["tr_correct"] = rng.random((n_ep, n_train)) < 0.6
    d["tr_margin"] = rng.normal(size=(n_ep, n_train)).astype(np.float32)
    d["tr_el2n"] = rng.random((n_ep, n_train)).astype(np.float32)
    return d


def stage2_trajectory(folder: str) -> dict[str, str]:
    """Each trajectory method's score file, written by stage 2's command line."""
    import compute_cld_scores
    from utils.files.losses import save_losses
    from utils.files.scores import load_scores

    path = os.path.join(folder, "CIFAR10_resnet18_seed7_losses.pickle")
    save_losses(path, loss_dict())
    out = {}
    for method in TRAJECTORY_METHODS:
        record = load_scores(compute_cld_scores.main(loss_path=path, method=method))
        out[method] = _digest(ranking_digest(record["indices"], record["scores"]), record["options"],
                              record["top_means"], record["hard_end"], record["greedy"],
                              np.asarray(record["epochs_used"]))
    return out


def _features(n: int, n_cls: int, dim: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, n_cls, generator=g) * 2
    return logits, torch.randn(n, dim, generator=g), torch.arange(n) % n_cls


def stage2_model() -> dict[str, str]:
    """Each model method's per-class rankings (and CRAIG's and GradMatch's weights) from fixed features."""
    try:
        from utils.scoring import snapshot as stage
        from utils.methods.features import Features
        from utils.methods import registry as methods
    except ImportError:  # the layout before the methods had one module each
        from utils.scoring import model as stage
        from utils.scoring.model import Features
        from utils.scoring import methods
    n_cls, dim = 4, 6
    tr = Features(*_features(64, n_cls, dim, 1))
    val = Features(*_features(16, n_cls, dim, 2))
    losses = {"train_indices": np.arange(64, dtype=np.int64) * 3 % 101, "tr_lbl": np.arange(64) % n_cls,
              "val_lbl": np.arange(16) % n_cls}
    out = {}
    for name in MODEL_METHODS:
        method = methods.get(name)
        options = {"seed": 5, "cal_neighbors": 3, "glister_eta": 0.1, "gradient_target": "val"}
        indices, scores, weights = stage.rank_classes(method, tr, val, losses, options, True,
                                                      (("samples_per_class", 5), ("fraction", 0.5)))
        out[name] = _digest(ranking_digest(indices, scores),
                            {b: {c: _rounded(w).tolist() for c, w in ws.items()} for b, ws in weights.items()})
    return out


def stage3_orders() -> dict[str, str]:
    """Each selection order's coreset from CLD's ranking of :func:`loss_dict`."""
    try:
        from utils.core.cld import cld
        from utils.core.ranking import rank_per_class
        from utils.core.selection import class_budgets, select_coreset
    except ImportError:
        from utils.scoring.trajectory import cld
        from utils.scoring.ranking import rank_per_class
        from utils.selection.coreset import class_budgets, select_coreset
    d = loss_dict()
    ranked, scores = rank_per_class(cld(d), d["tr_lbl"], d["train_indices"])
    out = {}
    for order in ORDERS:
        for budget in ({"samples_per_class": 7}, {"fraction": 0.25}):
            k = class_budgets({c: len(v) for c, v in ranked.items()}, **budget)
            chosen = select_coreset(ranked, scores, k, order, 11, 0.1, hard_end="bottom")
            out[f"{order} {json.dumps(budget)}"] = _digest(np.asarray(chosen, np.int64))
    return out


def fingerprints(folder: str) -> dict[str, dict[str, str]]:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return {"stage2 trajectory": stage2_trajectory(folder), "stage2 model": stage2_model(),
                "stage3 orders": stage3_orders()}


if __name__ == "__main__":  # PYTHONPATH=. python tests/fingerprints.py FOLDER > tests/fixtures/fingerprints.json
    json.dump(fingerprints(sys.argv[1]), sys.stdout, indent=1, sort_keys=True)
    print()
