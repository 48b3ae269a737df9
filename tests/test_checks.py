"""The argument checks of :mod:`curvature.checks`, shared by the estimators and the model zoo."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from curvature import checks
from curvature.algorithms import ritz
from curvature.operators import DenseOperator


@pytest.mark.parametrize("module", [checks, ritz])
def test_doctest(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


def test_positive_int_checks_kind_and_sign():
    assert checks.positive_int(3, "k") == 3
    assert checks.positive_int(np.int64(2), "k") == 2 and type(checks.positive_int(np.int64(2), "k")) is int
    for bad in (0, -4):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            checks.positive_int(bad, "k")
    for bad in (True, 2.0, "3", None):
        with pytest.raises(TypeError, match="k must be an int"):
            checks.positive_int(bad, "k")
    with pytest.raises(ValueError, match="width must be an int"):
        checks.positive_int("8", "width", not_int=ValueError)


def test_integer_leaves_the_range_to_the_caller():
    assert checks.integer(0, "k") == 0 and checks.integer(-1, "k") == -1
    with pytest.raises(TypeError, match="k must be an int"):
        checks.integer(1.5, "k")


def test_operator_choice_tolerance():
    op = DenseOperator(torch.eye(4, dtype=torch.float64))
    assert checks.operator(op, "caller") == 4
    with pytest.raises(TypeError, match="caller needs a CurvatureOperator"):
        checks.operator(torch.eye(4), "caller")
    assert checks.choice("a", "x", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"x must be one of \('a', 'b'\), got 'c'"):
        checks.choice("c", "x", ("a", "b"))
    assert checks.tolerance(1e-4) == 1e-4
    for bad in (0, 1, -0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="tol must be a number in"):
            checks.tolerance(bad)

