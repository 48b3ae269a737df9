"""Checks of the zoo factories' keyword arguments, and activations by name.

Every factory of :mod:`curvature.models` takes JSON values (a checkpoint records them),
so each argument is checked here for its type and range and a bad one raises one
``ValueError`` naming it. Each check takes ``(value, name)`` and returns the value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

__all__ = [
    "ACTIVATIONS",
    "activation",
    "int_list",
    "positive_int",
    "positive_ints",
    "positive_number",
    "probability",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}
"""Activation names accepted by the zoo factories."""


def activation(name: str) -> nn.Module:
    """A new activation module by name (one of :data:`ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


def positive_int(value: Any, name: str) -> int:
    """``value`` if it is an integer >= 1 (not a bool), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def positive_ints(**values: Any) -> None:
    """Check each keyword argument with :func:`positive_int` (its name in the message)."""
    for name, value in values.items():
        positive_int(value, name)


def int_list(value: Any, name: str) -> list[int]:
    """A list of positive integers (a single integer is a list of one)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{name} must be a list of positive integers, got {value!r}")
    return [positive_int(v, f"{name}[{i}]") for i, v in enumerate(value)]


def probability(value: Any, name: str) -> float:
    """A number in ``[0, 1)`` (a dropout probability), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def positive_number(value: Any, name: str) -> float:
    """A number > 0, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)
