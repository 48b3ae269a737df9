"""curvature.optim in use: training on digits at the documented defaults, state_dict round
trips, BatchNorm statistics, zero gradients, unusual parameters, devices and bad input."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

import curvature.optim as co

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]



SGD = torch.optim.SGD
BASE = dict(lr=0.1, momentum=0.9)  # the base optimizer used with the wrappers' defaults

# name -> (factory at documented defaults, needs create_graph)
OPTIMIZERS = {
    "SAM": (lambda ps: co.SAM(ps, SGD, **BASE), False),
    "ASAM": (lambda ps: co.SAM(ps, SGD, rho=0.5, adaptive=True, **BASE), False),
    "AlphaSAM": (lambda ps: co.AlphaSAM(ps, SGD, alpha=2.0, **BASE), False),
    "AntiSAM": (lambda ps: co.AlphaSAM(ps, SGD, rho=-0.05, alpha=-1.0, **BASE), False),
    "AcceleratedSAM": (lambda ps: co.AcceleratedSAM(ps), False),
    "ForwardSAM": (lambda ps: co.ForwardSAM(ps), False),
    "SASGD": (lambda ps: co.SASGD(ps), False),
    "SASAM": (lambda ps: co.SASAM(ps), False),
    "SAM-pinf": (lambda ps: co.SAM(ps, SGD, rho=0.01, p=float("inf"), **BASE), False),
    "Saddam": (lambda ps: co.Saddam(ps, torch.optim.Adam, lr=0.01), False),
    "SGDHess": (lambda ps: co.SGDHess(ps), True),
    "ExtendedSGDHess": (lambda ps: co.ExtendedSGDHess(ps), False),
    "DiagHessianSGD": (lambda ps: co.DiagHessianSGD(ps, seed=0), True),
    "AdaHessian": (lambda ps: co.AdaHessian(ps, seed=0), True),
    "IRE": (lambda ps: co.IRE(ps, SGD, seed=0, **BASE), True),
}

ESTIMATE_KEYS = {
    "SAM": {"hvp", "hvp_direction", "lambda_max"},
    "ASAM": {"hvp", "hvp_direction", "lambda_max"},
    "AlphaSAM": {"hvp", "hvp_direction", "lambda_max"},
    "AntiSAM": {"hvp", "hvp_direction", "lambda_max"},
    "AcceleratedSAM": {"hvp", "hvp_direction", "lambda_max"},
    "ForwardSAM": {"hvp", "hvp_direction", "lambda_max"},
    "SASGD": {"smoothness", "smoothness_direction"},
    "SASAM": {"smoothness", "smoothness_direction", "hvp", "hvp_direction", "lambda_max"},
    "SAM-pinf": {"hvp", "hvp_direction", "lambda_max"},
    "Saddam": {"hvp", "hvp_direction", "lambda_max"},
    "SGDHess": {"hvp", "hvp_direction"},
    "ExtendedSGDHess": {"noise_variance"},
    "DiagHessianSGD": {"hessian_diag"},
    "AdaHessian": {"hessian_diag"},
    "IRE": {"hessian_diag"},
}


@pytest.fixture(scope="module")
def digits(digits_standardized):
    x, y = digits_standardized
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def make_closure(opt, model, batch, graph):
    x, y = batch

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward(create_graph=graph)
        return loss

    return closure


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_trains_digits_full_batch(name, digits):
    """Full-batch training of a 64-32-10 tanh MLP: >= 95% training accuracy in 300 steps."""
    factory, graph = OPTIMIZERS[name]
    model = mlp(0)
    opt = factory(model.parameters())
    n = sum(p.numel() for p in model.parameters())
    closure = make_closure(opt, model, digits, graph)
    for _ in range(300):
        w_before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        loss = opt.step(closure)
        assert math.isfinite(float(loss.detach()))
    assert torch.equal(opt.estimate_params, w_before)  # estimates refer to the pre-step iterate
    acc = accuracy(model, *digits)
    print(f"{name}: full-batch training accuracy {acc:.4f}")
    assert acc >= 0.95, f"{name}: training accuracy {acc:.3f}"
    assert set(opt.estimates) == ESTIMATE_KEYS[name]
    for key, value in opt.estimates.items():
        if isinstance(value, torch.Tensor):
            assert value.shape == (n,) and torch.isfinite(value).all(), key
            assert not value.requires_grad
        else:
            assert isinstance(value, float) and math.isfinite(value), key


@pytest.mark.parametrize("name", list(OPTIMIZERS) + ["ForwardSAM-pairs"])
def test_trains_digits_minibatch(name, digits):
    """Minibatches of 64 for 400 steps (ForwardSAM-pairs feeds each batch to two steps)."""
    pairs = name == "ForwardSAM-pairs"
    factory, graph = OPTIMIZERS["ForwardSAM" if pairs else name]
    if pairs:
        factory = lambda ps: co.ForwardSAM(ps, same_batch_pairs=True)  # noqa: E731
    x, y = digits
    model = mlp(1)
    opt = factory(model.parameters())
    gen = torch.Generator().manual_seed(0)
    for step in range(400):
        if not (pairs and step % 2 == 1):
            idx = torch.randint(0, len(x), (64,), generator=gen)
        opt.step(make_closure(opt, model, (x[idx], y[idx]), graph))
    acc = accuracy(model, x, y)
    print(f"{name}: minibatch training accuracy {acc:.4f}")
    assert acc >= 0.95, f"{name}: training accuracy {acc:.3f}"


# ----------------------------------------------------------------- state_dict round trip
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip(name, digits):
    """k steps, save (torch.save / weights_only load), k more steps == uninterrupted run."""
    factory, graph = OPTIMIZERS[name]
    batch = (digits[0][:200].double(), digits[1][:200])
    model = mlp(2).double()
    opt = factory(model.parameters())
    closure = make_closure(opt, model, batch, graph)
    for _ in range(4):
        opt.step(closure)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    for _ in range(4):
        opt.step(closure)
    expected = [p.detach().clone() for p in model.parameters()]

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = mlp(3).double()
    model2.load_state_dict(ckpt["model"])
    opt2 = factory(model2.parameters())
    opt2.load_state_dict(ckpt["opt"])
    closure2 = make_closure(opt2, model2, batch, graph)
    for _ in range(4):
        opt2.step(closure2)
    for p, q in zip(model2.parameters(), expected):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=1e-13)
    for key, value in opt.estimates.items():
        if isinstance(value, float):
            assert opt2.estimates[key] == pytest.approx(value, rel=1e-10)


def test_wrapper_state_dict_carries_base_state():
    model = mlp(0)
    opt = co.SAM(model.parameters(), SGD, lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    opt.step(make_closure(opt, model, (x, y), False))
    sd = opt.state_dict()
    assert len(sd["base_optimizer"]["state"]) == 4  # momentum buffers
    with pytest.raises(KeyError, match="base_optimizer"):
        opt.load_state_dict({k: v for k, v in sd.items() if k != "base_optimizer"})


# ----------------------------------------------------------------- BatchNorm statistics
def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("name", ["SAM", "AlphaSAM", "AcceleratedSAM", "SASGD", "SASAM"])
def test_extra_closure_calls_leave_running_stats_alone(name):
    """With model=..., only the pass at the iterate updates BatchNorm running statistics."""
    makers = {
        "SAM": lambda m, ps: co.SAM(ps, SGD, lr=0.1, model=m),
        "AlphaSAM": lambda m, ps: co.AlphaSAM(ps, SGD, rho=-0.1, alpha=-1, lr=0.1, model=m),
        "AcceleratedSAM": lambda m, ps: co.AcceleratedSAM(ps, model=m),
        "SASGD": lambda m, ps: co.SASGD(ps, model=m),
        "SASAM": lambda m, ps: co.SASAM(ps, model=m),
    }
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    model = bn_model()
    opt = makers[name](model, model.parameters())
    bn = model[1]
    for _ in range(3):
        reference = copy.deepcopy(model)
        reference(x)  # one training-mode pass at the current iterate
        opt.step(make_closure(opt, model, (x, y), False))
        torch.testing.assert_close(bn.running_mean, reference[1].running_mean, rtol=0, atol=0)
        torch.testing.assert_close(bn.running_var, reference[1].running_var, rtol=0, atol=0)
        assert bn.num_batches_tracked == reference[1].num_batches_tracked


def test_without_model_the_ascent_pass_updates_running_stats():
    """The failure the model= argument prevents: two passes per step move the statistics."""
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    model = bn_model()
    opt = co.SAM(model.parameters(), SGD, lr=0.1)
    opt.step(make_closure(opt, model, (x, y), False))
    assert model[1].num_batches_tracked == 2


@pytest.mark.parametrize("momentum", [0.1, None])
def test_disable_running_stats_restores_buffers(momentum):
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, momentum=momentum))
    model(torch.randn(4, 2, 5, 5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with co.disable_running_stats(model):
        out = model(torch.randn(4, 2, 5, 5) * 3 + 1)
    # batch statistics were used for the output (train mode) ...
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    # ... but every buffer is back bit for bit
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with co.disable_running_stats(None):
        pass


# ----------------------------------------------------------------- degenerate inputs
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_zero_gradient_gives_no_nan(name):
    """At an exact minimum every optimizer stays put and reports finite estimates."""
    factory, graph = OPTIMIZERS[name]
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    target = w.detach().clone()
    a = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    opt = factory([w])

    def closure():
        opt.zero_grad()
        r = w - target
        loss = 0.5 * r @ (a @ r)
        loss.backward(create_graph=graph)
        return loss

    for _ in range(3):
        opt.step(closure)
        assert torch.equal(w.detach(), target), name
        for key, value in opt.estimates.items():
            value = torch.as_tensor(value)
            assert torch.isfinite(value).all(), (name, key)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_unused_and_scalar_parameters(name):
    """A 0-d parameter, a conv kernel and a parameter that gets no gradient."""
    factory, graph = OPTIMIZERS[name]
    torch.manual_seed(0)
    scalar = nn.Parameter(torch.tensor(0.3))
    kernel = nn.Parameter(torch.randn(2, 1, 2, 2))
    unused = nn.Parameter(torch.randn(3))
    opt = factory([{"params": [scalar, kernel]}, {"params": [unused]}])
    x = torch.randn(5, 1, 3, 3)

    def closure():
        opt.zero_grad()
        out = nn.functional.conv2d(x, kernel) * scalar
        loss = (out**2).mean() + scalar**4
        loss.backward(create_graph=graph)
        return loss

    start = unused.detach().clone()
    for _ in range(3):
        opt.step(closure)
    assert torch.equal(unused.detach(), start)
    for key, value in opt.estimates.items():
        if isinstance(value, torch.Tensor):
            assert value.shape == (1 + 8 + 3,)
            assert torch.isfinite(value).all()
            if key != "smoothness_direction":
                assert torch.all(value[-3:] == 0), key


def test_bad_input_is_reported():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="closure"):
        co.SAM(p, SGD, lr=0.1).step()
    with pytest.raises(TypeError, match="base_optimizer"):
        co.SAM(p, SGD(p, lr=0.1))
    with pytest.raises(ValueError, match="rho"):
        co.AcceleratedSAM(p, rho=0.0)
    with pytest.raises(ValueError, match="lr=nan"):
        co.ForwardSAM(p, lr=float("nan"))
    with pytest.raises(ValueError, match="rho=inf"):
        co.SAM(p, SGD, rho=float("inf"), lr=0.1)
    with pytest.raises(ValueError, match="betas"):
        co.ExtendedSGDHess(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="momentum"):
        co.SGDHess(p, momentum=1.0)
    with pytest.raises(ValueError, match="clip"):
        co.SGDHess(p, clip=0.0)
    with pytest.raises(ValueError, match="p=1.0"):
        co.SAM(p, SGD, p=1.0, lr=0.1)
    with pytest.raises(ValueError, match="beta"):
        co.DiagHessianSGD(p, beta=1.0)
    with pytest.raises(ValueError, match="rho"):
        co.Saddam(p, SGD, rho=float("nan"), lr=0.1)
    with pytest.raises(ValueError, match="hessian_power"):
        co.AdaHessian(p, hessian_power=2.0)
    with pytest.raises(ValueError, match="diag"):
        co.IRE(p, SGD, diag="exact", lr=0.1)
    with pytest.raises(ValueError, match="flat_fraction"):
        co.IRE(p, SGD, flat_fraction=1.5, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        co.SASGD([{"params": p[:1], "lr": 0.1}, {"params": [nn.Parameter(torch.ones(1))],
                                                  "lr": 0.2}])
    with pytest.raises(ValueError, match="one device"):
        co.SGDHess([nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1, device="meta"))])
    with pytest.raises(TypeError, match="AlphaSAM"):
        co.SAM(p, SGD, alpha=2.0, lr=0.1)

    w = nn.Parameter(torch.ones(3))
    opt = co.AdaHessian([w])

    def plain_closure():
        opt.zero_grad()
        loss = (w**3).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step(plain_closure)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_cuda_matches_cpu(name):
    factory, graph = OPTIMIZERS[name]
    x, y = torch.randn(64, 64, dtype=torch.float64), torch.randint(0, 10, (64,))
    results = []
    for device in ("cpu", "cuda"):
        model = mlp(4).double().to(device)
        opt = factory(model.parameters())
        closure = make_closure(opt, model, (x.to(device), y.to(device)), graph)
        for _ in range(5):
            opt.step(closure)
        results.append(([p.detach().cpu() for p in model.parameters()],
                        {k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                         for k, v in opt.estimates.items()}))
    (p_cpu, e_cpu), (p_gpu, e_gpu) = results
    if name in ("AdaHessian", "IRE", "DiagHessianSGD"):  # the CUDA generator draws a different probe stream
        assert all(torch.isfinite(p).all() for p in p_gpu)
        return
    for a, b in zip(p_cpu, p_gpu):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    for k in e_cpu:
        torch.testing.assert_close(torch.as_tensor(e_gpu[k]), torch.as_tensor(e_cpu[k]),
                                   rtol=1e-7, atol=1e-9)
