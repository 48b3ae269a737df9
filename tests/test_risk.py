"""EmpiricalRisk: parameter selection, dtype copies, bad data and parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import mlp, probe_block, rel

import curvature as cv

pytestmark = pytest.mark.usefixtures("float64_default")


def test_float32_operator_and_float64_copy(digits):
    X, y = digits
    model = mlp().float()
    H = cv.dense_hessian(model, F.cross_entropy, (X.float(), y))
    assert H.dtype == torch.float64
    assert next(model.parameters()).dtype == torch.float32  # the user's model is not cast
    op32 = cv.HessianOperator(model, F.cross_entropy, (X.float(), y))
    assert op32.dtype == torch.float32
    V = probe_block(op32.shape[0], 2).float()
    assert rel((op32 @ V).double(), H @ V.double()) < 1e-5
    op64 = cv.HessianOperator(model, F.cross_entropy, (X.float(), y), dtype=torch.float64)
    assert rel(op64 @ V.double(), H @ V.double()) < 1e-10
    # fd-central in float32 with the default step: a few 1e-3 at most (not 3%)
    fd32 = cv.HessianOperator(model, F.cross_entropy, (X.float(), y), method="fd-central")
    assert rel((fd32 @ V).double(), H @ V.double()) < 1e-2


def test_bad_data_and_params(digits):
    X, y = digits
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="empty"):
        cv.HessianOperator(model, F.cross_entropy, [])
    Xbad = X.clone()
    Xbad[70, 3] = float("nan")
    op = cv.HessianOperator(
        model, F.cross_entropy, [(X[:50], y[:50]), (X[50:100], y[50:100]), (Xbad[100:], y[100:])]
    )
    op_nan = cv.HessianOperator(
        model, F.cross_entropy, [(X[:50], y[:50]), (Xbad[50:100], y[50:100])]
    )
    with pytest.raises(FloatingPointError, match="batch 1"):
        op_nan.matvec(torch.ones(op_nan.shape[0]))
    with pytest.raises(FloatingPointError, match="batch 1"):
        op_nan.loss()
    assert op.shape == op_nan.shape
    with pytest.raises(ValueError, match="not a parameter"):
        cv.HessianOperator(model, F.cross_entropy, (X, y), params=[torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match="not a parameter name"):
        cv.HessianOperator(model, F.cross_entropy, (X, y), params=["nope.weight"])
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        cv.HessianOperator(frozen, F.cross_entropy, (X, y))
    with pytest.raises(ValueError, match="method"):
        cv.HessianOperator(model, F.cross_entropy, (X, y), method="magic")
    with pytest.raises(TypeError, match="data"):
        cv.HessianOperator(model, F.cross_entropy, X)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
