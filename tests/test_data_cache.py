"""A DataLoader kept after its first pass (cache_data): exact against the float64
one-batch truth, graph cache applied, non-determinism detected and streamed."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import cnn, mlp, probe_block, rel
from torch.utils.data import DataLoader, Dataset, TensorDataset

import curvature as cv
from curvature.kept_data import reorders_only

pytestmark = pytest.mark.usefixtures("float64_default")


class Noisy(Dataset):
    """Examples with fresh Gaussian noise on every read (random augmentation)."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i] + 0.1 * torch.randn_like(self.X[i]), self.y[i]


def _truth(model, X, y, V):
    return cv.HessianOperator(model, F.cross_entropy, (X, y), cache_graphs=False) @ V


def test_ordered_loader_is_kept_and_its_graphs_cached(digits):
    X, y = digits
    model = mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loader = DataLoader(TensorDataset(X, y), batch_size=64)  # 64, 64, 22
    op = cv.HessianOperator(model, F.cross_entropy, loader)
    listed = cv.HessianOperator(model, F.cross_entropy, list(loader))
    V = probe_block(op.shape[0], 2)
    ref = _truth(model, X, y, V)
    assert op.data_mode == "streamed (first pass pending)"
    assert rel(op @ V, ref) < 1e-12
    # the first pass streams, recording the batches and their graphs under its key
    assert op.products.num_cached_graphs == 3 and op.data_mode.startswith("streamed")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the data are streamed")
        second = op @ V
    assert op.data_mode == "kept"
    assert rel(second, ref) < 1e-12
    assert rel(op @ V, listed @ V) < 1e-12
    assert op.products.num_cached_graphs == 3  # as for a list of 3 batches
    ggn = cv.GGNOperator(model, F.cross_entropy, loader)
    ggn_ref = cv.GGNOperator(model, F.cross_entropy, (X, y)) @ V
    for _ in range(3):
        assert rel(ggn @ V, ggn_ref) < 1e-12
    assert ggn.data_mode == "kept"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_shuffling_loader_is_kept_exactly(digits):
    X, y = digits
    model = mlp()
    loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)
    assert reorders_only(loader)
    op = cv.HessianOperator(model, F.cross_entropy, loader)
    V = probe_block(op.shape[0], 2)
    ref = _truth(model, X, y, V)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the data are streamed")
        for _ in range(3):
            assert rel(op @ V, ref) < 1e-12
    assert op.data_mode.startswith("kept (shuffling sampler")
    assert op.products.num_cached_graphs == 3
    assert abs(op.loss() - cv.HessianOperator(model, F.cross_entropy, (X, y)).loss()) < 1e-12
    # drop_last drops different examples on every pass: not the same sum, streamed
    dropping = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True, drop_last=True)
    assert not reorders_only(dropping)
    op = cv.HessianOperator(model, F.cross_entropy, dropping)
    op @ V
    with pytest.warns(UserWarning, match="streamed on every pass"):
        op @ V
    assert op.data_mode.startswith("streamed (its first batch changed")
    assert op.products.num_cached_graphs == 0


@pytest.mark.parametrize("shuffle", [False, True])
def test_random_augmentation_is_detected_and_streamed(digits, shuffle):
    X, y = digits
    model = mlp()
    torch.manual_seed(5)
    op = cv.HessianOperator(
        model, F.cross_entropy, DataLoader(Noisy(X, y), batch_size=64, shuffle=shuffle)
    )
    V = probe_block(op.shape[0], 1)
    first = op @ V
    with pytest.warns(UserWarning, match="different data"):
        second = op @ V
    assert op.data_mode.startswith("streamed (")
    assert ("random augmentation" in op.data_mode) and (shuffle == ("examples change" in op.data_mode))
    assert rel(second, first) > 1e-6  # really streamed: new noise, another operator
    op @ V  # one warning only: the decision is taken once
    assert op.products.num_cached_graphs == 0


def test_bounds_and_explicit_choices(digits):
    X, y = digits
    model = mlp()
    loader = DataLoader(TensorDataset(X, y), batch_size=64)
    V = probe_block(sum(p.numel() for p in model.parameters()), 1)
    ref = _truth(model, X, y, V)
    small = cv.HessianOperator(model, F.cross_entropy, loader, max_data_bytes=X.nbytes // 2)
    for _ in range(3):
        assert rel(small @ V, ref) < 1e-12
    assert small.data_mode.startswith("streamed (the data exceed max_data_bytes")
    assert small.products.num_cached_graphs == 0
    never = cv.HessianOperator(model, F.cross_entropy, loader, cache_data=False)
    never @ V
    never @ V
    assert never.data_mode == "streamed" and never.products.num_cached_graphs == 0
    torch.manual_seed(6)
    noisy = DataLoader(Noisy(X, y), batch_size=64)
    trusted = cv.HessianOperator(model, F.cross_entropy, noisy, cache_data=True)
    a = trusted @ V
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the data are streamed")
        b = trusted @ V  # one augmentation draw, kept unchecked: a fixed operator
        c = trusted @ V
    assert trusted.data_mode.startswith("kept (cache_data=True")
    assert rel(b, a) < 1e-12 and rel(c, a) < 1e-12
    with pytest.raises(ValueError, match="cache_data"):
        cv.HessianOperator(model, F.cross_entropy, loader, cache_data="yes")
    assert cv.HessianOperator(model, F.cross_entropy, [(X, y)]).data_mode == "list"


def test_interrupted_first_pass_is_not_kept(digits):
    """A pass cut short (an error in a step) keeps nothing; the next full pass does."""
    X, y = digits
    img = X.reshape(-1, 1, 8, 8)[:40]
    model = cnn()
    mode = model.training
    loader = DataLoader(TensorDataset(img, y[:40]), batch_size=16)
    op = cv.HessianOperator(model, F.cross_entropy, loader)
    loop = op.risk.data

    def failing(i, batch):
        if i == 1:
            raise RuntimeError("boom")
        return torch.zeros(1), None

    with pytest.raises(RuntimeError, match="boom"):
        loop.accumulate(failing, torch.zeros(1))
    assert op.data_mode == "streamed (first pass pending)"
    V = probe_block(op.shape[0], 1)
    ref = cv.HessianOperator(model, F.cross_entropy, (img, y[:40])) @ V
    for _ in range(3):
        assert rel(op @ V, ref) < 1e-12
    assert op.data_mode == "kept" and model.training == mode


def test_graphs_of_an_interrupted_shuffled_pass_are_not_reused(digits):
    """The graph of batch 0 built on a first pass that then failed belongs to other
    examples than batch 0 of the next (reshuffled, recorded) pass: it must be dropped."""
    X, y = digits
    model = mlp()
    state = {"grad_calls": 0, "armed": True}

    def loss_fn(out, t):
        if out.requires_grad:
            state["grad_calls"] += 1
            if state["armed"] and state["grad_calls"] == 2:
                raise RuntimeError("batch 1 fails")
        return F.cross_entropy(out, t)

    torch.manual_seed(7)
    loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)
    op = cv.HessianOperator(model, loss_fn, loader)
    V = probe_block(op.shape[0], 1)
    with pytest.raises(RuntimeError, match="batch 1 fails"):
        op @ V
    assert op.products.num_cached_graphs == 1
    state["armed"] = False
    ref = _truth(model, X, y, V)
    for _ in range(3):
        assert rel(op @ V, ref) < 1e-12
    assert op.data_mode.startswith("kept (shuffling") and op.products.num_cached_graphs == 3
