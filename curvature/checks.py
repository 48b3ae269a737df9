"""Argument checks shared by every estimator and its front door, in one room.

Each check returns the value in its canonical form or raises one error whose message names
the argument and what it got: :class:`TypeError` for a value of the wrong kind (unless the
caller asks for another class), :class:`ValueError` for a value out of range.

* :func:`operator`: a :class:`~curvature.operators.CurvatureOperator`, returning ``n``;
* :func:`integer` and :func:`positive_int`: an integer, or one ``>= 1`` (``bool`` is not
  an integer here);
* :func:`choice`: one of a fixed set of names;
* :func:`tolerance`: a relative tolerance in ``(0, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from curvature.operators import CurvatureOperator

__all__ = ["choice", "integer", "operator", "positive_int", "tolerance"]


def operator(op: object, caller: str) -> int:
    """The dimension ``n`` of ``op``, which must be a ``CurvatureOperator``.

    Raises:
        TypeError: ``op`` is something else (a matrix, a model...); the message names
            ``caller``.
    """
    if not isinstance(op, CurvatureOperator):
        raise TypeError(
            f"{caller} needs a CurvatureOperator (HessianOperator, GGNOperator, "
            f"DenseOperator, ...), got {type(op).__name__}"
        )
    return op.shape[0]


def integer(value: object, name: str, *, not_int: type[Exception] = TypeError) -> int:
    """``value`` as an ``int`` (Python or NumPy integers; ``bool`` is refused); for callers
    that check the range themselves with a more specific message (``1 <= k <= n``).

    Raises:
        not_int: ``value`` is not an integer (:class:`TypeError` unless the caller's
            contract says otherwise, e.g. :class:`ValueError` for every bad zoo argument).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise not_int(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def positive_int(value: object, name: str, *, not_int: type[Exception] = TypeError) -> int:
    """``value`` as an ``int >= 1`` (see :func:`integer` for the accepted kinds).

    >>> positive_int(3, "k")
    3
    >>> positive_int(0, "k")
    Traceback (most recent call last):
    ...
    ValueError: k must be a positive integer, got 0

    Raises:
        not_int: ``value`` is not an integer (:class:`TypeError` by default).
        ValueError: ``value < 1``.
    """
    value = integer(value, name, not_int=not_int)
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def choice(value: object, name: str, options: Sequence[str]) -> str:
    """``value`` if it is one of ``options``.

    Raises:
        ValueError: anything else (the message lists ``options``).
    """
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value  # type: ignore[return-value]


def tolerance(value: object, name: str = "tol") -> float:
    """``value`` as a float in the open interval ``(0, 1)`` (a relative tolerance).

    Raises:
        ValueError: not a real number, not finite, or outside ``(0, 1)``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and 0 < value < 1
    ):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)
