"""Loss landscapes against independent ground truth, and the model left untouched.

Ground truths: the loss of a separate float64 copy of the model whose parameters
were overwritten with ``w + a d`` (``vector_to_parameters``); for a model whose loss
is exactly quadratic in the parameters (linear least squares), the Taylor
polynomial ``L0 + g.d a + (1/2) d^T H d a^2`` with ``H`` the dense Hessian.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import curvature as cv
from curvature.landscape import (
    filter_normalized_direction,
    flat_parameters,
    loss_landscape_1d,
    loss_landscape_2d,
    symmetric_grid,
)
from curvature.models import build_model
from curvature.plots import value_scale


def _reference_loss(model, loss_fn, x, y, w):
    m = copy.deepcopy(model).double().eval()
    torch.nn.utils.vector_to_parameters(w.double(), [p for p in m.parameters() if p.requires_grad])
    with torch.no_grad():
        return float(loss_fn(m(x.double()), y))


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_1d_and_2d_match_a_perturbed_copy_and_leave_the_model_untouched():
    torch.manual_seed(0)
    model = build_model("cnn", channels=[3, 4], batchnorm=True, dropout=0.3)
    x, y = _data()
    model.train()
    with torch.no_grad():
        model(x)  # non-trivial running statistics
    model.train()
    model[1].eval()  # a mixed train/eval state must be restored member by member
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    loss_fn = nn.CrossEntropyLoss()
    d1 = filter_normalized_direction(model, seed=1)
    d2 = filter_normalized_direction(model, seed=2)
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]  # uneven batches, weighted by size
    line = loss_landscape_1d(model, loss_fn, batches, d1, [-0.5, 0.25, 1.0],
                             dtype=torch.float64, chunk_size=2)
    plane = loss_landscape_2d(model, loss_fn, batches, (d1, d2), [-0.3, 0.0, 0.4], [0.2, -0.1],
                              dtype=torch.float64)
    w = flat_parameters(model).double()
    for a, got in zip([-0.5, 0.25, 1.0], line.loss.tolist()):
        assert got == pytest.approx(_reference_loss(model, loss_fn, x, y, w + a * d1.double()),
                                    rel=1e-12)
    for i, a in enumerate([-0.3, 0.0, 0.4]):
        for j, b in enumerate([0.2, -0.1]):
            ref = _reference_loss(model, loss_fn, x, y, w + a * d1.double() + b * d2.double())
            assert float(plane.loss[i, j]) == pytest.approx(ref, rel=1e-12)
    assert line.loss0 == pytest.approx(_reference_loss(model, loss_fn, x, y, w), rel=1e-12)
    with torch.no_grad():  # accuracy at a = 1.0, from the perturbed copy
        m = copy.deepcopy(model).double().eval()
        torch.nn.utils.vector_to_parameters(w + d1.double(), m.parameters())
        acc = float((m(x.double()).argmax(1) == y).double().mean())
    assert float(line.accuracy[2]) == pytest.approx(acc)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == modes


def test_quadratic_loss_follows_its_taylor_polynomial_exactly():
    torch.manual_seed(0)
    model = nn.Linear(5, 2).double()
    x, t = torch.randn(30, 5, dtype=torch.float64), torch.randn(30, 2, dtype=torch.float64)
    loss_fn = nn.MSELoss()
    H = cv.dense_hessian(model, loss_fn, (x, t))
    op = cv.HessianOperator(model, loss_fn, (x, t))
    g = op.gradient()
    d = torch.randn(H.shape[0], dtype=torch.float64)
    alphas = np.linspace(-2, 2, 9)
    land = loss_landscape_1d(model, loss_fn, (x, t), d, alphas)
    taylor = land.loss0 + float(g @ d) * alphas + 0.5 * float(d @ H @ d) * alphas**2
    np.testing.assert_allclose(land.loss.numpy(), taylor, rtol=1e-12)
    assert land.accuracy is None  # regression targets


def test_filter_normalisation():
    torch.manual_seed(0)
    model = build_model("cnn", channels=[3, 4], hidden=[6], batchnorm=True)
    d = filter_normalized_direction(model, seed=5, dtype=torch.float64)
    offset = 0
    for name, p in model.named_parameters():
        part = d[offset : offset + p.numel()].view(p.shape)
        offset += p.numel()
        if p.ndim >= 2:  # every filter (row / output channel) has the norm of its weights
            np.testing.assert_allclose(
                part.reshape(p.shape[0], -1).norm(dim=1).numpy(),
                p.detach().double().reshape(p.shape[0], -1).norm(dim=1).numpy(), rtol=1e-12)
        else:
            assert torch.count_nonzero(part) == 0, name  # biases and BN scales: zero
    assert offset == d.numel()
    assert torch.equal(d, filter_normalized_direction(model, seed=5, dtype=torch.float64))
    assert not torch.equal(d, filter_normalized_direction(model, seed=6, dtype=torch.float64))
    with_1d = filter_normalized_direction(model, seed=5, include_1d=True, dtype=torch.float64)
    offset, checked = 0, 0
    for p in model.parameters():
        if p.ndim == 1:  # now perturbed by the parameter's own norm
            part = with_1d[offset : offset + p.numel()]
            assert float(part.norm()) == pytest.approx(float(p.detach().double().norm()), rel=1e-12)
            checked += 1
        offset += p.numel()
    assert checked >= 3


def test_bad_directions_and_grids():
    model = nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    loss_fn = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"Tensor\[8\]"):
        loss_landscape_1d(model, loss_fn, (x, y), torch.zeros(7), [0.0, 1.0])
    with pytest.raises(ValueError, match="non-finite"):
        loss_landscape_1d(model, loss_fn, (x, y), torch.full((8,), float("nan")), [1.0])
    with pytest.raises(ValueError, match="alphas"):
        loss_landscape_1d(model, loss_fn, (x, y), torch.zeros(8), [])
    assert symmetric_grid(2.0, 4).tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]


def test_value_scale():
    assert value_scale([1.0, 5.0, 50.0]) == "linear"
    assert value_scale([1e-3, 1.0, 5.0]) == "log"
    assert value_scale([-1e-4, 1e-3, 10.0]) == "symlog"
    assert value_scale([0.0, 0.0]) == "linear"
