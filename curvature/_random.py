"""Seeded random probe vectors drawn on the operator's device (never the global RNG)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["make_generator", "rademacher", "gaussian"]


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A ``torch.Generator`` on ``device``, seeded by ``seed`` (fresh entropy when ``None``)."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        gen.manual_seed(seed)
    return gen


def rademacher(
    n: int, k: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``Tensor[n, k]`` of independent +-1 entries (each with probability 1/2).

    Columns are drawn one after another, so splitting a draw into blocks of columns
    gives the same probes.
    """
    z = torch.randint(0, 2, (k, n), generator=gen, device=device, dtype=dtype)
    return z.mul_(2).sub_(1).T.contiguous()


def gaussian(
    n: int, k: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``Tensor[n, k]`` of independent standard normal entries (drawn column by column)."""
    return torch.randn((k, n), generator=gen, device=device, dtype=dtype).T.contiguous()
