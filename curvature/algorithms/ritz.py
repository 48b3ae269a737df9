"""Ritz-pair bookkeeping shared by the eigenvalue algorithms (Lanczos, power iteration).

* :func:`wanted_order`: which end of the spectrum ``which`` asks for;
* :data:`RELATIVE_FLOOR` and :func:`residual_limit`: the residual a pair may have and
  still count as converged, ``tol * max(|theta|, RELATIVE_FLOOR * ||H||_est)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RELATIVE_FLOOR", "WHICH", "residual_limit", "wanted_order"]

WHICH = ("largest", "smallest", "magnitude")
"""The ends of the spectrum an eigenvalue algorithm can be asked for."""

RELATIVE_FLOOR = 1e-3
"""Eigenvalues smaller than this fraction of ``||H||`` are resolved to an absolute residual
of ``tol * RELATIVE_FLOOR * ||H||`` (a purely relative test cannot be met near zero in
floating point)."""


def wanted_order(values: np.ndarray, which: str) -> np.ndarray:
    """Indices sorting ``values`` from most to least wanted for ``which``.

    >>> wanted_order(np.array([1.0, -3.0, 2.0]), "magnitude").tolist()
    [1, 2, 0]
    """
    if which == "largest":
        return np.argsort(-values, kind="stable")
    if which == "smallest":
        return np.argsort(values, kind="stable")
    return np.argsort(-np.abs(values), kind="stable")


def residual_limit(values: np.ndarray | float, anorm: float, tol: float) -> np.ndarray:
    """``tol * max(|values|, RELATIVE_FLOOR * anorm)`` elementwise: the largest residual
    ``||H v - theta v||`` at which the pair ``(theta, v)`` counts as converged (``anorm``:
    the running estimate of ``||H||``, eigenvalue units)."""
    return tol * np.maximum(np.abs(values), RELATIVE_FLOOR * anorm)
