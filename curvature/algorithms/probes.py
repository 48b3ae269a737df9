"""Random probe vectors and the blocks they travel in, shared by every stochastic algorithm.

* :func:`make_generator`, :func:`rademacher`, :func:`gaussian`: seeded probes drawn on the
  operator's device (never the global RNG), column after column, so splitting a draw
  into blocks of columns gives the same probes;
* :func:`blocks`, :func:`default_block_size`, :func:`rademacher_products`: probes pushed
  through :meth:`~curvature.CurvatureOperator.matmat` in near-equal blocks, each product
  checked for NaN/inf (:func:`check_finite`);
* :func:`mean_stderr`: the sample mean and its standard error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from curvature.errors import NonFiniteProductError
from curvature.operators import CurvatureOperator

__all__ = [
    "PROBE_BYTES",
    "blocks",
    "check_finite",
    "default_block_size",
    "gaussian",
    "make_generator",
    "mean_stderr",
    "rademacher",
    "rademacher_products",
]

PROBE_BYTES = 2**28
"""Default memory of one block of probes and their products (256 MiB)."""


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


GUESS_NOISE = 0.1
"""Norm of the random part of a guided start column (the guess has norm 1): a guess
orthogonal to a wanted eigenvector costs ``log(10) / log(rate)`` more steps than a random
start, a good one saves ``log(sqrt(n)) / log(rate)``."""


def start_block(
    n: int, b: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device,
    guess: Tensor | None = None,
) -> Tensor:
    """``Tensor[n, b]`` of Gaussian columns; with a ``guess``, the columns scaled to norm
    :data:`GUESS_NOISE` and the unit-norm columns of ``guess`` (``Tensor[n]`` or ``Tensor[n, j]``, ``j <= b``) added to the first ``j``.

    The block stays a Gaussian draw (shifted), so every statement that holds for a random
    start with probability one still does, and an eigenvector the guess misses keeps the
    component a random start gives it; a guess close to the wanted eigenvectors shortens
    a Krylov run (Lanczos' error shrinks from ``tan`` of the start's angle to the wanted
    eigenvector, about ``sqrt(n)`` for a random start; e.g. the loss gradient for the largest Hessian eigenvalues, which lies
    mostly in the top eigenspace: Gur-Ari, Roberts & Dyer 2018).
    """
    X = gaussian(n, b, gen, dtype, device)
    if guess is None:
        return X
    X = GUESS_NOISE * X / torch.linalg.vector_norm(X, dim=0, keepdim=True)
    G = guess.reshape(n, -1).to(device=device, dtype=dtype)
    X[:, : G.shape[1]] += G / torch.linalg.vector_norm(G, dim=0, keepdim=True)
    return X


def default_block_size(op: CurvatureOperator) -> int:
    """Most probes per product such that the probes and their products fit
    :data:`PROBE_BYTES` (``2 n b`` numbers of the operator's dtype), at least 1."""
    itemsize = torch.empty((), dtype=op.dtype).element_size()
    return max(1, PROBE_BYTES // (2 * op.shape[0] * itemsize))


def blocks(count: int, block_size: int) -> list[int]:
    """``count`` columns in ``ceil(count / block_size)`` blocks of near-equal width.

    Equal widths matter: a product's cost per column falls with its width (one shared
    pass over the data), so 40 probes as 20 + 20 beat 32 + 8.
    """
    parts = -(-count // block_size)
    base, extra = divmod(count, parts)
    return [base + 1] * extra + [base] * (parts - extra)


def check_finite(X: Tensor, what: str, start: int) -> None:
    """Raise :class:`~curvature.NonFiniteProductError` if the product ``X`` of the probe
    block starting at probe ``start`` holds a NaN or inf; ``what`` names the estimator."""
    if not bool(torch.isfinite(X).all()):
        raise NonFiniteProductError(
            f"{what}: the operator returned a non-finite product (NaN or inf) for probe "
            f"block starting at probe {start}; check the model, the loss and the data"
        )


def rademacher_products(
    op: CurvatureOperator,
    count: int,
    gen: torch.Generator,
    block_size: int,
    bar: tqdm,
    what: str,
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(Z, H Z)`` for ``count`` Rademacher probes in near-equal blocks of at most
    ``block_size`` columns (``Z: Tensor[n, b]``, operator dtype and device), each product
    checked to be finite; ``bar`` advances by ``b`` after each block is consumed."""
    n, start = op.shape[0], 0
    for b in blocks(count, block_size):
        Z = rademacher(n, b, gen, op.dtype, op.device)
        HZ = op.matmat(Z)
        check_finite(HZ, what, start)
        yield Z, HZ
        bar.update(b)
        start += b


def mean_stderr(samples: Tensor) -> tuple[float, float]:
    """Mean of ``samples`` (Tensor[m]) and its standard error ``std / sqrt(m)`` (the
    unbiased sample standard deviation; NaN for a single sample)."""
    m = samples.numel()
    mean = float(samples.mean())
    stderr = float(samples.std(unbiased=True)) / math.sqrt(m) if m > 1 else math.nan
    return mean, stderr
