"""Deflated, shifted power iteration (:mod:`curvature.algorithms.power_iteration`): every copy
of a repeated eigenvalue; its doctest. (Tests shared with Lanczos: test_eigenvalues.py.)"""

from __future__ import annotations

import doctest

import pytest

from curvature.algorithms import power_iteration as power_module
from curvature.estimators import eigenvalues

from .conftest import check_every_copy, designed, repeated_spectrum

WHICH = ["largest", "smallest", "magnitude"]


def test_doctest():
    assert doctest.testmod(power_module).failed == 0


@pytest.mark.parametrize("which", WHICH)
def test_power_returns_every_copy(which):
    eigs, k = repeated_spectrum(4, "end-more", which, 100, 0)
    op = designed(eigs, 0)
    res = eigenvalues(op, k, which=which, method="power", seed=0, tol=1e-8, max_matvecs=4000)
    check_every_copy(op, res, eigs, k, which, rtol=1e-7)
