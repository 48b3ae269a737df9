"""The data loop: uneven batches and streams, eval mode restored, changed models refused,
and the sums every room takes through DataLoop.accumulate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import cnn, mlp, probe_block, rel

import curvature as cv

pytestmark = pytest.mark.usefixtures("float64_default")


def test_uneven_dataloader_equals_one_batch(digits):
    X, y = digits
    model = mlp()
    one = cv.HessianOperator(model, F.cross_entropy, (X, y))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=64, shuffle=True
    )  # batches of 64, 64, 22
    many = cv.HessianOperator(model, F.cross_entropy, loader)
    listed = cv.HessianOperator(model, F.cross_entropy, [(X[:100], y[:100]), (X[100:], y[100:])])
    V = probe_block(one.shape[0], 2)
    ref = one @ V
    assert rel(many @ V, ref) < 1e-12
    assert rel(listed @ V, ref) < 1e-12
    assert abs(many.loss() - one.loss()) < 1e-12
    assert rel(many.gradient(), one.gradient()) < 1e-12
    ggn_one = cv.GGNOperator(model, F.cross_entropy, (X, y))
    ggn_many = cv.GGNOperator(model, F.cross_entropy, loader)
    assert rel(ggn_many @ V, ggn_one @ V) < 1e-12
    fd_many = cv.HessianOperator(model, F.cross_entropy, loader, method="fd-central")
    assert rel(fd_many @ V, ref) < 1e-5


def test_operator_refuses_a_model_changed_after_construction(digits):
    X, y = digits
    model = mlp()
    op = cv.HessianOperator(model, F.cross_entropy, (X, y))
    v = torch.ones(op.shape[0])
    op @ v  # graphs now cached at the construction-time parameters
    with torch.no_grad():
        model[0].weight.add_(0.1)
    with pytest.raises(RuntimeError, match="modified after this operator was built"):
        op @ v


def test_model_state_restored(digits):
    X, y = digits
    img = X.reshape(-1, 1, 8, 8)[:40]
    model = cnn()
    model.train()
    model.drop.eval()  # a mixed mode must come back exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for op in (
        cv.HessianOperator(model, F.cross_entropy, (img, y[:40])),
        cv.HessianOperator(model, F.cross_entropy, (img, y[:40]), method="fd"),
        cv.GGNOperator(model, F.cross_entropy, (img, y[:40])),
        cv.HessianOperator(model, F.cross_entropy, (img, y[:40]), dtype=torch.float32),
    ):
        op @ probe_block(op.shape[0], 2).to(op.dtype)
        op.loss()
    cv.dense_hessian(model, F.cross_entropy, (img, y[:40]))
    assert model.training and model.bn.training and not model.drop.training
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert all(p.grad is None for p in model.parameters())
