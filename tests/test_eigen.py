"""Lanczos and power iteration against numpy.linalg.eigh on designed spectra and dense Hessians."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvature.eigen import eigenvalues
from curvature.operators import CurvatureOperator, DenseOperator, HessianOperator
from curvature.operators.dense import dense_hessian
from curvature.results import ConvergenceWarning

METHODS = ["lanczos", "power"]


def designed(eigs, seed: int = 0) -> tuple[DenseOperator, np.ndarray]:
    """``Q diag(eigs) Q^T`` with a random orthogonal ``Q`` (float64)."""
    eigs = np.asarray(eigs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    A = (Q * eigs) @ Q.T
    return DenseOperator(torch.tensor(0.5 * (A + A.T))), eigs


def outlier_spectrum(n: int = 300, seed: int = 0) -> np.ndarray:
    """A bulk near zero (some negative) plus a few large outliers, as network Hessians have."""
    rng = np.random.default_rng(seed)
    return np.concatenate([[50.0, 30.0, 20.0, 10.0, 5.0], rng.uniform(-0.1, 1.0, n - 5)])


def truth(eigs: np.ndarray, k: int, which: str) -> np.ndarray:
    if which == "largest":
        return np.sort(eigs)[::-1][:k]
    if which == "smallest":
        return np.sort(eigs)[:k]
    return eigs[np.argsort(-np.abs(eigs), kind="stable")][:k]


def check_pairs(op: DenseOperator, res, eigs: np.ndarray, k: int, which: str, rtol: float):
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


@pytest.mark.parametrize("method", METHODS)
def test_top5_outlier_spectrum(method):
    op, eigs = designed(outlier_spectrum())
    res = eigenvalues(op, 5, method=method, seed=0)
    assert res.converged and bool(res.converged_mask.all())
    check_pairs(op, res, eigs, 5, "largest", rtol=1e-6)
    assert res.num_matvecs == op.num_matvecs


@pytest.mark.parametrize("method", METHODS)
def test_largest_is_algebraic_when_negative_eigenvalue_dominates(method):
    rng = np.random.default_rng(1)
    eigs = np.concatenate([[-10.0, 3.0, 2.5], rng.uniform(-1.0, 2.0, 197)])
    op, eigs = designed(eigs, seed=1)
    top = eigenvalues(op, 2, which="largest", method=method, seed=0, max_matvecs=4000)
    assert top.converged
    check_pairs(op, top, eigs, 2, "largest", rtol=1e-6)  # 3.0, 2.5 -- never -10
    low = eigenvalues(op, 1, which="smallest", method=method, seed=0)
    assert low.converged
    check_pairs(op, low, eigs, 1, "smallest", rtol=1e-6)
    mag = eigenvalues(op, 2, which="magnitude", method=method, seed=0, max_matvecs=4000)
    assert mag.converged
    check_pairs(op, mag, eigs, 2, "magnitude", rtol=1e-6)  # -10, 3.0


def test_smallest_finds_negative_curvature_lanczos():
    op, eigs = designed(outlier_spectrum())
    res = eigenvalues(op, 3, which="smallest", seed=0, max_matvecs=3000)
    assert res.converged
    assert res.values[0] < 0
    # Closely spaced bulk eigenvalues: the bound |error| <= residual is what holds.
    ref = truth(eigs, 3, "smallest")
    assert np.all(np.abs(res.values.numpy() - ref) <= res.residuals.numpy() + 1e-12)


def test_clustered_eigenvalues_resolved():
    rng = np.random.default_rng(2)
    eigs = np.concatenate([10.0 - 1e-3 * np.arange(5), rng.uniform(0.0, 9.0, 195)])
    op, eigs = designed(eigs, seed=2)
    res = eigenvalues(op, 5, tol=1e-8, seed=0)
    assert res.converged
    check_pairs(op, res, eigs, 5, "largest", rtol=1e-9)


def plain_lanczos_ritz(A: np.ndarray, steps: int, seed: int = 0) -> np.ndarray:
    """Textbook three-term Lanczos *without* reorthogonalisation (ghosts appear)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(A.shape[0])
    q /= np.linalg.norm(q)
    q_prev, beta, alphas, betas = np.zeros_like(q), 0.0, [], []
    for _ in range(steps):
        w = A @ q - beta * q_prev
        alpha = q @ w
        w -= alpha * q
        beta = np.linalg.norm(w)
        alphas.append(alpha)
        betas.append(beta)
        q_prev, q = q, w / beta
    T = np.diag(alphas) + np.diag(betas[:-1], 1) + np.diag(betas[:-1], -1)
    return np.linalg.eigvalsh(T)


def test_no_ghost_eigenvalues():
    # Two dominant outliers and a bulk: the plain recurrence duplicates the converged
    # outliers after enough steps (checked below, so this test has teeth).
    rng = np.random.default_rng(3)
    eigs = np.concatenate([[100.0, 90.0], rng.uniform(0.0, 1.0, 198)])
    op, eigs = designed(eigs, seed=3)
    # Our Lanczos runs long (a large basis and a tight tol on the dense bulk end).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = eigenvalues(op, 6, tol=1e-12, basis_size=150, max_matvecs=140, seed=0)
    steps = res.num_matvecs
    assert steps >= 100
    ghosts = plain_lanczos_ritz(op.matrix.numpy(), steps)
    assert np.sum(np.abs(ghosts - 100.0) < 1e-6) >= 2  # copies without reorthogonalisation
    vals = res.values.numpy()
    ref = truth(eigs, 6, "largest")
    # No copies: exactly one value at 100 and at 90, and the rest are the bulk's top ones.
    assert np.sum(np.abs(vals - 100.0) < 1e-6) == 1
    assert np.sum(np.abs(vals - 90.0) < 1e-6) == 1
    np.testing.assert_allclose(vals[:2], ref[:2], rtol=1e-12)
    # Whatever is flagged converged is a true eigenvalue, and the flags match true residuals.
    V = res.vectors
    true_res = torch.linalg.vector_norm(op.matrix @ V - V * res.values, dim=0).numpy()
    np.testing.assert_allclose(res.residuals.numpy(), true_res, rtol=1e-2, atol=1e-13)
    gram = (V.T @ V).numpy()
    np.testing.assert_allclose(gram, np.eye(6), atol=1e-10)  # distinct, orthonormal vectors
    for v, r, ok in zip(vals, res.residuals.numpy(), res.converged_mask.numpy()):
        if ok:
            assert np.min(np.abs(eigs - v)) <= r + 1e-12


def test_thick_restart_small_basis():
    op, eigs = designed(outlier_spectrum(seed=4), seed=4)
    res = eigenvalues(op, 5, basis_size=8, seed=0, tol=1e-6)
    assert res.converged and "restart" in res.message
    check_pairs(op, res, eigs, 5, "largest", rtol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_low_rank_invariant_subspace(method):
    # Rank 2: the Krylov space of the start vector is invariant after 2 steps; the
    # remaining wanted values are the zeros found by restarting with new vectors.
    n = 60
    eigs = np.zeros(n)
    eigs[:2] = [4.0, -2.0]
    op, eigs = designed(eigs, seed=5)
    res = eigenvalues(op, 4, method=method, seed=0)
    assert res.converged
    np.testing.assert_allclose(res.values.numpy(), [4.0, 0.0, 0.0, 0.0], atol=1e-10)
    np.testing.assert_allclose((res.vectors.T @ res.vectors).numpy(), np.eye(4), atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_double_eigenvalue_both_copies(method):
    rng = np.random.default_rng(11)
    op, eigs = designed(np.concatenate([[5.0, 5.0, 3.0], rng.uniform(0.0, 1.0, 197)]), seed=11)
    res = eigenvalues(op, 3, method=method, seed=0)
    assert res.converged
    check_pairs(op, res, eigs, 3, "largest", rtol=1e-6)
    np.testing.assert_allclose((res.vectors.T @ res.vectors).numpy(), np.eye(3), atol=1e-8)


def test_full_space_exact():
    op, eigs = designed(np.linspace(-1.0, 1.0, 12), seed=6)
    res = eigenvalues(op, 12, seed=0)
    assert res.converged
    np.testing.assert_allclose(res.values.numpy(), np.sort(eigs)[::-1], atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_budget_exhausted_is_reported(method):
    rng = np.random.default_rng(7)
    op, _ = designed(np.concatenate([[1.0, 0.999], rng.uniform(0, 0.99, 198)]), seed=7)
    with pytest.warns(ConvergenceWarning, match="max_matvecs"):
        res = eigenvalues(op, 1, method=method, tol=1e-10, max_matvecs=6, seed=0)
    assert not res.converged and not bool(res.converged_mask.any())
    assert "max_matvecs = 6" in res.message
    assert res.num_matvecs <= 6
    assert np.isfinite(res.values.numpy()).all()


@pytest.mark.parametrize("method", METHODS)
def test_reproducible_from_seed(method):
    op, _ = designed(outlier_spectrum(n=100), seed=8)
    a = eigenvalues(op, 2, method=method, seed=11)
    b = eigenvalues(op, 2, method=method, seed=11)
    assert torch.equal(a.values, b.values) and torch.equal(a.vectors, b.vectors)
    assert a.num_matvecs == b.num_matvecs


def test_float32_operator():
    op64, eigs = designed(outlier_spectrum(n=200, seed=9), seed=9)
    op = DenseOperator(op64.matrix.float())
    res = eigenvalues(op, 3, seed=0)
    assert res.converged and res.vectors.dtype == torch.float32
    np.testing.assert_allclose(res.values.numpy(), truth(eigs, 3, "largest"), rtol=1e-5)


# ------------------------------------------------------------------ dense Hessians
def small_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    return model, F.cross_entropy, (x, y)


@pytest.mark.parametrize("method", METHODS)
def test_hessian_of_small_model(method):
    model, loss_fn, data = small_problem()
    H = dense_hessian(model, loss_fn, data).numpy()
    eigs = np.linalg.eigvalsh(H)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    op = HessianOperator(model, loss_fn, data, dtype=torch.float64)
    res = eigenvalues(op, 5, method=method, seed=0, max_matvecs=5000)
    assert model.training  # the model is left as it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res.converged
    np.testing.assert_allclose(res.values.numpy(), eigs[::-1][:5], rtol=1e-6)
    Ht = torch.tensor(H)
    true_res = torch.linalg.vector_norm(Ht @ res.vectors - res.vectors * res.values, dim=0)
    np.testing.assert_allclose(res.residuals.numpy(), true_res.numpy(), rtol=1e-3, atol=1e-12)
    if method == "lanczos":
        assert eigs[0] < 0  # the model has negative curvature; "smallest" finds it
        low = eigenvalues(op, 1, which="smallest", seed=0, tol=1e-6)
        assert low.converged
        np.testing.assert_allclose(low.values.numpy(), eigs[:1], rtol=1e-6)


def test_lanczos_needs_a_third_of_power_hvps_on_digits_mlp():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    data = (torch.tensor(X[:200]), torch.tensor(y[:200]))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(data[0]), data[1]).backward()
        opt.step()
    top3 = np.linalg.eigvalsh(dense_hessian(model, F.cross_entropy, data).numpy())[::-1][:3]
    op = HessianOperator(model, F.cross_entropy, data)
    count = {}
    for method in METHODS:
        res = eigenvalues(op, 3, method=method, seed=0, tol=1e-6, max_matvecs=3000)
        assert res.converged
        np.testing.assert_allclose(res.values.numpy(), top3, rtol=1e-6)
        count[method] = res.num_matvecs
    print(f"HVPs for the top 3 at tol 1e-6 (610 parameters): {count}")
    assert 3 * count["lanczos"] <= count["power"]


# ------------------------------------------------------------------ bad input
class NaNAfter(CurvatureOperator):
    def __init__(self, A: torch.Tensor, after: int) -> None:
        super().__init__(A.shape[0], A.device, A.dtype)
        self.A, self.after = A, after

    def _matmat(self, V):
        out = self.A @ V
        if self.num_matvecs >= self.after:
            out[0] = float("nan")
        return out


@pytest.mark.parametrize("method,name", [("lanczos", "Lanczos iteration 4"), ("power", "power iteration 4")])
def test_non_finite_product_names_iteration(method, name):
    op, _ = designed(outlier_spectrum(n=50), seed=10)
    bad = NaNAfter(op.matrix, after=3)
    with pytest.raises(FloatingPointError, match=name):
        eigenvalues(bad, 1, method=method, seed=0)


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"k": 0}, ValueError, "1 <= k <= n"),
        ({"k": 31}, ValueError, "1 <= k <= n"),
        ({"k": 1.5}, TypeError, "k must be an int"),
        ({"which": "top"}, ValueError, "which must be one of"),
        ({"method": "arnoldi"}, ValueError, "method must be one of"),
        ({"tol": 0.0}, ValueError, "tol must be"),
        ({"tol": float("nan")}, ValueError, "tol must be"),
        ({"max_matvecs": 0}, ValueError, "max_matvecs"),
        ({"k": 3, "basis_size": 3}, ValueError, "basis_size"),
        ({"method": "power", "basis_size": 10}, ValueError, "basis_size"),
        ({"seed": "x"}, TypeError, "seed"),
    ],
)
def test_bad_input(kwargs, err, match):
    op, _ = designed(np.linspace(0, 1, 30))
    with pytest.raises(err, match=match):
        eigenvalues(op, **kwargs)


def test_not_an_operator():
    with pytest.raises(TypeError, match="CurvatureOperator"):
        eigenvalues(torch.eye(3))


def test_progress_bar_can_be_shown(capsys):
    op, _ = designed(outlier_spectrum(n=60), seed=12)
    for method in METHODS:
        res = eigenvalues(op, 1, method=method, seed=0, progress=True)
        assert res.converged
    assert "lanczos" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_runs_on_cuda(method):
    op, eigs = designed(outlier_spectrum(n=200), seed=13)
    op = DenseOperator(op.matrix.cuda())
    res = eigenvalues(op, 3, method=method, seed=0)
    assert res.converged and res.vectors.device.type == "cuda"
    np.testing.assert_allclose(res.values.numpy(), truth(eigs, 3, "largest"), rtol=1e-6)
