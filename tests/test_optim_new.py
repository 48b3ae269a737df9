"""Issue 14's new methods on quadratics against hand-written float64 formulas: SAM's
p-norm ascent, SGDHess (Tran & Cutkosky), DiagHessianSGD, Saddam and LeCun's
calibrate_learning_rate (plus its check against the engine's Lanczos lambda_max)."""

from __future__ import annotations

import math

import numpy as np
import optim_quadratic
import pytest
import torch
from torch import nn

import curvature as cv
import curvature.optim as co
from curvature.optim._common import rademacher_like, step_generator

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True"),
]

SHAPES = [(2, 3), (), (2, 2)]  # n = 11, two parameter groups
N = 11
STEPS = 6




def quadratic(seed: int, *, diagonal: bool = False):
    return optim_quadratic.make_quadratic(N, seed, diagonal=diagonal)


class Quadratic(optim_quadratic.QuadraticProblem):
    """0.5 (w - c)^T A (w - c) on parameters of SHAPES, in two groups."""

    def __init__(self, a, c, w0, *, graph: bool = False):
        super().__init__(a, c, w0, SHAPES, graph=graph)

    def run(self, opt, steps: int = STEPS):
        return super().run(opt, steps)


def close(actual, expected, tol=1e-11):
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


# ------------------------------------------------------------------ SAM p-norm ascent
def dual(x: np.ndarray, p: float) -> np.ndarray:
    """argmax_{||e||_p <= 1} e . x, by Hoelder: sign(x)|x|^(q-1)/||x||_q^(q-1)."""
    if math.isinf(p):
        return np.sign(x)
    q = p / (p - 1)
    return np.sign(x) * np.abs(x) ** (q - 1) / np.linalg.norm(x, q) ** (q - 1)


@pytest.mark.parametrize("p,adaptive", [(float("inf"), False), (3.0, False), (1.5, True),
                                        (2.0, True)])
def test_sam_p_norm_trajectory(p, adaptive):
    a, c, w0 = quadratic(1)
    rho, lr, mom, eta = 0.05, 0.1, 0.9, 0.01
    pb = Quadratic(a, c, w0)
    opt = co.SAM(pb.groups, torch.optim.SGD, rho=rho, p=p, adaptive=adaptive, lr=lr, momentum=mom)
    ws, ests = pb.run(opt)
    w, buf = w0.copy(), None
    for t in range(STEPS):
        g = a @ (w - c)
        tw = np.abs(w) + eta if adaptive else np.ones(N)
        e = rho * tw * dual(tw * g, p)
        assert np.linalg.norm(e / tw, p) == pytest.approx(rho, rel=1e-12)  # on the p-sphere
        g_adv = a @ (w + e - c)
        buf = g_adv if buf is None else mom * buf + g_adv
        w = w - lr * buf
        close(ws[t], w)
        u = e / np.linalg.norm(e)
        close(ests[t]["hvp_direction"], u)
        close(ests[t]["hvp"], a @ u)  # exact on a quadratic, for any ascent direction
        close(ests[t]["lambda_max"], np.linalg.norm(a @ u))


def test_sam_sign_ascent_is_rho_sign_g():
    """p = inf moves every coordinate by exactly +-rho (Foret et al.'s dual-norm solution)."""
    w = nn.Parameter(torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64))
    opt = co.SAM([w], torch.optim.SGD, rho=0.1, p=float("inf"), lr=0.0 + 1e-12)
    seen = []

    def closure():
        opt.zero_grad()
        seen.append(w.detach().clone())
        loss = (w**2 * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum()
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(seen[1] - seen[0], 0.1 * torch.sign(seen[0]), rtol=0, atol=1e-15)


# ------------------------------------------------------------------------- SGDHess
@pytest.mark.parametrize("momentum,wd,clip", [(0.9, 0.0, None), (0.7, 0.02, None),
                                              (0.9, 0.01, 0.5)])
def test_sgdhess_trajectory(momentum, wd, clip):
    a, c, w0 = quadratic(2)
    lr = 0.1
    pb = Quadratic(a, c, w0, graph=True)
    opt = co.SGDHess(pb.groups, lr=lr, momentum=momentum, weight_decay=wd, clip=clip)
    ws, ests = pb.run(opt)
    w, w_prev, m = w0.copy(), None, None
    for t in range(STEPS):
        g = a @ (w - c) + wd * w
        if m is None:
            m = g
            assert ests[t] == {}
        else:
            d = w - w_prev
            m = momentum * (m + a @ d + wd * d) + (1 - momentum) * g
            close(ests[t]["hvp_direction"], d / np.linalg.norm(d))
            close(ests[t]["hvp"], a @ d / np.linalg.norm(d))
        if clip is not None:
            m = m * min(1.0, clip / np.linalg.norm(m))
        w_prev, w = w, w - lr * m
        close(ws[t], w)


def test_sgdhess_full_batch_quadratic_momentum_is_the_current_gradient():
    """On a quadratic, H d = g(w_t) - g(w_{t-1}): the corrected momentum is exactly the
    current gradient after the first step, i.e. SGDHess with full batches is GD."""
    a, c, w0 = quadratic(3)
    pb = Quadratic(a, c, w0, graph=True)
    ws, _ = pb.run(co.SGDHess(pb.groups, lr=0.2, momentum=0.9), steps=8)
    w = w0.copy()
    for t in range(8):
        w = w - 0.2 * (a @ (w - c))
        close(ws[t], w, tol=1e-10)


def test_sgdhess_needs_create_graph():
    w = nn.Parameter(torch.ones(3))
    opt = co.SGDHess([w])

    def closure():
        opt.zero_grad()
        loss = (w**3).sum()
        loss.backward()
        return loss

    opt.step(closure)  # the first step needs no product
    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step(closure)


# -------------------------------------------------------------------- DiagHessianSGD
@pytest.mark.parametrize("momentum,wd,update_each", [(0.0, 0.0, 1), (0.9, 0.01, 2)])
def test_diag_hessian_sgd_trajectory_diagonal_quadratic(momentum, wd, update_each):
    """Diagonal A: every probe gives z*(Az) = diag(A), so d_hat = diag(A) exactly."""
    a, c, w0 = quadratic(4, diagonal=True)
    lr, rho, beta = 0.1, 0.3, 0.8
    pb = Quadratic(a, c, w0, graph=True)
    opt = co.DiagHessianSGD(pb.groups, lr=lr, rho=rho, beta=beta, momentum=momentum,
                            weight_decay=wd, update_each=update_each, seed=0)
    ws, ests = pb.run(opt)
    w, buf = w0.copy(), None
    for t in range(STEPS):
        g = a @ (w - c)
        step = g * (1 + rho * np.diag(a)) + wd * w
        buf = step if buf is None else momentum * buf + step
        w = w - lr * buf
        close(ws[t], w)
        close(ests[t]["hessian_diag"], np.diag(a))


def test_diag_hessian_sgd_trajectory_general_quadratic_same_probes():
    """General A: replay the documented probe stream in numpy, EMA with bias correction."""
    a, c, w0 = quadratic(5)
    lr, rho, beta = 0.05, 0.2, 0.7
    pb = Quadratic(a, c, w0, graph=True)
    opt = co.DiagHessianSGD(pb.groups, lr=lr, rho=rho, beta=beta, num_samples=2, seed=9)
    ws, ests = pb.run(opt)
    w, d = w0.copy(), np.zeros(N)
    for t in range(1, STEPS + 1):
        gen = step_generator(9, t, torch.device("cpu"))
        zs = [torch.cat([z.reshape(-1) for z in rademacher_like(pb.params, gen)]).numpy()
              for _ in range(2)]
        d = beta * d + (1 - beta) * sum(z * (a @ z) for z in zs) / 2
        d_hat = d / (1 - beta**t)
        w = w - lr * (a @ (w - c)) * (1 + rho * d_hat)
        close(ws[t - 1], w)
        close(ests[t - 1]["hessian_diag"], d_hat)


# --------------------------------------------------------------------------- Saddam
@pytest.mark.parametrize("pairs", [False, True])
def test_saddam_with_sgd_is_forward_sam(pairs):
    """rho = alpha / lr with SGD (momentum, L2 decay) reproduces ForwardSAM."""
    a, c, w0 = quadratic(6)
    lr, alpha = 0.1, 0.02
    runs = []
    for make in (lambda g: co.ForwardSAM(g, lr=lr, alpha=alpha, momentum=0.9, weight_decay=0.01,
                                         same_batch_pairs=pairs),
                 lambda g: co.Saddam(g, torch.optim.SGD, rho=alpha / lr, lr=lr, momentum=0.9,
                                     weight_decay=0.01, same_batch_pairs=pairs)):
        pb = Quadratic(a, c, w0)
        runs.append(pb.run(make(pb.groups)))
    (w1, e1), (w2, e2) = runs
    close(w2, w1, tol=1e-13)
    for x, y in zip(e1, e2):
        assert set(x) == set(y)
        for k in x:
            close(y[k], x[k], tol=1e-13)


def test_saddam_adam_trajectory():
    """Adam fed g_t - rho (g_t - g_{t-1}) / ||w_t - w_{t-1}|| (hand-written Adam)."""
    a, c, w0 = quadratic(7)
    lr, rho, (b1, b2), eps = 0.05, 0.3, (0.9, 0.999), 1e-8
    pb = Quadratic(a, c, w0)
    ws, ests = pb.run(co.Saddam(pb.groups, torch.optim.Adam, rho=rho, lr=lr, betas=(b1, b2),
                                eps=eps))
    w, m, v = w0.copy(), np.zeros(N), np.zeros(N)
    g_prev = w_prev = None
    for t in range(1, STEPS + 1):
        g = a @ (w - c)
        gt = g
        if g_prev is not None:
            d = w - w_prev
            hvp = (g - g_prev) / np.linalg.norm(d)
            close(hvp, a @ d / np.linalg.norm(d))  # exact on a quadratic
            close(ests[t - 1]["hvp"], hvp)
            close(ests[t - 1]["lambda_max"], np.linalg.norm(hvp))
            gt = g - rho * hvp
        else:
            assert ests[0] == {}
        m = b1 * m + (1 - b1) * gt
        v = b2 * v + (1 - b2) * gt**2
        g_prev, w_prev = g, w
        w = w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        close(ws[t - 1], w)


# ------------------------------------------------------------ calibrate_learning_rate
def test_calibrate_learning_rate_follows_the_seed_iteration():
    """Linear least squares (exact quadratic): replay steps 1-8 in float64, per batch."""
    torch.manual_seed(0)
    x = torch.randn(12, 5, dtype=torch.float64) * torch.tensor([3.0, 1, 1, 0.5, 0.2],
                                                               dtype=torch.float64)
    y = torch.randn(12, 1, dtype=torch.float64)
    model = nn.Linear(5, 1, bias=False).double()
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    w_before = model.weight.detach().clone()
    res = co.calibrate_learning_rate(model, nn.MSELoss(), batches, rho=1e-2, beta=0.3,
                                     max_iters=40, tol=1e-9, window=5, seed=3)
    assert torch.equal(model.weight.detach(), w_before) and model.training
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(5, generator=gen, dtype=torch.float64).numpy()
    v = v / np.linalg.norm(v)
    hs = [2 * b[0].numpy().T @ b[0].numpy() / 6 for b in batches]  # Hessians of the MSE
    for k in range(40):
        v = 0.7 * v + 0.3 * hs[k % 2] @ (v / np.linalg.norm(v))
        assert res.history[k] == pytest.approx(np.linalg.norm(v), rel=1e-9)
    assert res.iterations == 40 and not res.converged  # tol 1e-9 is out of reach
    assert res.lr == pytest.approx(1 / res.lambda_max)
    assert res.gradients == 40 + 2  # G_1 once per batch


def test_calibrate_learning_rate_matches_engine_lambda_max():
    """A tanh MLP on 64 examples in 4 batches: ||v|| against Lanczos on the same data."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randint(0, 3, (64,))
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    loss_fn = nn.CrossEntropyLoss()
    res = co.calibrate_learning_rate(model, loss_fn, batches, beta=0.05, max_iters=600)
    truth = cv.eigenvalues(cv.HessianOperator(model, loss_fn, batches), 1, tol=1e-8,
                           seed=0).values[0]
    print(f"calibrated lambda_max {res.lambda_max:.4f} vs Lanczos {truth:.4f} "
          f"({res.iterations} iterations, converged={res.converged})")
    assert res.converged
    assert res.lambda_max == pytest.approx(float(truth), rel=0.05)


def test_calibrate_learning_rate_bad_input_and_restores_mode():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    model.train()
    batch = (torch.randn(8, 3), torch.randn(8, 1))
    res = co.calibrate_learning_rate(model, nn.MSELoss(), batch, max_iters=5)
    assert model.training and res.iterations == 5 and len(res.rayleigh) == 5
    with pytest.raises(ValueError, match="rho"):
        co.calibrate_learning_rate(model, nn.MSELoss(), batch, rho=0.0)
    with pytest.raises(ValueError, match="beta"):
        co.calibrate_learning_rate(model, nn.MSELoss(), batch, beta=1.5)
    with pytest.raises(ValueError, match="no batch"):
        co.calibrate_learning_rate(model, nn.MSELoss(), [])


# ----------------------------------------------------------------------- CLI table
def test_train_names_build_the_new_methods():
    from curvature.train import make_optimizer

    model = nn.Linear(3, 2)
    opt, graph, hyper = make_optimizer("sam-inf", model, lr=0.1)
    assert isinstance(opt, co.SAM) and math.isinf(opt.param_groups[0]["p"]) and not graph
    opt, _, _ = make_optimizer("asam", model, lr=0.1)
    assert opt.param_groups[0]["adaptive"] and opt.param_groups[0]["eta"] == 0.01
    opt, _, hyper = make_optimizer("saddam", model, lr=0.1, base="adam")
    assert isinstance(opt.base_optimizer, torch.optim.Adam) and hyper["base_optimizer"] == "Adam"
    for name, cls, needs_graph in (("sgdhess", co.SGDHess, True),
                                   ("extended-sgdhess", co.ExtendedSGDHess, False),
                                   ("diag-hessian-sgd", co.DiagHessianSGD, True)):
        opt, graph, _ = make_optimizer(name, model, lr=0.1)
        assert type(opt) is cls and graph is needs_graph
