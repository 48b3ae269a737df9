"""Hutchinson's trace and the diagonal estimator (:mod:`curvature.algorithms.hutchinson`)
against closed-form variances and exact diagonals."""

from __future__ import annotations

import doctest

import numpy as np
import torch

from curvature.algorithms import hutchinson as hutchinson_module
from curvature.estimators import diagonal, trace
from curvature.operators import HessianOperator, dense_hessian

from .conftest import indefinite_operator, trace_problem


def test_doctest():
    assert doctest.testmod(hutchinson_module).failed == 0


def test_hutchinson_stderr_matches_closed_form_variance():
    # Var[z^T A z] = 2 (||A||_F^2 - sum_i A_ii^2) for Rademacher z.
    op = indefinite_operator()
    A = op.matrix
    sd = float(torch.sqrt(2 * (A.square().sum() - torch.diagonal(A).square().sum())))
    res = trace(op, method="hutchinson", num_matvecs=4000, seed=0)
    assert abs(res.stderr * np.sqrt(4000) / sd - 1) < 0.1


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
    model, loss_fn, data = trace_problem()
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
