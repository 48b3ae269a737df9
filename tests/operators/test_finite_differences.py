"""Finite-difference Hessian-vector products: accuracy, error estimates, convergence gating.

Truth is always float64 double backward (``method="exact"``) on the same function;
for the GPT-2 the truth model uses eager attention, whose loss is checked to equal
the fused (sdpa) model's.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import curvature as cv
from curvature.errors import DoubleBackwardError
from curvature.results import ConvergenceWarning


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a.double() - b.double()))


def unit(n: int, seed: int) -> torch.Tensor:
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def check_honest(op: cv.HessianOperator, truth: cv.HessianOperator, v: torch.Tensor) -> float:
    """One product along unit ``v`` on a fresh FD operator: the reported error bounds
    the true one and is within 100x of it. Returns the true relative error."""
    assert op.product_error == 0.0
    hv = op @ v.to(op.dtype)
    ref = truth @ v
    true = err(hv, ref)
    assert true <= op.product_error <= 100 * true, (true, op.product_error)
    return true / float(ref.norm())


# ---------------------------------------------------------------- small MLP
def mlp_problem(dtype: torch.dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).to(dtype)
    X = torch.randn(200, 6, dtype=dtype)
    y = torch.randint(0, 3, (200,))
    return model, (X, y)


@pytest.mark.parametrize("method", ["fd", "fd-central"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_products_and_honest_error(method, dtype):
    model, data = mlp_problem(dtype)
    truth = cv.HessianOperator(model, F.cross_entropy, data, dtype=torch.float64)
    top = cv.eigenvalues(truth, k=1, seed=0).vectors[:, 0]
    n = truth.shape[0]
    worst = 0.0
    for v in (unit(n, 1), unit(n, 2), top):
        op = cv.HessianOperator(model, F.cross_entropy, data, method=method)
        worst = max(worst, check_honest(op, truth, v))
    bound = {torch.float64: 1e-6, torch.float32: 1e-2}[dtype]
    assert worst < bound
    # a block of columns with different norms: one product, per-column errors
    V = torch.stack([unit(n, 3), 5 * unit(n, 4), torch.zeros(n, dtype=torch.float64)], 1)
    op = cv.HessianOperator(model, F.cross_entropy, data, method=method)
    out = op @ V.to(dtype)
    ref = truth @ V
    assert torch.all(out[:, 2] == 0)
    for j, scale in ((0, 1.0), (1, 5.0)):
        assert err(out[:, j], ref[:, j]) <= scale * op.product_error


@pytest.mark.parametrize("method", ["fd", "fd-central"])
def test_relu_kinks_are_reported_not_hidden(method):
    """Float32 steps cross ReLU/max-pool kinks (gradient jumps): poor products, and
    an error estimate that still bounds them."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(3 * 4 * 4, 10),
    )
    X = torch.randn(300, 1, 8, 8)
    y = torch.randint(0, 10, (300,))
    truth = cv.HessianOperator(model, F.cross_entropy, (X, y), dtype=torch.float64)
    top = cv.eigenvalues(truth, k=1, seed=0).vectors[:, 0]
    for v in (unit(truth.shape[0], 2), top):
        op = cv.HessianOperator(model, F.cross_entropy, (X, y), method=method)
        check_honest(op, truth, v)


def test_gradient_noise_matches_float32_roundoff():
    """The measured roundoff of a float32 gradient is that of the float64 comparison."""
    model, data = mlp_problem(torch.float32)
    op32 = cv.HessianOperator(model, F.cross_entropy, data, method="fd")
    g64 = cv.HessianOperator(model, F.cross_entropy, data, dtype=torch.float64).gradient()
    actual = err(op32.gradient(), g64)
    sigma = op32.finite_differences.gradient_noise()
    assert actual / 10 < sigma < 10 * actual


def test_explicit_eps_is_used_and_error_still_estimated():
    model, data = mlp_problem(torch.float64)
    truth = cv.HessianOperator(model, F.cross_entropy, data)
    v = unit(truth.shape[0], 1)
    good = cv.HessianOperator(model, F.cross_entropy, data, method="fd-central", eps=1e-3)
    assert err(good @ v, truth @ v) < 1e-8
    # a far too long step: a bad product, and an error estimate that says so
    bad = cv.HessianOperator(model, F.cross_entropy, data, method="fd", eps=3.0)
    true = err(bad @ v, truth @ v)
    assert true > 1e-3 * float((truth @ v).norm())
    assert bad.product_error >= true
    # the step on v: doubling v with eps halved evaluates the same points
    twice = cv.HessianOperator(model, F.cross_entropy, data, method="fd", eps=1.5)
    assert err(twice @ (2 * v) / 2, bad @ v) < 1e-10


def test_exact_operators_report_zero_product_error():
    model, data = mlp_problem(torch.float64)
    n = sum(p.numel() for p in model.parameters())
    V = torch.stack([unit(n, 1), unit(n, 2)], 1)
    for op in (
        cv.HessianOperator(model, F.cross_entropy, data),
        cv.GGNOperator(model, F.cross_entropy, data),
        cv.DenseOperator(torch.eye(V.shape[0], dtype=torch.float64)),
    ):
        op @ V
        assert op.product_error == 0.0
        assert cv.trace(op, num_matvecs=4, seed=0).product_error == 0.0


def test_eigenvalues_refuse_convergence_below_product_error():
    model, data = mlp_problem(torch.float32)
    truth = cv.eigenvalues(
        cv.HessianOperator(model, F.cross_entropy, data, dtype=torch.float64), k=1, seed=0
    )
    lam = float(truth.values[0])
    op = cv.HessianOperator(model, F.cross_entropy, data, method="fd")
    with pytest.warns(ConvergenceWarning, match="finite-difference error"):
        tight = cv.eigenvalues(op, k=1, tol=1e-6, seed=0)
    assert not tight.converged and not bool(tight.converged_mask.any())
    assert tight.product_error == op.product_error > 1e-6 * lam
    assert "finite-difference error limits the accuracy" in tight.message
    # a tolerance the products can meet converges, and the value is right to it
    loose = cv.HessianOperator(model, F.cross_entropy, data, method="fd")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ok = cv.eigenvalues(loose, k=1, tol=1e-2, seed=0)
    assert ok.converged and 0 < ok.product_error <= 1e-2 * abs(float(ok.values[0]))
    assert abs(float(ok.values[0]) - lam) <= 1e-2 * lam
    tr = cv.trace(loose, num_matvecs=8, seed=0)
    assert tr.product_error == loose.product_error


# ---------------------------------------------------------------- small GPT-2
transformers = pytest.importorskip("transformers")


class LogitsOf(nn.Module):
    """A HuggingFace causal LM as ``input_ids -> logits``."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids):
        return self.lm(input_ids=ids).logits


def next_token_loss(logits, ids):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def gpt2(attn: str, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=16,
        bos_token_id=0, eos_token_id=0, attn_implementation=attn,
    )
    return LogitsOf(transformers.GPT2LMHeadModel(cfg).to(dtype))


@pytest.fixture(scope="module")
def gpt2_case():
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    data = (ids, ids)
    fused32 = gpt2("sdpa", torch.float32)
    truth = cv.HessianOperator(gpt2("eager", torch.float64), next_token_loss, data)
    fused64 = cv.HessianOperator(gpt2("sdpa", torch.float64), next_token_loss, data, method="fd")
    assert abs(truth.loss() - fused64.loss()) < 1e-12  # the truth is the same function
    with pytest.raises(DoubleBackwardError, match="gradients"):
        cv.HessianOperator(fused32, next_token_loss, data).matvec(torch.ones(truth.shape[0]))
    top = cv.eigenvalues(truth, k=1, seed=0)
    return fused32, data, truth, top


@pytest.mark.parametrize("method", ["fd", "fd-central"])
def test_gpt2_float32_products_are_honest(gpt2_case, method):
    """Along the top eigenvector the old default step gave 80% error (fd-central)."""
    fused32, data, truth, top = gpt2_case
    for v in (unit(truth.shape[0], 1), top.vectors[:, 0]):
        op = cv.HessianOperator(fused32, next_token_loss, data, method=method)
        assert check_honest(op, truth, v) < 3e-3


@pytest.mark.parametrize("method", ["fd", "fd-central"])
def test_gpt2_float32_lambda_max_within_one_percent(gpt2_case, method):
    fused32, data, truth, top = gpt2_case
    lam = float(top.values[0])
    op = cv.HessianOperator(fused32, next_token_loss, data, method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r = cv.eigenvalues(op, k=1, seed=0)
    assert abs(float(r.values[0]) - lam) < 1e-2 * lam
    # converged only where the products allow the tolerance
    limit = r.tol * abs(float(r.values[0]))
    assert r.converged == (bool(r.converged_mask.all()) and r.product_error <= limit)


def test_columns_in_groups_under_a_memory_bound():
    model, data = mlp_problem(torch.float64)
    truth = cv.HessianOperator(model, F.cross_entropy, data)
    n = truth.shape[0]
    V = torch.stack([unit(n, 5), torch.zeros(n, dtype=torch.float64), 3 * unit(n, 6)], 1)
    op = cv.HessianOperator(model, F.cross_entropy, data, method="fd-central")
    hv, e = op.finite_differences.products(V, None, central=True, max_bytes=1)  # 1 column a pass
    ref = truth @ V
    assert e[1] == 0 and torch.all(hv[:, 1] == 0)
    for j in (0, 2):
        assert err(hv[:, j], ref[:, j]) <= float(e[j]) * float(V[:, j].norm()) < 1e-6


def test_fd_residuals_bound_the_true_residuals():
    """With finite-difference products the reported residual is the measured one plus
    ``product_error``: it bounds ``||H v - lambda v||`` computed with exact products."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    exact = cv.HessianOperator(model, F.cross_entropy, (x, y), dtype=torch.float64)
    for method in ("fd", "fd-central"):
        op = cv.HessianOperator(model, F.cross_entropy, (x, y), method=method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cv.ConvergenceWarning)
            res = cv.eigenvalues(op, k=2, tol=1e-2, seed=0)
        V = res.vectors.double()
        true = torch.linalg.vector_norm(exact @ V - V * res.values, dim=0)
        assert res.product_error > 0
        assert torch.all(true <= res.residuals), (method, true, res.residuals)
        assert torch.all(res.residuals >= res.product_error)
