"""cv.block_spectra against the float64 dense Hessian's diagonal blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import curvature as cv
from curvature.partition import partition


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    return model, nn.CrossEntropyLoss(), (X, y)


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)))


class _Tied(nn.Module):
    """A tiny language model whose output layer reuses the embedding matrix."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.mix = nn.Linear(4, 4)
        self.out = nn.Linear(4, 7)
        self.out.weight = self.embed.weight

    def forward(self, ids):
        return self.out(torch.tanh(self.mix(self.embed(ids))))


def _cnn():
    torch.manual_seed(1)
    X, y = torch.randn(12, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (12,))
    return _CNN().double(), nn.CrossEntropyLoss(), (X, y)


def _tied():
    torch.manual_seed(2)
    ids, y = torch.randint(0, 7, (16,)), torch.randint(0, 7, (16,))
    return _Tied().double(), nn.CrossEntropyLoss(), (ids, y)


def _dense_blocks(model, loss, data, result):
    """The exact diagonal blocks ``H_bb`` of each of ``result``'s blocks (float64)."""
    names = [p for b in result for p in b.params]
    H = cv.dense_hessian(model, loss, data, params=names).numpy()
    out, s = [], 0
    for b in result:
        out.append(H[s:s + b.num_params, s:s + b.num_params])
        s += b.num_params
    return out


def _check_eigenvalues(result, dense):
    assert result.converged, result.message
    for b, Hb in zip(result, dense):
        ev = np.linalg.eigvalsh(Hb)
        scale = np.abs(ev).max()
        assert b.num_params == Hb.shape[0]
        assert b.lambda_max == pytest.approx(ev[-1], abs=1e-8 * scale), b.name
        assert b.lambda_min == pytest.approx(ev[0], abs=1e-8 * scale), b.name
        assert b.converged_max and b.converged_min
        assert b.top_residuals[0] <= 1e-9 * scale + 1e-14


@pytest.mark.parametrize("make", [_mlp, _cnn, _tied])
@pytest.mark.parametrize("blocks", ["module", "layer", "parameter"])
def test_extremes_match_dense_blocks(make, blocks):
    model, loss, data = make()
    r = cv.block_spectra(model, loss, data, blocks=blocks, tol=1e-10, trace_matvecs=0, seed=0)
    assert [b.name for b in r] == [name for name, _ in partition(model, blocks)]
    _check_eigenvalues(r, _dense_blocks(model, loss, data, r))


def test_user_groups_and_k():
    model, loss, data = _mlp()
    groups = {"weights": [model[0].weight, "2.weight"], "biases": ["0.bias", model[2].bias]}
    r = cv.block_spectra(model, loss, data, blocks=groups, k=1, tol=1e-10, trace_matvecs=0, seed=1)
    assert r.names == ["weights", "biases"]
    assert r["weights"].params == ("0.weight", "2.weight")
    dense = _dense_blocks(model, loss, data, r)
    _check_eigenvalues(r, dense)
    for b, Hb in zip(r, dense):
        ev = np.linalg.eigvalsh(Hb)
        np.testing.assert_allclose(b.top, ev[::-1][:1], atol=1e-8 * np.abs(ev).max())
        np.testing.assert_allclose(b.bottom, ev[:1], atol=1e-8 * np.abs(ev).max())
    # single-vector runs cannot certify copies of a repeated eigenvalue: k > 1 is refused
    with pytest.raises(ValueError, match=r"k=1.*cv.eigenvalues"):
        cv.block_spectra(model, loss, data, blocks=groups, k=3)


def test_tied_parameter_belongs_to_its_first_owner():
    model, _, _ = _tied()
    parts = dict(partition(model, "module"))
    assert parts == {"embed": ["embed.weight"], "mix": ["mix.weight", "mix.bias"], "out": ["out.bias"]}
    assert dict(partition(model, {"g": ["out.weight"]})) == {"g": ["embed.weight"]}
    with pytest.raises(ValueError, match="must not overlap"):
        partition(model, {"a": ["embed.weight"], "b": ["out.weight"]})


def test_traces_cover_the_exact_block_traces():
    model, loss, data = _cnn()
    r = cv.block_spectra(model, loss, data, blocks="parameter", trace_matvecs=200, seed=3)
    dense = _dense_blocks(model, loss, data, r)
    for b, Hb in zip(r, dense):
        assert b.trace_probes == 200
        assert abs(b.trace - np.trace(Hb)) <= 4 * b.trace_stderr, b.name
        assert b.trace_stderr < 0.5 * abs(np.trace(Hb)) + 1e-12


def test_one_parameter_block_trace_is_exact():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    data = (torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64))
    r = cv.block_spectra(model, nn.MSELoss(), data, blocks="parameter", trace_matvecs=3, seed=0)
    b = r["2.bias"]
    H = _dense_blocks(model, nn.MSELoss(), data, r)[3]
    assert b.num_params == 1 and b.trace_stderr == 0.0
    assert b.trace == pytest.approx(H[0, 0], rel=1e-12) == pytest.approx(b.lambda_max, rel=1e-12)


def test_one_pass_per_lockstep_step():
    """Every step multiplies all blocks' columns in one product: passes over the data =
    the longest block's Lanczos steps, not the sum over blocks."""
    model, loss, data = _mlp()
    calls = [0]

    def counting(out, y):
        calls[0] += 1
        return loss(out, y)

    opts = {"cache_graphs": False, "chunk_size": 10_000}
    op = cv.HessianOperator(model, counting, data, **opts)
    calls[0] = 0
    op.matmat(torch.randn(op.shape[0], 1, dtype=torch.float64))
    one = calls[0]
    op.matmat(torch.randn(op.shape[0], 5, dtype=torch.float64))
    per_pass = calls[0] - one
    assert per_pass >= 1 and op.num_matvecs == 6

    calls[0] = 0
    r = cv.block_spectra(model, counting, data, blocks="parameter", tol=1e-10,
                         trace_matvecs=0, seed=0, **opts)
    steps = [b.lanczos_steps for b in r]
    assert r.num_passes == max(steps) and r.num_matvecs == sum(steps)
    assert calls[0] - (one - per_pass) == per_pass * r.num_passes
    assert r.num_passes < sum(steps)  # blocks x iterations would be the sum
    # trace probes ride in the same passes
    r2 = cv.block_spectra(model, loss, data, blocks="parameter", tol=1e-10, trace_matvecs=5, seed=0)
    assert r2.num_passes == max(b.lanczos_steps for b in r2)
    assert r2.num_matvecs == sum(b.lanczos_steps for b in r2) + 5 * len(r2)


def test_density_per_block():
    model, loss, data = _mlp()
    r = cv.block_spectra(model, loss, data, blocks="module", density=True, density_steps=50,
                         density_probes=3, trace_matvecs=0, seed=5)
    for b, Hb in zip(r, _dense_blocks(model, loss, data, r)):
        ev = np.linalg.eigvalsh(Hb)
        d = b.density
        assert d.dim == b.num_params and d.nodes.shape[0] == 3
        assert np.allclose(d.weights.sum(1).numpy(), 1.0)
        # steps >= n_b: the quadrature's nodes are eigenvalues of H_bb
        assert d.lambda_max == pytest.approx(ev[-1], abs=1e-8 * np.abs(ev).max())


def test_budget_exhaustion_is_reported():
    model, loss, data = _mlp()
    r = cv.block_spectra(model, loss, data, blocks="parameter", max_steps=2, trace_matvecs=0, seed=0)
    assert not r.converged and "0.weight" in r.message
    b = r["0.weight"]
    assert b.stop_reason == "budget" and not b.converged
    df = r.to_dataframe()
    assert list(df["block"]) == r.names and not df["lambda_max_converged"].all()
    assert {"lambda_max", "lambda_min", "trace", "trace_stderr", "num_params"} <= set(df.columns)


def test_bad_input():
    model, loss, data = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="blocks must be one of"):
        cv.block_spectra(model, loss, data, blocks="neuron")
    with pytest.raises(ValueError, match="'nope' is not a parameter name"):
        cv.block_spectra(model, loss, data, blocks={"a": ["nope"]})
    with pytest.raises(ValueError, match="group 'a' is empty"):
        cv.block_spectra(model, loss, data, blocks={"a": []})
    with pytest.raises(ValueError, match="empty dict"):
        cv.block_spectra(model, loss, data, blocks={})
    with pytest.raises(ValueError, match="in 'a' and in group 'b'"):
        cv.block_spectra(model, loss, data, blocks={"a": ["0.bias"], "b": [model[0].bias]})
    with pytest.raises(ValueError, match="not a parameter of the model"):
        cv.block_spectra(model, loss, data, blocks={"a": [torch.zeros(3)]})
    with pytest.raises(TypeError, match="list of parameters"):
        cv.block_spectra(model, loss, data, blocks={"a": "0.bias"})
    with pytest.raises(ValueError, match="trace_matvecs"):
        cv.block_spectra(model, loss, data, trace_matvecs=-1)
    with pytest.raises(ValueError, match="tol"):
        cv.block_spectra(model, loss, data, tol=2.0)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_max_columns_bounds_each_product():
    model, loss, data = _mlp()
    full = cv.block_spectra(model, loss, data, blocks="parameter", tol=1e-10, trace_matvecs=4, seed=0)
    r = cv.block_spectra(model, loss, data, blocks="parameter", tol=1e-10, trace_matvecs=4, seed=0,
                         max_columns=2)
    assert r.num_matvecs == full.num_matvecs and r.num_passes > full.num_passes
    for a, b in zip(r, full):  # same start vectors and probes: same results
        assert a.lambda_max == pytest.approx(b.lambda_max, rel=1e-12)
        assert a.trace == pytest.approx(b.trace, rel=1e-12)


def test_finite_difference_products_bound_the_residuals():
    model, loss, data = _mlp()
    ok = cv.block_spectra(model, loss, data, blocks="parameter", method="fd-central", seed=0)
    dense = _dense_blocks(model, loss, data, ok)
    assert ok.product_error > 0 and ok.converged
    for b, Hb in zip(ok, dense):
        assert b.top_residuals[0] >= ok.product_error
        assert abs(b.lambda_max - np.linalg.eigvalsh(Hb)[-1]) <= b.top_residuals[0]
    strict = cv.block_spectra(model, loss, data, blocks="parameter", method="fd-central",
                              seed=0, tol=1e-12)
    assert not strict.converged and "finite-difference" in strict.message
