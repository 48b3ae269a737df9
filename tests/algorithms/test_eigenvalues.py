"""The front door ``eigenvalues`` with both methods (Lanczos, power iteration) against
numpy.linalg.eigh on designed spectra and dense Hessians; its argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvature.estimators import eigenvalues
from curvature.operators import CurvatureOperator, DenseOperator, HessianOperator, dense_hessian
from curvature.results import ConvergenceWarning

from .conftest import check_pairs, designed_with_spectrum, outlier_spectrum, small_problem, truth

METHODS = ["lanczos", "power"]


@pytest.mark.parametrize("method", METHODS)
def test_top5_outlier_spectrum(method):
    op, eigs = designed_with_spectrum(outlier_spectrum())
    res = eigenvalues(op, 5, method=method, seed=0)
    assert res.converged and bool(res.converged_mask.all())
    check_pairs(op, res, eigs, 5, "largest", rtol=1e-6)
    assert res.num_matvecs == op.num_matvecs


@pytest.mark.parametrize("method", METHODS)
def test_largest_is_algebraic_when_negative_eigenvalue_dominates(method):
    rng = np.random.default_rng(1)
    eigs = np.concatenate([[-10.0, 3.0, 2.5], rng.uniform(-1.0, 2.0, 197)])
    op, eigs = designed_with_spectrum(eigs, seed=1)
    top = eigenvalues(op, 2, which="largest", method=method, seed=0, max_matvecs=4000)
    assert top.converged
    check_pairs(op, top, eigs, 2, "largest", rtol=1e-6)  # 3.0, 2.5 -- never -10
    low = eigenvalues(op, 1, which="smallest", method=method, seed=0)
    assert low.converged
    check_pairs(op, low, eigs, 1, "smallest", rtol=1e-6)
    mag = eigenvalues(op, 2, which="magnitude", method=method, seed=0, max_matvecs=4000)
    assert mag.converged
    check_pairs(op, mag, eigs, 2, "magnitude", rtol=1e-6)  # -10, 3.0


@pytest.mark.parametrize("method", METHODS)
def test_low_rank_invariant_subspace(method):
    # Rank 2: the Krylov space of the start vector is invariant after 2 steps; the
    # remaining wanted values are the zeros found by restarting with new vectors.
    n = 60
    eigs = np.zeros(n)
    eigs[:2] = [4.0, -2.0]
    op, eigs = designed_with_spectrum(eigs, seed=5)
    res = eigenvalues(op, 4, method=method, seed=0)
    assert res.converged
    np.testing.assert_allclose(res.values.numpy(), [4.0, 0.0, 0.0, 0.0], atol=1e-10)
    np.testing.assert_allclose((res.vectors.T @ res.vectors).numpy(), np.eye(4), atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_double_eigenvalue_both_copies(method):
    rng = np.random.default_rng(11)
    op, eigs = designed_with_spectrum(np.concatenate([[5.0, 5.0, 3.0], rng.uniform(0.0, 1.0, 197)]), seed=11)
    res = eigenvalues(op, 3, method=method, seed=0)
    assert res.converged
    check_pairs(op, res, eigs, 3, "largest", rtol=1e-6)
    np.testing.assert_allclose((res.vectors.T @ res.vectors).numpy(), np.eye(3), atol=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_budget_exhausted_is_reported(method):
    rng = np.random.default_rng(7)
    op, _ = designed_with_spectrum(np.concatenate([[1.0, 0.999], rng.uniform(0, 0.99, 198)]), seed=7)
    with pytest.warns(ConvergenceWarning, match="max_matvecs"):
        res = eigenvalues(op, 1, method=method, tol=1e-10, max_matvecs=6, seed=0)
    assert not res.converged and not bool(res.converged_mask.any())
    assert "max_matvecs = 6" in res.message
    assert res.num_matvecs <= 6
    assert np.isfinite(res.values.numpy()).all()


@pytest.mark.parametrize("method", METHODS)
def test_reproducible_from_seed(method):
    op, _ = designed_with_spectrum(outlier_spectrum(n=100), seed=8)
    a = eigenvalues(op, 2, method=method, seed=11)
    b = eigenvalues(op, 2, method=method, seed=11)
    assert torch.equal(a.values, b.values) and torch.equal(a.vectors, b.vectors)
    assert a.num_matvecs == b.num_matvecs


# ------------------------------------------------------------------ dense Hessians
@pytest.mark.parametrize("method", METHODS)
def test_hessian_of_small_model(method):
    model, loss_fn, data = small_problem(64, 8, seed=0)
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
    op, _ = designed_with_spectrum(outlier_spectrum(n=50), seed=10)
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
    op, _ = designed_with_spectrum(np.linspace(0, 1, 30))
    with pytest.raises(err, match=match):
        eigenvalues(op, **kwargs)


def test_not_an_operator():
    with pytest.raises(TypeError, match="CurvatureOperator"):
        eigenvalues(torch.eye(3))


def test_progress_bar_can_be_shown(capsys):
    op, _ = designed_with_spectrum(outlier_spectrum(n=60), seed=12)
    for method in METHODS:
        res = eigenvalues(op, 1, method=method, seed=0, progress=True)
        assert res.converged
    assert "lanczos" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_runs_on_cuda(method):
    op, eigs = designed_with_spectrum(outlier_spectrum(n=200), seed=13)
    op = DenseOperator(op.matrix.cuda())
    res = eigenvalues(op, 3, method=method, seed=0)
    assert res.converged and res.vectors.device.type == "cuda"
    np.testing.assert_allclose(res.values.numpy(), truth(eigs, 3, "largest"), rtol=1e-6)
