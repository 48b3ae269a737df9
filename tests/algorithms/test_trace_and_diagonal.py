"""The front doors ``trace`` (both methods) and ``diagonal``: interval coverage, probe
blocks, reproducibility, float32, argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curvature.estimators import diagonal, trace
from curvature.operators import CurvatureOperator, DenseOperator, HessianOperator, dense_hessian

from .conftest import designed, exact_trace, indefinite_operator, outlier_operator, trace_problem


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


def test_trace_of_hessian_within_stderr():
    model, loss_fn, data = trace_problem()
    tr = float(torch.trace(dense_hessian(model, loss_fn, data)))
    op = HessianOperator(model, loss_fn, data, dtype=torch.float64)
    for method in ["hutchinson", "hutch++"]:
        res = trace(op, method=method, num_matvecs=90, seed=3)
        assert abs(res.estimate - tr) <= 4 * res.stderr, (method, res, tr)


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
