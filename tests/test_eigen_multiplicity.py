"""Repeated eigenvalues (issue 12): every copy comes back, or ``converged`` is False.

Designed spectra ``Q diag(lambda) Q^T`` with multiplicities 2, 4 and 8 at the wanted end
and inside the wanted set, for every ``which``, in float64 and float32, and Hessians of
weight-shared and weight-tied models, all against ``numpy.linalg.eigh``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvature._random import gaussian, make_generator
from curvature.dense import dense_hessian
from curvature.eigen import eigenvalues
from curvature.operators import DenseOperator, HessianOperator
from curvature.results import ConvergenceWarning

WHICH = ["largest", "smallest", "magnitude"]


def operator(eigs: np.ndarray, seed: int, dtype=torch.float64, Q: np.ndarray | None = None):
    if Q is None:
        rng = np.random.default_rng(seed)
        Q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    A = (Q * eigs) @ Q.T
    return DenseOperator(torch.tensor(0.5 * (A + A.T), dtype=dtype))


def truth(eigs: np.ndarray, k: int, which: str) -> np.ndarray:
    if which == "largest":
        return np.sort(eigs)[::-1][:k]
    if which == "smallest":
        return np.sort(eigs)[:k]
    return eigs[np.argsort(-np.abs(eigs), kind="stable")][:k]


def spectrum(mult: int, place: str, which: str, n: int, seed: int) -> tuple[np.ndarray, int]:
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


def check(op, res, eigs, k, which, rtol):
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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("place", ["end-fewer", "end-more", "middle"])
@pytest.mark.parametrize("mult", [2, 4, 8])
@pytest.mark.parametrize("which", WHICH)
def test_designed_multiplicities(which, mult, place, dtype):
    for seed in (0, 1):
        eigs, k = spectrum(mult, place, which, 150, seed)
        op = operator(eigs, seed, dtype)
        res = eigenvalues(op, k, which=which, seed=seed)
        rtol = 1e-7 if dtype == torch.float64 else 1e-4
        check(op, res, eigs, k, which, rtol)


@pytest.mark.parametrize("which", WHICH)
def test_power_returns_every_copy(which):
    eigs, k = spectrum(4, "end-more", which, 100, 0)
    op = operator(eigs, 0)
    res = eigenvalues(op, k, which=which, method="power", seed=0, tol=1e-8, max_matvecs=4000)
    check(op, res, eigs, k, which, rtol=1e-7)


# ------------------------------------------------------------------ weight sharing
class SplitConcat(nn.Module):
    """The issue's model: ``x`` split in two halves, one Linear on each, outputs concatenated.

    With MSE on one example the Hessian is ``I_4 (x) G``: every nonzero eigenvalue has
    multiplicity 4 (one copy per output row of the shared weight).
    """

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return torch.cat([self.shared(a), self.shared(b)], -1)


class SharedMLP(nn.Module):
    """Two halves through one shared Linear+tanh, then one shared head per half."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(5, 4)
        self.l2 = nn.Linear(4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return torch.cat([self.l2(torch.tanh(self.l1(a))), self.l2(torch.tanh(self.l1(b)))], -1)


class TiedLM(nn.Module):
    """Token embedding tied to the output layer (logits = h E^T)."""

    def __init__(self, vocab: int = 7, dim: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mix(self.emb(tokens))) @ self.emb.weight.T


def model_case(name: str):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if name == "split-concat":
        model, loss = SplitConcat().double(), F.mse_loss
        data = (torch.randn(1, 10, generator=g, dtype=torch.float64),
                torch.randn(1, 8, generator=g, dtype=torch.float64))
    elif name == "shared-mlp":
        model, loss = SharedMLP().double(), F.mse_loss
        data = (torch.randn(6, 10, generator=g, dtype=torch.float64),
                torch.randn(6, 6, generator=g, dtype=torch.float64))
    else:
        model, loss = TiedLM().double(), F.cross_entropy
        data = (torch.randint(0, 7, (12,), generator=g), torch.randint(0, 7, (12,), generator=g))
    return model, loss, data


def test_issue_case_k3_on_multiplicity_4():
    model, loss, data = model_case("split-concat")
    eigs = np.linalg.eigvalsh(dense_hessian(model, loss, data).numpy())
    top = eigs[::-1]
    # The designed structure: a top eigenvalue of multiplicity exactly 4.
    assert np.allclose(top[:4], top[0], rtol=1e-10) and top[4] < 0.9 * top[0]
    op = HessianOperator(model, loss, data, dtype=torch.float64)
    for seed in range(3):
        for tol in (1e-4, 1e-8):
            res = eigenvalues(op, 3, seed=seed, tol=tol)
            assert res.converged, res.message
            np.testing.assert_allclose(res.values.numpy(), [top[0]] * 3, rtol=1e-10)
    for method in ("lanczos", "power"):
        res = eigenvalues(op, 6, method=method, seed=0, tol=1e-8, max_matvecs=3000)
        assert res.converged, res.message
        np.testing.assert_allclose(res.values.numpy(), top[:6], rtol=1e-8)


@pytest.mark.parametrize("name", ["split-concat", "shared-mlp", "tied-lm"])
@pytest.mark.parametrize("which", WHICH)
def test_weight_shared_models_against_eigh(name, which):
    model, loss, data = model_case(name)
    eigs = np.linalg.eigvalsh(dense_hessian(model, loss, data).numpy())
    op = HessianOperator(model, loss, data, dtype=torch.float64)
    k = 5
    res = eigenvalues(op, k, which=which, seed=0, tol=1e-8, max_matvecs=3000)
    assert res.converged, res.message
    ref = truth(eigs, k, which)
    # Tiny eigenvalues are resolved to tol * 1e-3 * ||H|| (the relative floor).
    np.testing.assert_allclose(res.values.numpy(), ref, rtol=1e-6, atol=1e-9 * np.abs(eigs).max())


# ------------------------------------------------------------------ refusing wrong answers
def start_block(n: int, seed: int, b: int) -> np.ndarray:
    """The Gaussian start block ``eigenvalues(..., seed=seed)`` draws first (b columns)."""
    gen = make_generator(seed, torch.device("cpu"))
    return gaussian(n, b, gen, torch.float64, torch.device("cpu")).numpy()


def basis_first_orthogonal_to(X: np.ndarray, rng) -> np.ndarray:
    """A random orthonormal basis of R^n whose first column is orthogonal to ``range(X)``."""
    n = X.shape[0]
    Qx, _ = np.linalg.qr(X)
    u = rng.standard_normal(n)
    u -= Qx @ (Qx.T @ u)
    u /= np.linalg.norm(u)
    R = rng.standard_normal((n, n - 1))
    R -= np.outer(u, u @ R)
    R, _ = np.linalg.qr(R)
    return np.concatenate([u[:, None], R], axis=1)


def test_top_eigenvector_orthogonal_to_first_start_vector():
    # A single-vector Krylov space from the first start vector never sees the top
    # eigenvector; the block (two columns for k = 2) does.
    n, rng = 120, np.random.default_rng(0)
    q1 = start_block(n, 0, 2)[:, :1]
    Q = basis_first_orthogonal_to(q1, rng)
    eigs = np.concatenate([[7.0, 3.0, 2.5], rng.uniform(-1.0, 1.0, n - 3)])
    op = operator(eigs, 0, Q=Q)
    A = op.matrix.numpy()
    u = Q[:, 0]
    K = np.empty((n, 30))  # single-vector Krylov space of q1 in exact arithmetic (u^T K = 0)
    K[:, 0] = q1[:, 0] / np.linalg.norm(q1)
    for j in range(1, 30):
        w = A @ K[:, j - 1]
        w -= u * (u @ w)  # what exact arithmetic gives; rounding would leave ~1e-16
        for _ in range(2):
            w -= K[:, :j] @ (K[:, :j].T @ w)
        K[:, j] = w / np.linalg.norm(w)
    ritz = np.linalg.eigvalsh(K.T @ A @ K)
    assert abs(ritz.max() - 3.0) < 1e-8  # converges to 3 and misses 7
    res = eigenvalues(op, 2, seed=0)
    assert res.converged, res.message
    np.testing.assert_allclose(res.values.numpy(), [7.0, 3.0], rtol=1e-8)


@pytest.mark.parametrize("k", [1, 2])
def test_invariant_subspace_missing_the_top_is_not_converged(k):
    # Low rank: the top eigenvector u is orthogonal to the whole start block and to the
    # rest of the range, so K(H, X) is invariant after two steps and never contains u.
    # Stopping there would report [3, 2] as converged (exact residuals); fresh vectors
    # after the invariance must find 5.
    n, rng = 80, np.random.default_rng(1)
    X = start_block(n, 0, max(1, min(k, 2)))
    Q = basis_first_orthogonal_to(X, rng)
    eigs = np.zeros(n)
    eigs[:4] = [5.0, 3.0, 2.0, -1.0]  # u = column 0 of Q is orthogonal to X
    op = operator(eigs, 0, Q=Q)
    res = eigenvalues(op, k, seed=0)
    assert res.converged, res.message
    np.testing.assert_allclose(res.values.numpy(), [5.0, 3.0][:k], rtol=1e-10)
    assert "invariant" in res.message


def test_block_too_small_to_certify_copies_is_refused():
    # Multiplicity 4 inside the wanted set, but a basis too small for a block of more than
    # two columns: two copies are found and the answer is refused, not claimed.
    eigs, k = spectrum(4, "end-more", "largest", 100, 0)
    op = operator(eigs, 0)
    with pytest.warns(ConvergenceWarning, match="further copies"):
        res = eigenvalues(op, k, seed=0, basis_size=k + 2)
    assert not res.converged
    assert "basis_size" in res.message
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ok = eigenvalues(op, k, seed=0)  # the default basis leaves room: all copies found
    check(op, ok, eigs, k, "largest", rtol=1e-7)


def test_rank_deficient_zero_block_converges_exactly():
    # Rank 3 with a multiple top: k = 6 asks for 2 copies of 4, then 1, then zeros
    # (the null space is reached from fresh vectors after the range is exhausted).
    n = 50
    eigs = np.zeros(n)
    eigs[:3] = [4.0, 4.0, 1.0]
    op = operator(eigs, 3)
    res = eigenvalues(op, 6, seed=0)
    assert res.converged, res.message
    np.testing.assert_allclose(res.values.numpy(), [4.0, 4.0, 1.0, 0.0, 0.0, 0.0], atol=1e-10)
