"""Shared helpers of the algorithm tests: designed spectra with known eigenvalues."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curvature.operators import DenseOperator


def designed(eigs, seed: int = 0, dtype: torch.dtype = torch.float64,
             Q: np.ndarray | None = None) -> DenseOperator:
    """``Q diag(eigs) Q^T`` with a random orthogonal ``Q`` (seeded; or the given ``Q``),
    symmetrised, as a dense operator of ``dtype``."""
    eigs = np.asarray(eigs, dtype=np.float64)
    if Q is None:
        rng = np.random.default_rng(seed)
        Q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    A = (Q * eigs) @ Q.T
    return DenseOperator(torch.tensor(0.5 * (A + A.T), dtype=dtype))


def designed_with_spectrum(eigs, seed: int = 0) -> tuple[DenseOperator, np.ndarray]:
    """:func:`designed` (float64) and its eigenvalues as a float64 array."""
    eigs = np.asarray(eigs, dtype=np.float64)
    return designed(eigs, seed), eigs


def outlier_spectrum(n: int = 300, seed: int = 0) -> np.ndarray:
    """A bulk near zero (some negative) plus a few large outliers, as network Hessians have."""
    rng = np.random.default_rng(seed)
    return np.concatenate([[50.0, 30.0, 20.0, 10.0, 5.0], rng.uniform(-0.1, 1.0, n - 5)])


def truth(eigs: np.ndarray, k: int, which: str) -> np.ndarray:
    """The ``k`` eigenvalues ``which`` asks for, most wanted first."""
    if which == "largest":
        return np.sort(eigs)[::-1][:k]
    if which == "smallest":
        return np.sort(eigs)[:k]
    return eigs[np.argsort(-np.abs(eigs), kind="stable")][:k]


def check_pairs(op: DenseOperator, res, eigs: np.ndarray, k: int, which: str, rtol: float):
    """The ``k`` pairs ``which`` asks for, with unit vectors and true reported residuals."""
    ref = truth(eigs, k, which)
    vals = res.values.numpy()
    assert res.values.shape == (k,) and res.vectors.shape == (op.shape[0], k)
    np.testing.assert_allclose(vals, ref, rtol=rtol, atol=0)
    V = res.vectors
    np.testing.assert_allclose(torch.linalg.vector_norm(V, dim=0).numpy(), 1.0, atol=1e-12)
    # The reported residuals are the true ones, ||A v - lambda v||.
    true_res = torch.linalg.vector_norm(op.matrix @ V - V * res.values, dim=0).numpy()
    np.testing.assert_allclose(res.residuals.numpy(), true_res, rtol=1e-3, atol=1e-12)
    assert np.all(true_res <= res.tol * np.maximum(np.abs(vals), 1e-3 * np.abs(eigs).max()) * 1.01)


def repeated_spectrum(mult: int, place: str, which: str, n: int, seed: int) -> tuple[np.ndarray, int]:
    """A spectrum with an eigenvalue of multiplicity ``mult`` at the wanted end and ``k``.

    ``place``: ``"end-fewer"`` (the most wanted value, ``k = mult - 1`` copies wanted, the
    issue's case), ``"end-more"`` (most wanted, ``k = mult + 1``) or ``"middle"`` (behind
    one larger value, ``k = mult + 2``).
    """
    rng = np.random.default_rng(100 + seed)
    bulk = rng.uniform(-1.0, 1.0, n)
    if place == "middle":
        head, k = [12.0] + [8.0] * mult + [6.0, 5.0], mult + 2
    else:
        head = [10.0] * mult + [6.0, 5.0, 4.0]
        k = max(1, mult - 1) if place == "end-fewer" else mult + 1
    head = np.array(head)
    if which == "smallest":
        head = -head
    elif which == "magnitude":
        # Alternate signs between distinct values; the copies share one sign.
        distinct = np.unique(head)[::-1]
        sign = {v: (-1.0) ** i for i, v in enumerate(distinct)}
        head = np.array([sign[v] * v for v in head])
    eigs = np.concatenate([head, bulk[: n - len(head)]])
    return eigs, k


def check_every_copy(op, res, eigs, k, which, rtol):
    """Converged, the right values with every copy, orthonormal vectors, true residuals."""
    ref = truth(eigs, k, which)
    assert res.converged, res.message
    np.testing.assert_allclose(res.values.numpy(), ref, rtol=rtol, atol=0)
    V = res.vectors.double()
    np.testing.assert_allclose((V.T @ V).numpy(), np.eye(k), atol=50 * torch.finfo(res.vectors.dtype).eps)
    A = op.matrix.double()
    true_res = torch.linalg.vector_norm(A @ V - V * res.values, dim=0).numpy()
    # Reported residuals are the true ones, up to the rounding of a product in the
    # operator's dtype (about sqrt(n) eps ||A||, which the check itself also incurs).
    scale = np.abs(eigs).max() * np.sqrt(len(eigs)) * 10 * torch.finfo(res.vectors.dtype).eps
    np.testing.assert_allclose(res.residuals.numpy(), true_res, rtol=1e-2, atol=scale)


def outlier_operator(seed: int = 0) -> DenseOperator:
    """Five large outliers over a PSD bulk: ||H||_F is dominated by the outliers."""
    rng = np.random.default_rng(seed)
    return designed(np.concatenate([[50.0, 30.0, 20.0, 10.0, 5.0], rng.uniform(0, 1, 195)]), seed)


def indefinite_operator(seed: int = 1) -> DenseOperator:
    """Two outliers of either sign over an indefinite bulk."""
    rng = np.random.default_rng(seed)
    return designed(np.concatenate([[8.0, -6.0], rng.normal(0.2, 1.0, 118)]), seed)


def exact_trace(op: DenseOperator) -> float:
    return float(torch.trace(op.matrix))


def small_problem(num_examples: int, hidden: int, seed: int, dtype: torch.dtype = torch.float64):
    """A tanh MLP ``5 -> hidden -> 3`` (weights seeded by ``seed``) with cross-entropy on
    ``num_examples`` random examples (seeded by 0): ``(model, loss_fn, (x, y))``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(num_examples, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (num_examples,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, hidden), nn.Tanh(), nn.Linear(hidden, 3)).to(dtype)
    return model, F.cross_entropy, (x, y)


def trace_problem():
    """The trace tests' Hessian: :func:`small_problem` with 48 examples, 6 hidden, float64."""
    return small_problem(48, 6, seed=1)
