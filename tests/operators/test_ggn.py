"""GGNOperator against the explicit Jacobian sandwich ``J^T H_out J``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import mlp, mse_onehot, probe_block, rel

import curvature as cv

pytestmark = pytest.mark.usefixtures("float64_default")


@pytest.mark.parametrize("loss", [F.cross_entropy, mse_onehot])
def test_ggn_equals_jacobian_sandwich(digits, loss):
    X, y = digits
    X, y = X[:30], y[:30]
    model = mlp()
    op = cv.GGNOperator(model, loss, (X, y))
    w = op.params
    problem = op.risk
    J = torch.func.jacrev(lambda w: problem.forward(w, X))(w).reshape(-1, w.numel())
    out = problem.forward(w, X).detach()
    Hout = torch.func.hessian(lambda z: loss(z.reshape(out.shape), y))(out.reshape(-1))
    G = J.T @ Hout @ J
    V = probe_block(w.numel(), 4)
    assert rel(op @ V, G @ V) <= 1e-10
    assert torch.linalg.eigvalsh(op.to_dense()).min() > -1e-10
