"""CurvatureMonitor against independent float64 ground truth (dense Hessians from
``cv.dense_hessian`` + ``torch.linalg.eigvalsh``, closed-form GGN, per-example gradients
by a Python loop), at the pre-step weights ``w_t``; bit-identical training with and
without the monitor; the corrected lambda_max estimator (OnlineEigenSAM)."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import curvature as cv
from curvature.monitor import CurvatureMonitor, exact_diagonal, preserved_rng
from curvature.optim import SAM, SASGD, AdaHessian, ExtendedSGDHess
from curvature.optim.online_eigen_sam import OnlineEigenSAM

LF = torch.nn.CrossEntropyLoss()


# tiny float64 problems: one thread avoids oversubscription on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(seed: int = 0, hidden=(5,), dropout: float = 0.0):
    d = cv.load_dataset("synthetic-classification:n_train=96,n_test=8,d=8,classes=3").to(
        dtype=torch.float64)
    torch.manual_seed(seed)
    model = cv.build_model("mlp", in_features=8, hidden=list(hidden), num_classes=3,
                           dropout=dropout).double()
    probe = cv.data.batches(d.x_train[:48], d.y_train[:48], 32)  # two unequal batches
    return d, model, probe


def _batch(d, step: int, b: int = 16):
    i = (step * b) % (len(d.x_train) - b)
    return d.x_train[i:i + b], d.y_train[i:i + b]


def _dense_at(model, w, data):
    ref = copy.deepcopy(model)
    vector_to_parameters(w, ref.parameters())
    return cv.dense_hessian(ref, LF, data)


def _train(model, opt, d, steps, mon=None, create_graph=False, zero_based=False, before=False):
    """Returns the list of (step, w_t, batch) of the probed steps."""
    seen = []
    for k in range(steps):
        step = k if zero_based else k + 1
        x, y = _batch(d, k)
        w_t = parameters_to_vector(model.parameters()).detach().clone()
        if mon is not None and before:
            mon.before_step(step)

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = LF(model(x), y)
            loss.backward(create_graph=create_graph)
            return loss

        opt.step(closure)
        if mon is not None and mon.step(step, (x, y)) is not None:
            seen.append((step, w_t, (x, y)))
    return seen


def _rel(a, b):
    return abs(a - b) / abs(b)


def _monitor(model, probe, opt, every=2, **kw):
    return CurvatureMonitor(model, LF, probe, optimizer=opt, every=every, tol=1e-10,
                            trace_matvecs=100, progress=False, **kw)


def test_sam_truth_equals_dense_hessian_at_pre_step_weights():
    d, model, probe = _problem()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.5)
    mon = _monitor(model, probe, opt)
    seen = _train(model, opt, d, 4, mon)
    assert [s for s, _, _ in seen] == [2, 4]
    h = mon.history
    for (step, w_t, batch), (_, row) in zip(seen, h.iterrows()):
        Hf, Hb = _dense_at(model, w_t, probe), _dense_at(model, w_t, batch)
        ef, Vf = torch.linalg.eigh(Hf)
        eb, Vb = torch.linalg.eigh(Hb)
        assert _rel(row.lambda_max_full, float(ef[-1])) < 1e-9
        assert row.lambda_max_truth_full == row.lambda_max_full
        assert _rel(row.lambda_max_truth_batch, float(eb[-1])) < 1e-9
        assert _rel(row.trace_full, float(Hf.trace())) < 1e-10  # n = 63 <= trace_matvecs: exact
        # the truth is at w_t, not at the current weights w_{t+1}
        e_after = torch.linalg.eigvalsh(_dense_at(model, parameters_to_vector(model.parameters()), probe))
        if step == seen[-1][0]:
            assert _rel(float(e_after[-1]), float(ef[-1])) > 1e-4
    # the vector comparisons of the last probe (opt.estimates is the last step's)
    step, w_t, batch = seen[-1]
    row = h.iloc[-1]
    Hb = _dense_at(model, w_t, batch)
    u, est = opt.estimates["hvp_direction"], opt.estimates["hvp"]
    exact = Hb @ u
    assert _rel(row.hvp_rel_error, float((est - exact).norm() / exact.norm())) < 1e-8
    assert abs(row.hvp_cosine - float(est @ exact / (est.norm() * exact.norm()))) < 1e-10
    assert _rel(row.hvp_norm_ratio, float(est.norm() / exact.norm())) < 1e-10
    v1 = torch.linalg.eigh(Hb).eigenvectors[:, -1]
    assert abs(row.hvp_direction_top_cosine - abs(float(u @ v1))) < 1e-6
    assert row.lambda_max == opt.estimates["lambda_max"]


def test_adahessian_diag_truth_equals_dense_diagonal():
    d, model, probe = _problem(1)
    opt = AdaHessian(model.parameters(), lr=0.05, seed=3)
    mon = _monitor(model, probe, opt)
    seen = _train(model, opt, d, 2, mon, create_graph=True)
    step, w_t, batch = seen[-1]
    row = mon.history.iloc[-1]
    est = opt.estimates["hessian_diag"]
    for suffix, data in (("", batch), ("_full", probe)):
        exact = _dense_at(model, w_t, data).diagonal()
        assert _rel(row[f"hessian_diag_rel_error{suffix}"],
                    float((est - exact).norm() / exact.norm())) < 1e-8
        assert abs(row[f"hessian_diag_cosine{suffix}"]
                   - float(est @ exact / (est.norm() * exact.norm()))) < 1e-10


def test_sasgd_smoothness_truth_is_exact_secant():
    d, model, probe = _problem(2)
    opt = SASGD(model.parameters(), lr=0.3)
    mon = _monitor(model, probe, opt)
    seen = _train(model, opt, d, 4, mon)
    step, w_t, batch = seen[-1]
    row = mon.history.iloc[-1]
    dw = opt.estimates["smoothness_direction"]
    for name, data in (("batch", batch), ("full", probe)):
        H = _dense_at(model, w_t, data)
        assert _rel(row[f"smoothness_truth_{name}"], float((H @ dw).norm() / dw.norm())) < 1e-9
    assert _rel(row.lambda_max_batch, float(torch.linalg.eigvalsh(_dense_at(model, w_t, batch))[-1])) < 1e-9
    assert row.smoothness == opt.estimates["smoothness"]


def test_sgdhess_noise_truth_closed_form_ggn_and_per_example_variance():
    d, model, probe = _problem(3)
    opt = ExtendedSGDHess(model.parameters(), lr=0.1)
    mon = _monitor(model, probe, opt)
    seen = _train(model, opt, d, 2, mon)
    step, w_t, batch = seen[-1]
    B = len(batch[0])
    ref = copy.deepcopy(model)
    vector_to_parameters(w_t, ref.parameters())
    params = dict(ref.named_parameters())
    names = list(params)
    ggn = torch.zeros_like(w_t)
    grads = []
    for x, y in probe:
        for i in range(len(x)):
            def f(*ps, xi=x[i]):
                return torch.func.functional_call(ref, dict(zip(names, ps)), (xi[None],))[0]
            J = torch.autograd.functional.jacobian(f, tuple(params.values()))
            J = torch.cat([j.reshape(3, -1) for j in J], dim=1)  # [C, n]
            p = torch.softmax(f(*params.values()).detach(), 0)
            A = torch.diag(p) - torch.outer(p, p)  # closed-form softmax-CE output Hessian
            ggn += torch.einsum("ak,ab,bk->k", J, A, J)
            ref.zero_grad()
            LF(ref(x[i:i + 1]), y[i:i + 1]).backward()
            grads.append(parameters_to_vector([q.grad for q in ref.parameters()]).clone())
    ggn /= 48
    G = torch.stack(grads)
    var = G.var(0, unbiased=False)
    est = opt.estimates["noise_variance"]
    row = mon.history.iloc[-1]
    for suffix, truth in (("", ggn / B), ("_exact", var / B)):
        assert _rel(row[f"noise_variance_rel_error{suffix}"],
                    float((est - truth).norm() / truth.norm())) < 1e-8
        assert _rel(row[f"noise_variance_norm_ratio{suffix}"], float(est.norm() / truth.norm())) < 1e-8


@pytest.mark.parametrize("mode", ["hook", "before_step"])
def test_plain_sgd_truth_at_pre_step_weights(mode):
    d, model, probe = _problem(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mon = _monitor(model, probe, opt, every=3)
    if mode == "before_step":
        mon.close()
    seen = _train(model, opt, d, 6, mon, before=mode == "before_step")
    h = mon.history
    assert list(h.step) == [3, 6]
    assert set(h.columns) == {"step", "lambda_max_full", "trace_full", "probe_time_s"}
    for (_, w_t, _), (_, row) in zip(seen, h.iterrows()):
        Hf = _dense_at(model, w_t, probe)
        assert _rel(row.lambda_max_full, float(torch.linalg.eigvalsh(Hf)[-1])) < 1e-9
        assert _rel(row.trace_full, float(Hf.trace())) < 1e-10


def test_hook_snapshots_only_on_probe_steps(monkeypatch):
    d, model, probe = _problem(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = _monitor(model, probe, opt, every=3)
    calls = []
    orig = mon._flat_params
    monkeypatch.setattr(mon, "_flat_params", lambda: calls.append(1) or orig())
    assert mon.step(1, None) is None  # not probed: nothing happens
    calls.clear()
    mon._offset = 0
    mon._opt_calls = 0
    for step in range(1, 8):
        x, y = _batch(d, step)
        opt.zero_grad()
        LF(model(x), y).backward()
        opt.step()
        mon.step(step, (x, y))
    assert len(calls) == 2  # before steps 3 and 6 only
    assert list(mon.history.step) == [3, 6]


def test_zero_based_loop_warns_then_follows_the_numbering():
    d, model, probe = _problem(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mon = _monitor(model, probe, opt, every=3)
    with pytest.warns(UserWarning, match="no snapshot"):
        seen = _train(model, opt, d, 7, mon, zero_based=True)
    assert [s for s, _, _ in seen] == [0, 3, 6]
    for (_, w_t, _), (_, row) in list(zip(seen, mon.history.iterrows()))[1:]:
        Hf = _dense_at(model, w_t, probe)
        assert _rel(row.lambda_max_full, float(torch.linalg.eigvalsh(Hf)[-1])) < 1e-9


def _run(make_opt, *, monitor: bool, create_graph: bool, dropout: float):
    d, model, probe = _problem(5, dropout=dropout)
    opt = make_opt(model)
    mon = _monitor(model, probe, opt, every=2) if monitor else None
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(7)
    _train(model, opt, d, 5, mon, create_graph=create_graph)
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    return parameters_to_vector(model.parameters()).detach(), opt.state_dict(), rng, mon


@pytest.mark.parametrize("name", ["sam", "adahessian"])
def test_training_with_monitor_is_bit_identical(name):
    make = {
        "sam": lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.3, momentum=0.9),
        # seed=None: AdaHessian draws its probes from the global torch RNG
        "adahessian": lambda m: AdaHessian(m.parameters(), lr=0.05, seed=None),
    }[name]
    cg = name == "adahessian"
    w0, s0, r0, _ = _run(make, monitor=False, create_graph=cg, dropout=0.2)
    w1, s1, r1, mon = _run(make, monitor=True, create_graph=cg, dropout=0.2)
    assert len(mon.history) == 2
    assert torch.equal(w0, w1)
    assert torch.equal(r0[0], r1[0]) and np.array_equal(r0[1], r1[1]) and r0[2] == r1[2]
    for k, st in s0["state"].items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, s1["state"][k][key]), key


def test_probe_leaves_model_and_optimizer_untouched():
    d = cv.load_dataset("synthetic-classification:n_train=64,n_test=8,d=8,classes=3")
    torch.manual_seed(0)
    model = cv.build_model("mlp", in_features=8, hidden=[6], num_classes=3, batchnorm=True)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, model=model)
    mon = CurvatureMonitor(model, LF, (d.x_train[:32], d.y_train[:32]), optimizer=opt, every=1,
                           progress=False)
    x, y = d.x_train[32:48], d.y_train[32:48]

    def closure():
        opt.zero_grad()
        loss = LF(model(x), y)
        loss.backward()
        return loss

    model.train()
    model[2].eval()  # a mixed mode must survive too
    opt.step(closure)
    state = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    opt_state = copy.deepcopy(opt.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    row = mon.step(1, (x, y))
    assert row is not None and math.isfinite(row["lambda_max_full"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == modes
    assert [torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads)] == [True] * len(grads)
    for k, st in opt_state["state"].items():
        for key, v in st.items():
            assert torch.equal(v, opt.state_dict()["state"][k][key])


def test_history_csv_plot_and_progress(tmp_path):
    d, model, probe = _problem(6)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.3)
    mon = _monitor(model, probe, opt, every=1)
    _train(model, opt, d, 3, mon)
    h = mon.history
    for col in ("step", "lambda_max", "lambda_max_truth_batch", "lambda_max_truth_full",
                "hvp_rel_error", "hvp_cosine", "lambda_max_full", "trace_full"):
        assert col in h.columns
    p = mon.to_csv(tmp_path / "m.csv")
    back = pd.read_csv(p)
    assert list(back.columns) == list(h.columns) and np.allclose(back.lambda_max, h.lambda_max)
    mon.plot(tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_errors():
    d, model, probe = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="every must be a positive integer"):
        CurvatureMonitor(model, LF, probe, optimizer=opt, every=0)
    other = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="not parameters of the model"):
        CurvatureMonitor(model, LF, probe, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="optimizer must be"):
        CurvatureMonitor(model, LF, probe, optimizer="sgd")
    with pytest.raises(ValueError, match="data is empty"):
        CurvatureMonitor(model, LF, [], optimizer=opt)
    with pytest.raises(TypeError, match="model must be"):
        CurvatureMonitor(lambda x: x, LF, probe)


def test_exact_diagonal_and_preserved_rng():
    A = torch.randn(37, 37, dtype=torch.float64)
    A = A + A.T
    assert torch.equal(exact_diagonal(cv.DenseOperator(A), block_size=8), A.diagonal())
    state = torch.get_rng_state()
    with preserved_rng():
        torch.randn(5)
        np.random.rand()
    assert torch.equal(torch.get_rng_state(), state)


def test_online_eigen_sam_follows_sam_and_finds_lambda_max():
    d, model, probe = _problem(7)
    m2 = copy.deepcopy(model)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.3)
    eig = OnlineEigenSAM(m2.parameters(), torch.optim.SGD, rho=0.05, lr=0.3, seed=0)
    for k in range(4):
        x, y = _batch(d, k)
        for mdl, opt in ((model, sam), (m2, eig)):
            def closure(mdl=mdl, opt=opt, x=x, y=y):
                opt.zero_grad()
                loss = LF(mdl(x), y)
                loss.backward()
                return loss
            opt.step(closure)
    assert torch.equal(parameters_to_vector(model.parameters()), parameters_to_vector(m2.parameters()))
    # weights frozen (lr = 0) on one batch: a power iteration -> |lambda| max of that Hessian
    x, y = _batch(d, 0, 48)
    opt = OnlineEigenSAM(m2.parameters(), torch.optim.SGD, rho=0.05, lr=0.0, beta=1.0,
                         eig_rho=1e-5, seed=1)

    def closure():
        opt.zero_grad()
        loss = LF(m2(x), y)
        loss.backward()
        return loss

    for _ in range(150):
        opt.step(closure)
    ev = torch.linalg.eigvalsh(cv.dense_hessian(m2, LF, (x, y)))
    top = float(ev[ev.abs().argmax()])
    assert _rel(opt.estimates["lambda_max"], abs(top)) < 1e-3
    # the Rayleigh-quotient read-out converges to the signed eigenvalue
    opt = OnlineEigenSAM(m2.parameters(), torch.optim.SGD, rho=0.05, lr=0.0, beta=1.0,
                         eig_rho=1e-5, estimate="rayleigh", seed=1)
    for _ in range(150):
        opt.step(closure)
    assert _rel(opt.estimates["lambda_max"], top) < 1e-3
    with pytest.raises(ValueError, match="beta"):
        OnlineEigenSAM(m2.parameters(), torch.optim.SGD, beta=0.0, lr=0.1)
    with pytest.raises(ValueError, match="estimate"):
        OnlineEigenSAM(m2.parameters(), torch.optim.SGD, estimate="max", lr=0.1)
