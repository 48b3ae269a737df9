"""Errors live in one room: every public error is the same class wherever it is imported
from, and the non-finite family is caught by ``FloatingPointError``."""

import pytest
import torch

import curvature as cv
from curvature import checkpoint, data_loop, errors, inputs, models, results
from curvature.operators import hessian_products


def test_one_class_per_error_wherever_imported():
    assert data_loop.NonFiniteLossError is errors.NonFiniteLossError is cv.NonFiniteLossError
    assert hessian_products.DoubleBackwardError is errors.DoubleBackwardError is cv.DoubleBackwardError
    assert results.ConvergenceWarning is errors.ConvergenceWarning is cv.ConvergenceWarning
    assert checkpoint.CheckpointError is errors.CheckpointError is cv.CheckpointError
    assert models.ModelFactoryError is errors.ModelFactoryError
    assert inputs.InputError is errors.InputError
    for cls in (errors.NonFiniteLossError, errors.NonFiniteProductError):
        assert issubclass(cls, errors.NonFiniteError)
        assert issubclass(cls, FloatingPointError)


def test_estimators_raise_the_typed_product_error():
    A = torch.eye(6, dtype=torch.float64)
    A[0, 0] = float("nan")

    class NaNOperator(cv.DenseOperator):
        def _matmat(self, V):
            return A @ V

    op = NaNOperator(torch.eye(6, dtype=torch.float64))
    with pytest.raises(cv.NonFiniteProductError, match="non-finite"):
        cv.trace(op, num_matvecs=6, seed=0)
    with pytest.raises(cv.NonFiniteProductError, match="non-finite"):
        cv.spectral_density(op, num_steps=4, num_probes=2, seed=0)
