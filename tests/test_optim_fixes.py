"""Regression tests of issue 14's optimizer bugs, each against a float64 hand formula:
AdaHessian's bias correction with update_each > 1, parameters without a gradient,
ASAM's T_w = |w| + eta (Kwon et al. 2021) and AlphaSAM with rho = 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import curvature.optim as co

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True"),
]




# ------------------------------------------------------------ 1. AdaHessian update_each
@pytest.mark.parametrize("update_each", [1, 4])
def test_adahessian_update_each_keeps_sqrt_vhat_equal_to_diag(update_each):
    """Diagonal quadratic: one Rademacher probe gives diag(H) exactly, so with a consistent
    bias correction sqrt(v_hat) = |diag H| on every step (Yao et al.'s reference updates
    v every step with the kept diagonal).  Before the fix, update_each=4 gave a ratio of
    0.5 after 8 steps; the trajectory is checked against the reference's formula."""
    rng = np.random.default_rng(0)
    diag = rng.uniform(0.5, 3.0, 6) * np.array([1, 1, -1, 1, 1, -1])
    c = rng.standard_normal(6)
    w = torch.nn.Parameter(torch.tensor(rng.standard_normal(6)))
    w0 = w.detach().numpy().copy()
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-4
    opt = co.AdaHessian([w], lr=lr, betas=(b1, b2), eps=eps, update_each=update_each, seed=0)
    dt = torch.tensor(diag)
    ct = torch.tensor(c)

    def closure():
        opt.zero_grad()
        loss = 0.5 * ((w - ct) ** 2 * dt).sum()
        loss.backward(create_graph=True)
        return loss

    ref, m, v = w0.copy(), np.zeros(6), np.zeros(6)
    ratios = []
    for t in range(1, 13):
        opt.step(closure)
        g = diag * (ref - c)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * diag**2  # the kept (exact) diagonal enters v on every step
        vhat = v / (1 - b2**t)
        ref = ref - lr * (m / (1 - b1**t)) / (np.sqrt(vhat) + eps)
        np.testing.assert_allclose(w.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
        s = opt.state[w]
        bc2 = 1 - b2 ** s["step"]
        ratios.append(np.sqrt(s["exp_hessian_diag_sq"].numpy() / bc2) / np.abs(diag))
    np.testing.assert_allclose(np.array(ratios), 1.0, rtol=1e-12)


# ------------------------------------------------------- 2. parameters without .grad
SGD = torch.optim.SGD
NO_GRAD_FACTORIES = {
    "SAM": (lambda ps: co.SAM(ps, SGD, lr=0.1, momentum=0.9, weight_decay=0.1), False),
    "AlphaSAM": (lambda ps: co.AlphaSAM(ps, SGD, alpha=2.0, lr=0.1, weight_decay=0.1), False),
    "OnlineEigenSAM": (lambda ps: co.OnlineEigenSAM(ps, SGD, lr=0.1, weight_decay=0.1), False),
    "AcceleratedSAM": (lambda ps: co.AcceleratedSAM(ps, momentum=0.9, weight_decay=0.1), False),
    "ForwardSAM": (lambda ps: co.ForwardSAM(ps, momentum=0.9, weight_decay=0.1), False),
    "SASGD": (lambda ps: co.SASGD(ps, weight_decay=0.1), False),
    "SASAM": (lambda ps: co.SASAM(ps, weight_decay=0.1), False),
    "SGDHess": (lambda ps: co.SGDHess(ps, weight_decay=0.1), True),
    "ExtendedSGDHess": (lambda ps: co.ExtendedSGDHess(ps, weight_decay=0.1), False),
    "AdaHessian": (lambda ps: co.AdaHessian(ps, weight_decay=0.1, seed=0), True),
    "IRE": (lambda ps: co.IRE(ps, SGD, lr=0.1, momentum=0.9, weight_decay=0.1, seed=0), True),
    "DiagHessianSGD": (lambda ps: co.DiagHessianSGD(ps, weight_decay=0.1, seed=0), True),
    "Saddam": (lambda ps: co.Saddam(ps, torch.optim.Adam, lr=0.01, weight_decay=0.1), False),
}


@pytest.mark.parametrize("name", list(NO_GRAD_FACTORIES))
def test_parameter_without_grad_is_left_alone(name):
    """An unused parameter (``grad is None``) is neither decayed nor moved by momentum, as
    in torch.optim.  Before the fix it went from 1.0 to 0.970 in 3 steps (wd 0.1) for
    SGDHess, AdaHessian, SASGD, AcceleratedSAM and ForwardSAM."""
    factory, graph = NO_GRAD_FACTORIES[name]
    torch.manual_seed(0)
    used = nn.Linear(3, 2).double()
    unused = nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = factory([*used.parameters(), unused])
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = ((used(x) - y) ** 2).mean()
        loss.backward(create_graph=graph)
        return loss

    w0 = used.weight.detach().clone()
    for _ in range(3):
        opt.step(closure)
    assert torch.equal(unused.detach(), torch.ones(4, dtype=torch.float64)), unused
    assert unused.grad is None
    assert not torch.equal(used.weight.detach(), w0)  # the used parameters did move
    n = sum(p.numel() for p in used.parameters())
    for key, value in opt.estimates.items():  # the unused parameter contributes zeros
        if isinstance(value, torch.Tensor) and value.numel() == n + 4 and key != "hvp_direction":
            assert torch.equal(value[n:], torch.zeros(4, dtype=value.dtype)), key


# ------------------------------------------------------------------------ 3. ASAM eta
def _asam_reference(ws, gs, names, rho, eta):
    """Kwon et al.'s ascent: T = |w| + eta for weights (name contains 'weight'), T = 1 else."""
    t = [np.abs(w) + eta if "weight" in n else np.ones_like(w) for w, n in zip(ws, names)]
    tg = [ti * g for ti, g in zip(t, gs)]
    norm = np.sqrt(sum((x**2).sum() for x in tg))
    return [rho * ti * x / norm for ti, x in zip(t, tg)]


@pytest.mark.parametrize("how", ["model", "named", "unnamed"])
def test_asam_uses_abs_w_plus_eta_and_identity_for_biases(how):
    """A linear model with a zero-initialised bias and one zero weight: ASAM's ascent
    must follow T_w = |w| + eta (eta = 0.01 by default) and leave biases at T = I, as
    Kwon et al.'s code does; before the fix every zero coordinate got no ascent
    (T = |w| = 0).  Without names every parameter is treated as a weight."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    with torch.no_grad():
        model.bias.zero_()
        model.weight[0, 0] = 0.0
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    rho, lr = 0.5, 0.1
    if how == "named":
        opt = co.SAM(model.named_parameters(), SGD, rho=rho, adaptive=True, lr=lr)
    else:
        opt = co.SAM(model.parameters(), SGD, rho=rho, adaptive=True, lr=lr,
                     model=model if how == "model" else None)
    names = ["weight", "bias"] if how != "unnamed" else ["weight", "weight"]

    def grads_at(ws):
        m = nn.Linear(3, 2).double()
        with torch.no_grad():
            m.weight.copy_(torch.tensor(ws[0]))
            m.bias.copy_(torch.tensor(ws[1]))
        ((m(x) - y) ** 2).mean().backward()
        return [m.weight.grad.numpy().copy(), m.bias.grad.numpy().copy()]

    ws = [model.weight.detach().numpy().copy(), model.bias.detach().numpy().copy()]

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(3):
        g = grads_at(ws)
        e = _asam_reference(ws, g, names, rho, 0.01)
        g_adv = grads_at([w + ei for w, ei in zip(ws, e)])
        ws = [w - lr * ga for w, ga in zip(ws, g_adv)]
        opt.step(closure)
        e_flat = np.concatenate([ei.ravel() for ei in e])
        np.testing.assert_allclose(opt.estimates["hvp_direction"].numpy(),
                                   e_flat / np.linalg.norm(e_flat), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(model.weight.detach().numpy(), ws[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(model.bias.detach().numpy(), ws[1], rtol=1e-12, atol=1e-14)


def test_asam_eta_is_exposed_and_validated():
    p = [nn.Parameter(torch.zeros(3))]
    assert co.SAM(p, SGD, adaptive=True, lr=0.1).param_groups[0]["eta"] == 0.01
    assert co.SAM(p, SGD, adaptive=True, eta=0.1, lr=0.1).param_groups[0]["eta"] == 0.1
    with pytest.raises(ValueError, match="eta"):
        co.SAM(p, SGD, adaptive=True, eta=-1.0, lr=0.1)


# ------------------------------------------------------------- 4. AlphaSAM with rho = 0
def test_alpha_sam_rho_zero_gives_zero_estimates_with_dropout():
    """rho = 0 with a stochastic closure (dropout: the two gradients differ): the
    docstring promises estimates 0; before the fix lambda_max was inf (a gradient
    difference divided by the smallest normal number)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.5), nn.Linear(16, 1))
    x, y = torch.randn(32, 5), torch.randn(32, 1)
    opt = co.AlphaSAM(model.parameters(), SGD, rho=0.0, alpha=2.0, lr=0.1)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    assert opt.estimates["lambda_max"] == 0.0
    assert torch.equal(opt.estimates["hvp"], torch.zeros_like(opt.estimates["hvp"]))
    assert torch.equal(opt.estimates["hvp_direction"], torch.zeros_like(opt.estimates["hvp"]))
