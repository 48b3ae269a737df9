"""dense_hessian against a hand-written formula; DenseOperator checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import probe_block, rel
from torch import nn

import curvature as cv

pytestmark = pytest.mark.usefixtures("float64_default")


def test_dense_hessian_of_layernorm_matches_handwritten_formula():
    """Independent check of the ground truth itself on affine LayerNorm.

    The reference writes layer normalisation out by hand (mean, variance, scale,
    shift) so that no fused kernel or its derivative formulas are involved.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3))
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    problem = cv.HessianOperator(model, F.cross_entropy, (x, y)).risk

    def by_hand(w):
        p = problem.unflatten(w)
        h = x @ p["0.weight"].T + p["0.bias"]
        mu = h.mean(-1, keepdim=True)
        var = ((h - mu) ** 2).mean(-1, keepdim=True)
        h = (h - mu) / torch.sqrt(var + 1e-5) * p["1.weight"] + p["1.bias"]
        return F.cross_entropy(h @ p["2.weight"].T + p["2.bias"], y)

    ref = torch.autograd.functional.hessian(by_hand, problem.w0)
    H = cv.dense_hessian(model, F.cross_entropy, (x, y))
    assert rel(H, ref) < 1e-12
    V = probe_block(H.shape[0], 3)
    assert rel(cv.HessianOperator(model, F.cross_entropy, (x, y)) @ V, ref @ V) < 1e-12


def test_dense_operator_checks():
    A = torch.randn(5, 5)
    with pytest.raises(ValueError, match="symmetric"):
        cv.DenseOperator(A)
    with pytest.raises(ValueError, match="square"):
        cv.DenseOperator(torch.ones(3, 4))
    S = A + A.T
    op = cv.DenseOperator(S)
    v = torch.randn(5)
    assert torch.allclose(op @ v, S @ v)
    assert torch.allclose(op.to_dense(), S)
