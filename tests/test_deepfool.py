"""utils/methods/deepfool.py: exact on linear models, flips predictions, deterministic, leaves the model as
it found it."""
from __future__ import annotations

import torch
from torch import nn

from utils.methods.deepfool import deepfool_distances, deepfool_perturbations


def linear_model(seed: int, shape=(2, 3, 3), classes=4) -> nn.Module:
    torch.manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    return nn.Sequential(nn.Flatten(), nn.Linear(d, classes))


def analytic_distance(model: nn.Module, x: torch.Tensor, classes=None, pad: float = 0.0) -> torch.Tensor:
    """min_k |f_k - f_k0| / ||W_k - W_k0|| for f(x) = W x + b (over ``classes`` per example, or
    all), and with ``pad`` the length of DeepFool's single step onto that boundary,
    (|f_l - f_k0| + pad) / ||W_l - W_k0||."""
    lin = model[1]
    W, f = lin.weight.detach().double(), model(x).detach().double()
    k0 = f.argmax(1)
    out = []
    for i in range(x.shape[0]):
        ks = [k for k in range(W.shape[0]) if k != k0[i]] if classes is None else classes[i]
        gap = {k: float((f[i, k] - f[i, k0[i]]).abs()) for k in ks}
        norm = {k: float((W[k] - W[k0[i]]).norm()) for k in ks}
        l = min(ks, key=lambda k: gap[k] / norm[k])
        out.append((gap[l] + pad) / norm[l])
    return torch.tensor(out, dtype=torch.float64)


def test_linear_model_distance_is_analytic_and_flips():
    for seed, classes in [(0, 3), (1, 4), (2, 5)]:
        model = linear_model(seed, classes=classes)
        x = torch.randn(16, 2, 3, 3)
        dist = deepfool_distances(model, x)
        assert dist.shape == (16,) and dist.dtype == torch.float32
        # One step onto the nearest boundary, 1e-4 (in logit units) past it.
        torch.testing.assert_close(dist.double(), analytic_distance(model, x, pad=1e-4), rtol=1e-4, atol=0)
        assert (dist.double() >= analytic_distance(model, x) * (1 - 1e-5)).all()
        r = deepfool_perturbations(model, x)
        with torch.no_grad():
            assert (model(x + 1.02 * r).argmax(1) != model(x).argmax(1)).all()


def test_candidates_restrict_the_search_to_the_top_logits():
    model = linear_model(3, classes=6)
    x = torch.randn(12, 2, 3, 3)
    f = model(x).detach()
    top = torch.sort(f, dim=1, descending=True).indices[:, 1:3]          # two best rivals of k0
    dist = deepfool_distances(model, x, candidates=2)
    torch.testing.assert_close(dist.double(), analytic_distance(model, x, top.tolist(), pad=1e-4), rtol=1e-4, atol=0)


def test_nearest_boundary_can_be_a_lower_logit_class():
    # At x = 0: f = [0, -0.1, -5]. Class 1 has the larger logit but its boundary is 0.1 / 0.1 = 1
    # away; class 2's is 5 / 10 = 0.5 away. One candidate sees only class 1.
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0]]))
        model[1].bias.copy_(torch.tensor([0.0, -0.1, -5.0]))
    x = torch.zeros(1, 2)
    torch.testing.assert_close(deepfool_distances(model, x), torch.tensor([(5 + 1e-4) / 10]))
    torch.testing.assert_close(deepfool_distances(model, x, candidates=1), torch.tensor([(0.1 + 1e-4) / 0.1]))


class TinyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x):
        return self.body(x)


def test_conv_net_finite_positive_deterministic_and_restores_model():
    torch.manual_seed(0)
    model = TinyConvNet()
    model.body[0].bias.requires_grad_(False)        # a frozen parameter must stay frozen
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    x = torch.randn(6, 3, 8, 8)
    d1 = deepfool_distances(model, x)
    d2 = deepfool_distances(model, x)
    assert torch.isfinite(d1).all() and (d1 > 0).all()
    assert torch.equal(d1, d2)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training
    model.eval()
    r = deepfool_perturbations(model, x)
    with torch.no_grad():
        assert (model(x + 1.02 * r).argmax(1) != model(x).argmax(1)).all()
    # One example's distance does not depend on the rest of the batch (eval mode).
    torch.testing.assert_close(deepfool_distances(model, x[2:3]), d1[2:3], rtol=1e-5, atol=1e-7)


def test_runs_under_no_grad_and_stops_at_max_iter():
    model = linear_model(4)
    x = torch.randn(5, 2, 3, 3)
    with torch.no_grad():
        dist = deepfool_distances(model, x)
    torch.testing.assert_close(dist.double(), analytic_distance(model, x, pad=1e-4), rtol=1e-4, atol=0)
    assert (deepfool_distances(model, x, max_iter=0) == 0).all()
