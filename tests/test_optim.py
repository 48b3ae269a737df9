"""curvature.optim: trajectories on a quadratic against the seeds' formulas (numpy float64),
identities between the SAM variants, reference cross-checks and the Hutchinson diagonal."""

from __future__ import annotations

import numpy as np
import optim_quadratic
import pytest
import torch
from torch import nn

import curvature.optim as co

# AdaHessian/IRE closures use loss.backward(create_graph=True) by design (the optimizers
# detach the gradients afterwards, which breaks the cycle torch warns about)
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]



SHAPES = [(2, 3), (), (2, 1, 2, 2)]  # matrix, scalar, conv kernel: n = 15
N = 15
STEPS = 6


def make_quadratic(seed: int = 0, *, diagonal: bool = False, indefinite: bool = False):
    """A (n x n) symmetric, c (minimiser), w0 -- numpy float64."""
    return optim_quadratic.make_quadratic(N, seed, diagonal=diagonal, indefinite=indefinite)


class Problem(optim_quadratic.QuadraticProblem):
    """The quadratic 0.5 (w - c)^T A (w - c) on parameters of SHAPES in two groups."""

    def __init__(self, a, c, w0, *, graph: bool = False):
        super().__init__(a, c, w0, SHAPES, graph=graph)


def run(problem: Problem, opt, steps: int = STEPS):
    return problem.run(opt, steps)


def close(actual, expected, tol=1e-11):
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


# ----------------------------------------------------------------- references (numpy)
def ref_sam(a, c, w, *, rho, alpha=1.0, adaptive=False, lr, momentum=0.0, wd=0.0, eta=0.01):
    """alpha-SAM / (A)SAM followed by torch.optim.SGD (momentum, L2 weight decay).

    ASAM: T = |w| + eta on every coordinate (unnamed parameters count as weights)."""
    ws, ests, buf = [], [], None
    for _ in range(STEPS):
        g = a @ (w - c)
        if adaptive:
            t = np.abs(w) + eta
            e = rho * t * t * g / np.linalg.norm(t * g)
        else:
            e = rho * g / np.linalg.norm(g)
        g_adv = a @ (w + e - c)
        d = g + alpha * (g_adv - g) + wd * w
        buf = d if buf is None else momentum * buf + d
        w = w - lr * buf
        hvp = (g_adv - g) / np.linalg.norm(e)
        ests.append({"hvp": hvp, "hvp_direction": e / np.linalg.norm(e),
                     "lambda_max": np.linalg.norm(hvp), "g": g})
        ws.append(w)
    return np.array(ws), ests


@pytest.mark.parametrize(
    "kw",
    [
        dict(rho=0.05, adaptive=False, lr=0.1, momentum=0.9, wd=0.01),
        dict(rho=0.3, adaptive=True, lr=0.05, momentum=0.0, wd=0.0),
    ],
    ids=["sam", "asam"],
)
def test_sam_trajectory_and_hvp(kw):
    a, c, w0 = make_quadratic(1)
    pb = Problem(a, c, w0)
    opt = co.SAM(pb.groups, torch.optim.SGD, rho=kw["rho"], adaptive=kw["adaptive"], lr=kw["lr"],
                 momentum=kw["momentum"], weight_decay=kw["wd"])
    ws, ests = run(pb, opt)
    ref_ws, ref_ests = ref_sam(a, c, w0, rho=kw["rho"], adaptive=kw["adaptive"], lr=kw["lr"],
                               momentum=kw["momentum"], wd=kw["wd"])
    close(ws, ref_ws)
    for est, ref in zip(ests, ref_ests):
        close(est["hvp"], ref["hvp"])
        close(est["hvp_direction"], ref["hvp_direction"])
        close(est["lambda_max"], ref["lambda_max"])
        if not kw["adaptive"]:  # SAM's free estimate is exactly A g/||g||
            close(est["hvp"], a @ ref["g"] / np.linalg.norm(ref["g"]))
            close(est["lambda_max"], np.linalg.norm(a @ ref["g"]) / np.linalg.norm(ref["g"]))


@pytest.mark.parametrize("rho,alpha", [(0.1, 2.5), (0.1, 0.5), (-0.1, -1.0), (0.05, -1.0)])
def test_alpha_sam_trajectory(rho, alpha):
    a, c, w0 = make_quadratic(2, indefinite=True)
    pb = Problem(a, c, w0)
    opt = co.AlphaSAM(pb.groups, torch.optim.SGD, rho=rho, alpha=alpha, lr=0.05, momentum=0.5,
                      weight_decay=0.02)
    ws, ests = run(pb, opt)
    ref_ws, ref_ests = ref_sam(a, c, w0, rho=rho, alpha=alpha, lr=0.05, momentum=0.5, wd=0.02)
    close(ws, ref_ws)
    for est, ref in zip(ests, ref_ests):
        close(est["hvp"], ref["hvp"])
        close(est["hvp_direction"], ref["hvp_direction"])


@pytest.mark.parametrize("bias_correction,momentum,wd,lr",
                         [(False, 0.0, 0.0, 0.15), (True, 0.5, 0.01, 0.7)])
def test_accelerated_sam_trajectory(bias_correction, momentum, wd, lr):
    a, c, w0 = make_quadratic(3)
    rho, beta = 0.05, 0.8
    pb = Problem(a, c, w0)
    opt = co.AcceleratedSAM(pb.groups, lr=lr, rho=rho, beta=beta, momentum=momentum,
                            weight_decay=wd, bias_correction=bias_correction)
    ws, ests = run(pb, opt)
    # seed, accelerated-sam-adaptive-lr.md steps 1-5
    w, h, buf = w0.copy(), np.zeros(N), None
    for t in range(1, STEPS + 1):
        g = a @ (w - c)
        g_half = a @ (w + rho * g / np.linalg.norm(g) - c)
        h = beta * h + (1 - beta) * (g_half - g) / rho
        h_hat = h / (1 - beta**t) if bias_correction else h
        d = g_half + wd * w
        buf = d if buf is None else momentum * buf + d
        w = w - lr / np.linalg.norm(h_hat) * buf
        close(ws[t - 1], w)
        close(ests[t - 1]["lambda_max"], np.linalg.norm(h_hat))
        close(ests[t - 1]["hvp"], (g_half - g) / rho)
        close(ests[t - 1]["hvp_direction"], g / np.linalg.norm(g))
    assert opt.step_size == pytest.approx(lr / np.linalg.norm(h_hat), rel=1e-12)


def test_forward_sam_matches_seed_three_lines():
    """alpha-sam.md: theta_1 = theta_0 - eta g0, theta_2 = theta_1 - eta g1,
    theta_3 = theta_2 + alpha/(eta ||g0||) (g1 - g0): two ForwardSAM steps give theta_3."""
    a, c, w0 = make_quadratic(4)
    eta, alpha = 0.1, 0.02
    pb = Problem(a, c, w0)
    opt = co.ForwardSAM(pb.groups, lr=eta, alpha=alpha)
    ws, ests = run(pb, opt, steps=2)
    g0 = a @ (w0 - c)
    th1 = w0 - eta * g0
    g1 = a @ (th1 - c)
    th3 = th1 - eta * g1 + alpha / (eta * np.linalg.norm(g0)) * (g1 - g0)
    close(ws[0], th1)
    close(ws[1], th3)
    assert ests[0] == {}
    # the estimate is H along the last step, here -g0/||g0||
    close(ests[1]["hvp"], -a @ g0 / np.linalg.norm(g0))
    close(ests[1]["hvp_direction"], -g0 / np.linalg.norm(g0))


@pytest.mark.parametrize("momentum,wd,pairs", [(0.0, 0.0, False), (0.9, 0.01, False),
                                               (0.0, 0.0, True)])
def test_forward_sam_trajectory(momentum, wd, pairs):
    a, c, w0 = make_quadratic(5)
    eta, alpha = 0.08, 0.01
    pb = Problem(a, c, w0)
    opt = co.ForwardSAM(pb.groups, lr=eta, alpha=alpha, momentum=momentum, weight_decay=wd,
                        same_batch_pairs=pairs)
    ws, ests = run(pb, opt)
    w, prev, buf = w0.copy(), None, None
    for t in range(STEPS):
        g = a @ (w - c)
        d_dir = g + wd * w
        use = prev is not None and (not pairs or t % 2 == 1)
        if use:
            dw = w - prev[0]
            hvp = (g - prev[1]) / np.linalg.norm(dw)
            d_dir = d_dir - alpha / eta * hvp
            close(ests[t]["hvp"], hvp)
            close(ests[t]["hvp"], a @ dw / np.linalg.norm(dw))  # exact secant
            close(ests[t]["lambda_max"], np.linalg.norm(hvp))
        else:
            assert ests[t] == {}
        prev = None if (pairs and use) else (w.copy(), g)
        buf = d_dir if buf is None else momentum * buf + d_dir
        w = w - eta * buf
        close(ws[t], w)


@pytest.mark.parametrize("sam", [False, True], ids=["sasgd", "sasam"])
@pytest.mark.parametrize("same_batch", [True, False])
def test_smoothness_adaptive_trajectory(sam, same_batch):
    a, c, w0 = make_quadratic(6)
    lr, wd = 0.02, 0.01
    pb = Problem(a, c, w0)
    cls = co.SASAM if sam else co.SASGD
    opt = cls(pb.groups, lr=lr, weight_decay=wd, same_batch_secant=same_batch)
    ws, ests = run(pb, opt, steps=10)
    # sa-sam-poster.md Algorithm: eta_0 = lr, theta_0 = +inf, rho_t = sqrt(eta_t)
    w, w_prev, eta, theta = w0.copy(), None, lr, np.inf
    etas = []
    for t in range(10):
        g = a @ (w - c)
        if w_prev is not None:
            smooth = np.linalg.norm(g - a @ (w_prev - c)) / np.linalg.norm(w - w_prev)
            new = min(1 / (2 * smooth), np.sqrt(1 + theta) * eta)
            theta, eta = new / eta, new
            close(ests[t]["smoothness"], smooth)
            close(ests[t]["smoothness_direction"], w - w_prev)
            dw = w - w_prev  # on a quadratic the estimate is the exact secant
            close(ests[t]["smoothness"], np.linalg.norm(a @ dw) / np.linalg.norm(dw))
        else:
            assert "smoothness" not in ests[t]
        etas.append(eta)
        step_grad = g
        if sam:
            e = np.sqrt(eta) * g / np.linalg.norm(g)
            step_grad = a @ (w + e - c)
            close(ests[t]["hvp"], a @ g / np.linalg.norm(g))
        w_prev, w = w, w - eta * (step_grad + wd * w)
        close(ws[t], w)
    assert opt.step_size == pytest.approx(etas[-1], rel=1e-12)
    assert max(etas) > 5 * lr  # the step adapted (grew from eta_0)
    per_step = (3 if sam else 2) if same_batch else (2 if sam else 1)
    assert pb.calls == per_step * 10 - (1 if same_batch else 0)


def test_extended_sgdhess_trajectory():
    a, c, w0 = make_quadratic(7)
    lr, rho, (b1, b2), wd = 0.05, 3.0, (0.8, 0.9), 0.01
    pb = Problem(a, c, w0)
    opt = co.ExtendedSGDHess(pb.groups, lr=lr, rho=rho, betas=(b1, b2), weight_decay=wd)
    ws, ests = run(pb, opt)
    w, m, eps, v = w0.copy(), np.zeros(N), np.zeros(N), np.zeros(N)
    for t in range(STEPS):
        g = a @ (w - c)
        m = b1 * m + (1 - b1) * g
        eps_hat = g - m
        eps = b1 * eps + (1 - b1) * eps_hat
        v = b2 * v + (1 - b2) * (eps - eps_hat) ** 2  # the documented reading of the seed
        w = w - lr * (g * (1 + rho * v) + wd * w)
        close(ws[t], w)
        close(ests[t]["noise_variance"], v)
    assert np.all(v > 0)


def spatial_block_mean(x: np.ndarray) -> np.ndarray:
    """Average the conv-kernel part (last 8 entries, shape (2, 1, 2, 2)) over its kernel dims."""
    out = x.copy()
    k = x[7:].reshape(2, 1, 2, 2)
    out[7:] = np.broadcast_to(k.mean(axis=(2, 3), keepdims=True), k.shape).reshape(-1)
    return out


def test_adahessian_trajectory_diagonal_quadratic():
    """On a diagonal quadratic z*(Az) = diag(A) for every probe: the formula is deterministic."""
    a, c, w0 = make_quadratic(8, diagonal=True)
    lr, (b1, b2), eps, wd, k = 0.1, (0.9, 0.99), 1e-4, 0.01, 0.7
    pb = Problem(a, c, w0, graph=True)
    opt = co.AdaHessian(pb.groups, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
                        hessian_power=k, seed=0)
    ws, ests = run(pb, opt)
    d = spatial_block_mean(np.diag(a))
    w, m, v = w0.copy(), np.zeros(N), np.zeros(N)
    for t in range(1, STEPS + 1):
        g = a @ (w - c)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * d * d
        denom = np.sqrt(v / (1 - b2**t)) ** k + eps
        w = w - lr * (m / (1 - b1**t) / denom + wd * w)
        close(ws[t - 1], w)
        close(ests[t - 1]["hessian_diag"], d)


def test_adahessian_trajectory_general_quadratic_same_probes():
    """General A: replay the seeded probes (documented stream) in numpy."""
    from curvature.optim._common import rademacher_like, step_generator

    a, c, w0 = make_quadratic(9)
    lr, (b1, b2), eps, update_each = 0.1, (0.9, 0.999), 1e-4, 2
    pb = Problem(a, c, w0, graph=True)
    opt = co.AdaHessian(pb.groups, lr=lr, betas=(b1, b2), eps=eps, update_each=update_each,
                        num_samples=2, seed=123)
    ws, ests = run(pb, opt)
    w, m, v = w0.copy(), np.zeros(N), np.zeros(N)
    for t in range(1, STEPS + 1):
        g = a @ (w - c)
        if (t - 1) % update_each == 0:
            gen = step_generator(123, t, torch.device("cpu"))
            zs = [torch.cat([z.reshape(-1) for z in rademacher_like(pb.params, gen)]).numpy()
                  for _ in range(2)]
            d = spatial_block_mean(sum(z * (a @ z) for z in zs) / 2)
        v = b2 * v + (1 - b2) * d * d  # the kept d enters v on every step (reference code)
        m = b1 * m + (1 - b1) * g
        w = w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        close(ws[t - 1], w)
        close(ests[t - 1]["hessian_diag"], d)


@pytest.mark.parametrize("diag", ["hutchinson", "fisher"])
def test_ire_trajectory(diag):
    a, c, w0 = make_quadratic(10, diagonal=True)
    lr, k, frac, beta = 0.1, 2.0, 0.6, 0.5
    pb = Problem(a, c, w0, graph=diag == "hutchinson")
    opt = co.IRE(pb.groups, torch.optim.SGD, k=k, flat_fraction=frac, diag=diag, beta=beta,
                 seed=0, lr=lr)
    ws, ests = run(pb, opt)
    w, h = w0.copy(), np.zeros(N)
    for t in range(1, STEPS + 1):
        g = a @ (w - c)
        sample = np.diag(a) if diag == "hutchinson" else g * g
        h = beta * h + (1 - beta) * sample
        h_hat = h / (1 - beta**t)
        n_flat = int(np.floor(frac * N))
        mask = np.abs(h_hat) <= np.sort(np.abs(h_hat))[n_flat - 1]
        w = w - lr * (1 + k * mask) * g  # seed: w - eta (g + k P g)
        close(ws[t - 1], w)
        close(ests[t - 1]["hessian_diag"], h_hat)
    if diag == "hutchinson":  # the flat coordinates are those of the smallest A_ii
        assert mask.sum() == n_flat
        assert set(np.flatnonzero(mask)) == set(np.argsort(np.diag(a))[:n_flat])


# ----------------------------------------------------------------- identities on an MLP
def mlp_problem(seed=0, dtype=torch.float64, n=40):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    x = torch.randn(n, 5, dtype=dtype)
    y = torch.randint(0, 3, (n,))
    return model, x, y


def train(model, x, y, opt, steps, graph=False):
    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward(create_graph=graph)
        return loss

    traj = []
    for _ in range(steps):
        opt.step(closure)
        traj.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
    return torch.stack(traj)


def test_alpha_sam_identities():
    def traj(make):
        model, x, y = mlp_problem(0)
        return train(model, x, y, make(model), 5)

    sgd = dict(lr=0.3, momentum=0.9, weight_decay=1e-3)
    sam = traj(lambda m: co.SAM(m.parameters(), torch.optim.SGD, rho=0.1, **sgd))
    a1 = traj(lambda m: co.AlphaSAM(m.parameters(), torch.optim.SGD, rho=0.1, alpha=1.0, **sgd))
    a0 = traj(lambda m: co.AlphaSAM(m.parameters(), torch.optim.SGD, rho=0.1, alpha=0.0, **sgd))
    base = traj(lambda m: torch.optim.SGD(m.parameters(), **sgd))
    assert torch.equal(a1, sam)
    assert torch.equal(a0, base)
    assert (sam - base).abs().max() > 1e-4  # the identities are not vacuous


def test_negative_rho_antisam_is_sam_to_first_order():
    """alpha-sam.md: rho < 0, alpha = -1 performs SAM's update up to O(rho^2)."""

    def one_step(make):
        model, x, y = mlp_problem(1)
        return train(model, x, y, make(model), 1)[0]

    base = one_step(lambda m: torch.optim.SGD(m.parameters(), lr=1.0))
    errs, gaps = [], []
    for r in (1e-2, 1e-3):
        sam = one_step(lambda m, r=r: co.SAM(m.parameters(), torch.optim.SGD, rho=r, lr=1.0))
        anti = one_step(lambda m, r=r: co.AlphaSAM(m.parameters(), torch.optim.SGD, rho=-r,
                                                   alpha=-1.0, lr=1.0))
        errs.append(float((anti - sam).norm()))
        gaps.append(float((sam - base).norm()))
    # the SAM correction itself is first order, the discrepancy second order
    assert 8 < gaps[0] / gaps[1] < 12
    assert 70 < errs[0] / errs[1] < 130
    assert errs[0] < 0.05 * gaps[0]


def test_sam_cross_check_pytorch_optimizer():
    po = pytest.importorskip("pytorch_optimizer")

    model, x, y = mlp_problem(2)
    ours = train(model, x, y, co.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.2,
                                     momentum=0.9, weight_decay=1e-3), 8)
    for adaptive in (False, True):
        model, x, y = mlp_problem(2)
        opt = po.SAM(model.parameters(), torch.optim.SGD, rho=0.05, adaptive=adaptive, lr=0.2,
                     momentum=0.9, weight_decay=1e-3)

        def closure(opt=opt, model=model, x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        theirs = []
        for _ in range(8):
            closure()  # pytorch_optimizer's SAM expects the first gradient computed before step
            opt.step(closure)
            theirs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
        theirs = torch.stack(theirs)
        if adaptive:
            model, x, y = mlp_problem(2)
            # pytorch_optimizer's ASAM uses T = |w| (no eta, biases included): eta=0 and
            # unnamed parameters reproduce it
            ours_a = train(model, x, y, co.SAM(model.parameters(), torch.optim.SGD, rho=0.05,
                                               adaptive=True, eta=0.0, lr=0.2, momentum=0.9,
                                               weight_decay=1e-3), 8)
            # their global norm is accumulated in float32
            torch.testing.assert_close(ours_a, theirs, rtol=1e-8, atol=1e-8)
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-8)


def test_adahessian_cross_check_pytorch_optimizer():
    po = pytest.importorskip("pytorch_optimizer")
    kw = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-6, weight_decay=1e-2, hessian_power=1.0)

    model, x, y = mlp_problem(3)
    torch.manual_seed(77)
    ours = train(model, x, y, co.AdaHessian(model.parameters(), **kw), 6, graph=True)
    model, x, y = mlp_problem(3)
    torch.manual_seed(77)
    theirs = train(model, x, y, po.AdaHessian(model.parameters(), weight_decouple=True,
                                              hessian_distribution="rademacher", **kw),
                   6, graph=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert (ours[-1] - ours[0]).abs().max() > 1e-3


# ----------------------------------------------------------------- Hutchinson diagonal
def dense_hessian(model, x, y):
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]

    def f(*ps):
        out = torch.func.functional_call(model, dict(zip(names, ps)), (x,))
        return nn.functional.cross_entropy(out, y)

    blocks = torch.func.hessian(f, argnums=tuple(range(len(params))))(*params)
    n = sum(p.numel() for p in params)
    rows = [torch.cat([blocks[i][j].reshape(params[i].numel(), params[j].numel())
                       for j in range(len(params))], dim=1) for i in range(len(params))]
    h = torch.cat(rows, dim=0)
    assert h.shape == (n, n)
    return h


@pytest.mark.parametrize("which", ["adahessian", "ire"])
def test_hutchinson_diagonal_averages_to_true_diagonal(which):
    """E[z*(Hz)] = diag(H) with Var = sum_{j != i} H_ij^2 per probe: the normalised squared
    errors of an S-probe estimate average to 1 (a chi^2 check over all coordinates)."""
    model, x, y = mlp_problem(4)
    h = dense_hessian(model, x, y)
    diag = torch.diagonal(h)
    var = (h**2).sum(1) - diag**2
    s = 64
    if which == "adahessian":
        opt = co.AdaHessian(model.parameters(), lr=1e-12, num_samples=s, seed=5)
    else:
        opt = co.IRE(model.parameters(), torch.optim.SGD, lr=1e-12, num_samples=s, beta=0.0,
                     seed=5)
    z2 = []
    for _ in range(4):  # parameters move by ~1e-12: four independent estimates at one point
        train(model, x, y, opt, 1, graph=True)
        est = opt.estimates["hessian_diag"]
        z2.append((est - diag) ** 2 / (var / s))
    chi = torch.cat(z2).mean().item()
    assert 0.75 < chi < 1.3, chi
    # and the estimate is useful: error well below the diagonal's size
    assert (est - diag).norm() < 0.5 * diag.norm()


def test_adahessian_spatial_average_of_conv_kernel():
    """For a conv kernel the estimate is unbiased for the kernel-averaged true diagonal.

    Each output coordinate is a quadratic form z^T M z of the Rademacher probe (M = the
    symmetrised rows of H averaged over the kernel block), whose variance is
    2 sum_{i != j} M_ij^2: the normalised squared errors average to 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4, 3))
    model = model.double()
    x = torch.randn(10, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    h = dense_hessian(model, x, y)
    n = h.shape[0]
    blocks = [list(range(0, 9)), list(range(9, 18))] + [[i] for i in range(18, n)]
    means, variances = [], []
    for b in blocks:
        rows = torch.zeros(n, n, dtype=h.dtype)
        rows[b] = h[b] / len(b)
        m = (rows + rows.T) / 2
        means.append(torch.diagonal(m).sum())
        variances.append(2 * ((m**2).sum() - (torch.diagonal(m) ** 2).sum()))
    means, variances = torch.stack(means), torch.stack(variances)
    s = 100
    opt = co.AdaHessian(model.parameters(), lr=1e-12, num_samples=s, seed=1)
    chi = []
    for _ in range(4):
        train(model, x, y, opt, 1, graph=True)
        est = opt.estimates["hessian_diag"]
        k_est = est[:18].reshape(2, 1, 3, 3)
        assert torch.equal(k_est, k_est[:, :, :1, :1].expand(2, 1, 3, 3))  # averaged exactly
        picked = torch.stack([est[b[0]] for b in blocks])
        chi.append((picked - means) ** 2 / (variances / s))
    chi = torch.cat(chi).mean().item()
    assert 0.6 < chi < 1.5, chi


def test_wrappers_around_adamw():
    """The wrappers work with a stateful base optimizer: alpha=0 / k=0 reproduce AdamW, and
    IRE's k > 0 changes exactly the coordinates it marks flat, by the factor 1 + k."""

    def traj(make, graph=False, steps=5):
        model, x, y = mlp_problem(5)
        opt = make(model)
        return train(model, x, y, opt, steps, graph=graph), opt

    kw = dict(lr=1e-2, weight_decay=1e-2)
    adamw, _ = traj(lambda m: torch.optim.AdamW(m.parameters(), **kw))
    a0, _ = traj(lambda m: co.AlphaSAM(m.parameters(), torch.optim.AdamW, alpha=0.0, **kw))
    i0, _ = traj(lambda m: co.IRE(m.parameters(), torch.optim.AdamW, k=0.0, diag="fisher", **kw))
    assert torch.equal(a0, adamw) and torch.equal(i0, adamw)

    adamw1, _ = traj(lambda m: torch.optim.AdamW(m.parameters(), **kw), steps=1)
    ire1, opt = traj(lambda m: co.IRE(m.parameters(), torch.optim.AdamW, k=3.0, seed=0, **kw),
                     graph=True, steps=1)
    start = opt.estimate_params
    mask = torch.cat([opt.state[p]["ire_mask"].reshape(-1) for p in opt._params()]).bool()
    assert 0 < mask.sum() < mask.numel()
    torch.testing.assert_close(ire1[0] - start, (adamw1[0] - start) * (1 + 3.0 * mask),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["SAM", "AcceleratedSAM", "ForwardSAM", "SASGD"])
def test_estimates_line_up_with_hessian_operator(name):
    """The flat estimates use the layout of a HessianOperator built on the optimizer's
    parameter list (param_groups order, here different from model order), evaluated at
    ``opt.estimate_params``: finite-difference estimates agree to O(step)."""
    import curvature as cv

    model, x, y = mlp_problem(6)
    groups = [{"params": list(model[2].parameters())}, {"params": list(model[0].parameters())}]
    make = {
        "SAM": lambda: co.SAM(groups, torch.optim.SGD, rho=1e-4, lr=0.1),
        "AcceleratedSAM": lambda: co.AcceleratedSAM(groups, rho=1e-4),
        "ForwardSAM": lambda: co.ForwardSAM(groups, lr=1e-3),
        "SASGD": lambda: co.SASGD(groups, lr=1e-3, same_batch_secant=False),
    }
    opt = make[name]()
    train(model, x, y, opt, 3)
    params = [p for g in opt.param_groups for p in g["params"]]
    est = opt.estimates
    point = opt.estimate_params
    if name == "SASGD":  # a secant between w_{t-1} and w_t: H at the midpoint, to O(dw^2)
        point = point - est["smoothness_direction"] / 2
    torch.nn.utils.vector_to_parameters(point, params)
    op = cv.HessianOperator(model, nn.functional.cross_entropy, (x, y), params=params)
    if "hvp" in est:
        exact = op.matvec(est["hvp_direction"])
        assert ((est["hvp"] - exact).norm() / exact.norm()).item() < 1e-2
        if name != "AcceleratedSAM":  # whose lambda_max is the EMA ||h_t||, not this pair's
            assert est["lambda_max"] == pytest.approx(exact.norm().item(), rel=1e-2)
    else:
        dw = est["smoothness_direction"]
        secant = (op.matvec(dw).norm() / dw.norm()).item()
        assert est["smoothness"] == pytest.approx(secant, rel=1e-2)
