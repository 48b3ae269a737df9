"""The data loop: uneven batches and streams, eval mode restored, changed models refused,
and the sums every room takes through DataLoop.accumulate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import cnn, mlp, probe_block, rel
from torch import nn

import curvature as cv
from curvature.data_loop import DataLoop, NonFiniteLossError
from curvature.train import evaluate

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


# ---------------------------------------------------------------- the primitive
def _uneven(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(12, 3, generator=g, dtype=dtype)
    y = torch.randint(0, 2, (12,), generator=g)
    return X, y, [(X[:5], y[:5]), (X[5:8], y[5:8]), (X[8:], y[8:])]


def test_accumulate_weights_by_batch_size_and_reduction():
    """mean: sum_b n_b m_b / N is the whole-data mean; sum: sum_b s_b; unweighted: plain sums."""
    X, _, data = _uneven(torch.float64)

    def batch_mean(_, batch):
        return batch[0].mean(0), batch[0].sum()

    def batch_sum(_, batch):
        return batch[0].sum(0), None

    mean = DataLoop(data).accumulate(batch_mean, torch.zeros(3, dtype=torch.float64))
    assert rel(mean, X.mean(0)) < 1e-14
    total = DataLoop(data, reduction="sum").accumulate(batch_sum, torch.zeros(3, dtype=torch.float64))
    assert rel(total, X.sum(0)) < 1e-14
    counts = DataLoop(data).accumulate(
        lambda _, b: (torch.ones(1, dtype=torch.float64), None), torch.zeros(1, dtype=torch.float64),
        weighted=False,
    )
    assert counts.item() == 3.0  # one per batch: no batch-size weight, nothing divided
    with pytest.raises(ValueError, match="reduction must be"):
        DataLoop(data, reduction="none")


class _Stream:
    """An iterable without a length that counts how often it is read."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def test_lists_move_once_streams_move_every_pass():
    X, _, data = _uneven()
    listed = DataLoop(data, device="cpu", dtype=torch.float64)
    assert all(b[0].dtype == torch.float64 for b in listed.batches)  # moved at construction
    assert data[0][0].dtype == torch.float32  # the user's batches are untouched
    stream = _Stream(data)
    streamed = DataLoop(stream, device="cpu", dtype=torch.float64)
    assert streamed.streamed and streamed.num_batches is None and stream.passes == 0
    seen = []

    def step(_, batch):
        seen.append(batch[0].dtype)
        return batch[0].mean(0), None

    for loop in (listed, streamed, streamed):
        out = loop.accumulate(step, torch.zeros(3, dtype=torch.float64))
        assert rel(out, X.double().mean(0)) < 1e-6  # batch means weighted by n_b, over N
    assert stream.passes == 2 and set(seen) == {torch.float64}
    with pytest.raises(ValueError, match="empty"):
        DataLoop([])
    with pytest.raises(ValueError, match="empty"):
        DataLoop(_Stream([])).accumulate(step, torch.zeros(3))


def test_non_finite_losses_name_their_batch_and_point():
    _, _, data = _uneven(torch.float64)
    loop = DataLoop(data)

    def scalar(i, batch):
        loss = batch[0].sum() * (math.nan if i == 1 else 1.0)
        return batch[0].mean(0), loss

    with pytest.raises(NonFiniteLossError, match="batch 1 is nan"):
        loop.accumulate(scalar, torch.zeros(3, dtype=torch.float64))

    def points(i, batch):
        losses = torch.ones(4, dtype=torch.float64)
        if i == 2:
            losses[3] = math.inf
        return batch[0].mean(0), losses

    with pytest.raises(NonFiniteLossError, match="batch 2 is inf .* at point 8"):
        loop.accumulate(points, torch.zeros(3, dtype=torch.float64), first_point=5)


def test_eval_mode_inside_restored_after_and_changed_models_refused():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.BatchNorm1d(3))
    model.train()
    model[2].eval()
    _, _, data = _uneven(torch.float64)
    loop = DataLoop(data, model=model)
    modes = []

    def step(_, batch):
        modes.append([m.training for m in model.modules()])
        return model(batch[0]).sum(0).detach(), None

    loop.accumulate(step, torch.zeros(3))
    assert modes and not any(any(m) for m in modes)  # every submodule in eval mode
    assert model.training and model[1].training and not model[2].training
    with pytest.raises(RuntimeError, match="step fails"):
        loop.accumulate(lambda *_: (_ for _ in ()).throw(RuntimeError("step fails")), torch.zeros(3))
    assert model.training and not model[2].training  # restored after an error too
    with torch.no_grad():
        model[0].bias.add_(1.0)
    with pytest.raises(RuntimeError, match="modified after this operator was built"):
        loop.accumulate(step, torch.zeros(3))


def test_evaluate_and_landscape_sum_through_the_loop():
    """train.evaluate over uneven batches equals the whole-data loss and accuracy; the
    landscape names the point whose loss is not finite."""
    torch.manual_seed(0)
    X, y, _ = _uneven(torch.float64)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    stats = evaluate(model, F.cross_entropy, X, y, batch_size=5)  # batches of 5, 5, 2
    with torch.no_grad():
        out = model(X)
    assert abs(stats["loss"] - float(F.cross_entropy(out, y))) < 1e-14
    assert abs(stats["accuracy"] - float((out.argmax(-1) == y).double().mean())) < 1e-14
    d = torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    with pytest.raises(NonFiniteLossError, match="at point 2"):
        cv.loss_landscape_1d(model, F.mse_loss, (X, X[:, :2]), d, [0.0, 1e300])
