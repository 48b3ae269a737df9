"""Hutch++ (:mod:`curvature.algorithms.hutchpp`): beats Hutchinson on outlier spectra and is
exact when the sketch spans the space."""

from __future__ import annotations

import doctest

import numpy as np
import torch

from curvature.algorithms import hutchpp as hutchpp_module
from curvature.estimators import trace
from curvature.operators import HessianOperator, dense_hessian

from .conftest import exact_trace, outlier_operator, trace_problem


def test_doctest():
    assert doctest.testmod(hutchpp_module).failed == 0


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


def test_hutchpp_exact_when_sketch_spans_space():
    model, loss_fn, data = trace_problem()
    H = dense_hessian(model, loss_fn, data)
    op = HessianOperator(model, loss_fn, data, dtype=torch.float64)
    n = op.shape[0]
    res = trace(op, method="hutch++", num_matvecs=3 * n + 2, seed=0)
    assert res.num_matvecs == 3 * n + 2
    assert abs(res.estimate - float(torch.trace(H))) <= 1e-9 * float(H.abs().sum())
    assert res.stderr <= 1e-9 * float(H.abs().max())
