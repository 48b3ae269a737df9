"""Adaptive sharpness (curvature.sharpness) against the closed forms of a quadratic at
its minimum: worst case rho^2/2 lambda_max(C A C), average rho^2/2 tr(C A C)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from curvature.sharpness import adaptive_sharpness


class Quadratic(nn.Module):
    """``forward(x) -> 1/2 (w - w*)^T A (w - w*)`` (inputs ignored), float64."""

    def __init__(self, a: torch.Tensor, w_star: torch.Tensor) -> None:
        super().__init__()
        self.a = a
        self.w_star = w_star
        self.w = nn.Parameter(w_star.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.w - self.w_star
        return 0.5 * d @ self.a @ d


def _problem(p: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(0.1, 3.0, p, dtype=torch.float64)) @ q.T
    w_star = torch.randn(p, generator=g, dtype=torch.float64) + 0.5
    model = Quadratic(a, w_star)
    batch = (torch.zeros(1), torch.zeros(1))
    return model, batch, a, w_star


def _loss(out, y):
    return out


def test_worst_case_matches_closed_form():
    model, batch, a, w_star = _problem()
    rho = 0.3
    c = torch.diag(w_star.abs())
    truth = 0.5 * rho**2 * float(np.linalg.eigvalsh((c @ a @ c).numpy()).max())
    res = adaptive_sharpness(model, _loss, batch, rho=rho, kind="worst", steps=200)
    assert res.value <= truth * (1 + 1e-9)  # a lower bound, never above the maximum
    assert res.value == pytest.approx(truth, rel=1e-3)
    assert res.base_loss == pytest.approx(0.0, abs=1e-12)
    # fewer steps: still a valid lower bound
    few = adaptive_sharpness(model, _loss, batch, rho=rho, kind="worst", steps=3)
    assert 0 <= few.value <= truth * (1 + 1e-9)


def test_average_case_matches_closed_form_and_restores_weights():
    model, batch, a, w_star = _problem(seed=1)
    rho, eta = 0.2, 0.01
    c = torch.diag(w_star.abs() + eta)
    truth = 0.5 * rho**2 * float(torch.trace(c @ a @ c))
    res = adaptive_sharpness(model, _loss, batch, rho=rho, kind="average", samples=4000,
                             eta=eta, seed=3)
    assert abs(res.value - truth) < 4 * res.stderr
    assert res.stderr < 0.05 * truth
    assert torch.equal(model.w.detach(), w_star)
    assert model.w.grad is None


def test_scale_invariance_under_relu_rescaling():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    loss = nn.CrossEntropyLoss()
    r1 = adaptive_sharpness(net, loss, (x, y), rho=0.1, kind="average", samples=50, seed=7)
    with torch.no_grad():  # w1, b1 -> 4 w1, 4 b1 and w2 -> w2 / 4 leave the function unchanged
        net[0].weight.mul_(4.0)
        net[0].bias.mul_(4.0)
        net[2].weight.div_(4.0)
    r2 = adaptive_sharpness(net, loss, (x, y), rho=0.1, kind="average", samples=50, seed=7)
    assert r2.value == pytest.approx(r1.value, rel=1e-8)
    w1 = adaptive_sharpness(net, loss, (x, y), rho=0.1, kind="worst", steps=5)
    assert w1.value >= 0 and math.isfinite(w1.value)


@pytest.mark.parametrize("kw", [{"rho": 0.0}, {"rho": float("nan")}, {"kind": "max"},
                                {"steps": 0}, {"samples": 1}, {"eta": -1.0}])
def test_bad_input_is_refused(kw):
    model, batch, _, _ = _problem()
    args = {"rho": 0.1, **kw}
    with pytest.raises(ValueError):
        adaptive_sharpness(model, _loss, batch, **args)
