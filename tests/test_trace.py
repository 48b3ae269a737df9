"""Hutchinson, Hutch++ and the diagonal estimator against exact traces and diagonals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvature.operators import CurvatureOperator, DenseOperator, HessianOperator
from curvature.operators.dense import dense_hessian
from curvature.trace import diagonal, trace


def designed(eigs, seed: int = 0) -> DenseOperator:
    eigs = np.asarray(eigs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    A = (Q * eigs) @ Q.T
    return DenseOperator(torch.tensor(0.5 * (A + A.T)))


def outlier_operator(seed: int = 0) -> DenseOperator:
    """Five large outliers over a PSD bulk: ||H||_F is dominated by the outliers."""
    rng = np.random.default_rng(seed)
    return designed(np.concatenate([[50.0, 30.0, 20.0, 10.0, 5.0], rng.uniform(0, 1, 195)]), seed)


def indefinite_operator(seed: int = 1) -> DenseOperator:
    rng = np.random.default_rng(seed)
    return designed(np.concatenate([[8.0, -6.0], rng.normal(0.2, 1.0, 118)]), seed)


def exact_trace(op: DenseOperator) -> float:
    return float(torch.trace(op.matrix))


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
@pytest.mark.parametrize("make", [outlier_operator, indefinite_operator])
def test_two_stderr_interval_coverage(method, make):
    op = make()
    tr = exact_trace(op)
    hits = []
    for seed in range(400):
        res = trace(op, method=method, num_matvecs=60, seed=seed)
        assert res.num_matvecs == 60 and res.stderr > 0
        hits.append(abs(res.estimate - tr) <= 2 * res.stderr)
    coverage = float(np.mean(hits))
    assert 0.90 <= coverage <= 0.99, coverage


def test_hutchpp_beats_hutchinson_on_outlier_spectrum():
    op = outlier_operator()
    tr = exact_trace(op)
    err = {}
    for method in ["hutchinson", "hutch++"]:
        e = [trace(op, method=method, num_matvecs=60, seed=s).estimate - tr for s in range(100)]
        err[method] = float(np.sqrt(np.mean(np.square(e))))
    ratio = err["hutchinson"] / err["hutch++"]
    print(f"RMS error at 60 matvecs: hutchinson {err['hutchinson']:.3g}, "
          f"hutch++ {err['hutch++']:.3g}, ratio {ratio:.2f}")
    assert ratio >= 3.0


def test_hutchinson_stderr_matches_closed_form_variance():
    # Var[z^T A z] = 2 (||A||_F^2 - sum_i A_ii^2) for Rademacher z.
    op = indefinite_operator()
    A = op.matrix
    sd = float(torch.sqrt(2 * (A.square().sum() - torch.diagonal(A).square().sum())))
    res = trace(op, method="hutchinson", num_matvecs=4000, seed=0)
    assert abs(res.stderr * np.sqrt(4000) / sd - 1) < 0.1


def small_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (48,), generator=g)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    return model, F.cross_entropy, (x, y)


def test_hutchpp_exact_when_sketch_spans_space():
    model, loss_fn, data = small_problem()
    H = dense_hessian(model, loss_fn, data)
    op = HessianOperator(model, loss_fn, data, dtype=torch.float64)
    n = op.shape[0]
    res = trace(op, method="hutch++", num_matvecs=3 * n + 2, seed=0)
    assert res.num_matvecs == 3 * n + 2
    assert abs(res.estimate - float(torch.trace(H))) <= 1e-9 * float(H.abs().sum())
    assert res.stderr <= 1e-9 * float(H.abs().max())


def test_trace_of_hessian_within_stderr():
    model, loss_fn, data = small_problem()
    tr = float(torch.trace(dense_hessian(model, loss_fn, data)))
    op = HessianOperator(model, loss_fn, data, dtype=torch.float64)
    for method in ["hutchinson", "hutch++"]:
        res = trace(op, method=method, num_matvecs=90, seed=3)
        assert abs(res.estimate - tr) <= 4 * res.stderr, (method, res, tr)


def test_diagonal_coverage_and_accuracy():
    op = indefinite_operator()
    d = torch.diagonal(op.matrix)
    hits = []
    for seed in range(40):
        res = diagonal(op, num_matvecs=100, seed=seed)
        assert res.estimate.shape == d.shape and res.num_matvecs == 100
        hits.append((res.estimate - d).abs() <= 2 * res.stderr)
    coverage = float(torch.cat(hits).double().mean())
    assert 0.90 <= coverage <= 0.99, coverage


def test_diagonal_of_hessian():
    model, loss_fn, data = small_problem()
    d = torch.diagonal(dense_hessian(model, loss_fn, data))
    op = HessianOperator(model, loss_fn, data, dtype=torch.float64)
    res = diagonal(op, num_matvecs=400, seed=0)
    z = ((res.estimate - d) / res.stderr.clamp_min(1e-300)).abs()
    exact = res.stderr < 1e-12  # coordinates with no off-diagonal coupling are exact
    assert torch.all(z[~exact] <= 5.0)
    assert torch.allclose(res.estimate[exact], d[exact], atol=1e-10)
    # The error shrinks like 1/sqrt(m): 16x the probes, ~1/4 of the error.
    err_small = (diagonal(op, num_matvecs=25, seed=1).estimate - d).norm()
    err_large = (res.estimate - d).norm()
    assert err_large < 0.5 * err_small


class Recording(CurvatureOperator):
    def __init__(self, A: torch.Tensor) -> None:
        super().__init__(A.shape[0], A.device, A.dtype)
        self.A, self.widest = A, 0

    def _matmat(self, V):
        self.widest = max(self.widest, V.shape[1])
        return self.A @ V


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_probe_blocks_bound_memory_and_do_not_change_result(method):
    A = outlier_operator().matrix
    a, b = Recording(A), Recording(A)
    ra = trace(a, method=method, num_matvecs=100, seed=5, block_size=7)
    rb = trace(b, method=method, num_matvecs=100, seed=5)
    # default: one block per stage (100 probes; hutch++: 33 sketch, then 33 + 34 together)
    assert a.widest == 7 and b.widest == (100 if method == "hutchinson" else 67)
    assert ra.num_matvecs == rb.num_matvecs == 100
    assert ra.estimate == pytest.approx(rb.estimate, rel=1e-12)
    c = Recording(A)  # near-equal blocks: 100 = 4 x 25; hutch++ 33 = 17 + 16, 67 = 23 + 22 + 22
    rc = trace(c, method=method, num_matvecs=100, seed=5, block_size=32)
    assert c.widest == (25 if method == "hutchinson" else 23)
    assert rc.estimate == pytest.approx(rb.estimate, rel=1e-12)
    da = diagonal(a, num_matvecs=50, seed=2, block_size=7)
    db = diagonal(b, num_matvecs=50, seed=2)
    torch.testing.assert_close(da.estimate, db.estimate, rtol=1e-12, atol=1e-12)


def test_reproducible_and_float32():
    op = DenseOperator(outlier_operator().matrix.float())
    a = trace(op, num_matvecs=30, seed=9)
    b = trace(op, num_matvecs=30, seed=9)
    c = trace(op, num_matvecs=30, seed=10)
    assert a.estimate == b.estimate and a.stderr == b.stderr and a.estimate != c.estimate
    assert diagonal(op, num_matvecs=8, seed=0).estimate.dtype == torch.float32


class NaNOperator(CurvatureOperator):
    def __init__(self, n: int) -> None:
        super().__init__(n, torch.device("cpu"), torch.float64)

    def _matmat(self, V):
        return torch.full_like(V, float("nan"))


@pytest.mark.parametrize(
    "call,err,match",
    [
        (lambda op: trace(op, method="exact"), ValueError, "method must be one of"),
        (lambda op: trace(op, method="hutch++", num_matvecs=3), ValueError, "num_matvecs >= 4"),
        (lambda op: trace(op, method="hutchinson", num_matvecs=1), ValueError, "num_matvecs >= 2"),
        (lambda op: trace(op, num_matvecs=10.0), TypeError, "num_matvecs must be an int"),
        (lambda op: trace(op, block_size=0), ValueError, "block_size"),
        (lambda op: diagonal(op, num_matvecs=1), ValueError, "num_matvecs >= 2"),
        (lambda op: trace(NaNOperator(10)), FloatingPointError, "non-finite"),
        (lambda op: diagonal(NaNOperator(10)), FloatingPointError, "non-finite"),
        (lambda op: trace(op.matrix), TypeError, "CurvatureOperator"),
    ],
)
def test_bad_input(call, err, match):
    op = designed(np.linspace(0, 1, 10))
    with pytest.raises(err, match=match):
        call(op)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    op = DenseOperator(outlier_operator().matrix.cuda())
    res = trace(op, num_matvecs=600, seed=0)
    assert abs(res.estimate - exact_trace(op)) <= 4 * res.stderr + 1e-9
    d = diagonal(op, num_matvecs=64, seed=0)
    assert d.estimate.device.type == "cuda" and d.stderr.device.type == "cuda"
