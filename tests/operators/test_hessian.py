"""HessianOperator against explicit float64 matrices (known quadratics, double-backward dense Hessians)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import NAMES, Quadratic, mlp, probe_block, quadratic_loss, rel, workloads

import curvature as cv

pytestmark = pytest.mark.usefixtures("float64_default")


def test_quadratic_known_matrix():
    torch.manual_seed(0)
    n = 12
    Q = torch.linalg.qr(torch.randn(n, n))[0]
    A = Q @ torch.diag(torch.linspace(-3, 10, n)) @ Q.T
    b = torch.randn(n)
    model, loss = Quadratic(n), quadratic_loss(A, b)
    data = (torch.zeros(4, 1), torch.zeros(4))
    V = probe_block(n, 5)
    for method, tol in [("exact", 1e-12), ("fd", 1e-6), ("fd-central", 1e-8)]:
        op = cv.HessianOperator(model, loss, data, method=method)
        assert rel(op @ V, A @ V) < tol, method
    assert rel(cv.dense_hessian(model, loss, data), A) < 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_exact_and_fd_central_match_dense_hessian(digits, name):
    model, loss, data = workloads(digits)[name]
    H = cv.dense_hessian(model, loss, data)
    assert torch.allclose(H, H.T, atol=1e-12 * H.abs().max())
    n = H.shape[0]
    V = probe_block(n, 3)
    exact = cv.HessianOperator(model, loss, data)
    assert exact.shape == (n, n)
    assert rel(exact @ V, H @ V) <= 1e-10
    assert rel(exact @ V[:, 0], H @ V[:, 0]) <= 1e-10
    central = cv.HessianOperator(model, loss, data, method="fd-central")
    assert rel(central @ V, H @ V) <= 1e-5
    forward = cv.HessianOperator(model, loss, data, method="fd")
    assert rel(forward @ V, H @ V) <= 1e-4


def test_param_subset_gives_block(digits):
    X, y = digits
    model = mlp()
    H = cv.dense_hessian(model, F.cross_entropy, (X, y))
    sizes = [p.numel() for p in model.parameters()]
    start = sum(sizes[:2])
    block = H[start:, start:]  # second Linear layer (weight, bias)
    sub = [model[2].weight, model[2].bias]
    op = cv.HessianOperator(model, F.cross_entropy, (X, y), params=sub)
    assert op.shape == block.shape
    assert rel(op.to_dense(), block) < 1e-10
    by_name = cv.HessianOperator(model, F.cross_entropy, (X, y), params=["2.weight", "2.bias"])
    assert rel(by_name.to_dense(), block) < 1e-10
    assert rel(cv.dense_hessian(model, F.cross_entropy, (X, y), params=sub), block) < 1e-12
