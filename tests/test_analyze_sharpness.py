"""Adaptive sharpness in the post-hoc analysis (metric ``"sharpness"`` of
:func:`curvature.pipeline.analyze`): the same numbers as :func:`curvature.adaptive_sharpness`
on the same data and seed, the closed form of a linear regression, several batches and
dict inputs, the report and summary, the budget, and the model left as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_gpt2
from torch import nn

import curvature as cv
from curvature.cli import main
from curvature.data import load_dataset
from curvature.pipeline import analyze, write_analysis
from curvature.pipeline import compute as compute_module
from curvature.pipeline.plan import Costs

SMALL = {"sharpness_steps": 4, "sharpness_samples": 6, "sharpness_rho": 0.05}


def _mlp_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (48,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    data = [(x[:20], y[:20]), (x[20:], y[20:])]  # two batches of unequal size
    return model, nn.CrossEntropyLoss(), data


def test_analyze_equals_adaptive_sharpness_on_the_same_data_and_seed():
    model, loss, data = _mlp_problem()
    a = analyze(model, loss, data, metrics=("sharpness",), seed=3, sharpness_eta=0.01, **SMALL)
    got = a.splits["train"].sharpness
    for kind in ("worst", "average"):
        direct = cv.adaptive_sharpness(model, loss, data, rho=0.05, kind=kind, steps=4,
                                       samples=6, eta=0.01, seed=3)
        assert got[kind].value == pytest.approx(direct.value, rel=1e-12, abs=1e-15)
        assert got[kind].stderr == pytest.approx(direct.stderr, rel=1e-12, abs=1e-15)
        assert got[kind].evaluations == direct.evaluations
    assert got["worst"].value > 0 and got["average"].stderr > 0
    # several batches are the batch-size weighted mean: one concatenated batch agrees
    whole = (torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data]))
    one = cv.adaptive_sharpness(model, loss, whole, rho=0.05, kind="average", samples=6,
                                eta=0.01, seed=3)
    assert one.value == pytest.approx(got["average"].value, rel=1e-9, abs=1e-13)
    assert a.splits["train"].top is None and a.splits["train"].trace is None
    # a DataLoader over the same examples in the same batches: the same numbers
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*whole), batch_size=20, shuffle=False)
    d = analyze(model, loss, loader, metrics=("sharpness",), seed=3, sharpness_eta=0.01, **SMALL)
    for kind in ("worst", "average"):
        assert d.splits["train"].sharpness[kind].value == pytest.approx(got[kind].value,
                                                                        rel=1e-12, abs=1e-15)


def _regression(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(60, 12, generator=g, dtype=torch.float64)
    y = X @ torch.linspace(-2.0, 3.0, 12, dtype=torch.float64) + 0.3 * torch.randn(
        60, generator=g, dtype=torch.float64)
    model = nn.Linear(12, 1, bias=False).double()
    data = [(X[:25], y[:25, None]), (X[25:], y[25:, None])]
    A = 2.0 / 60 * X.T @ X  # Hessian of the mean squared error over all 60 examples
    return model, nn.MSELoss(), data, A, X, y


def _at_least_squares(model, X, y):
    w_star = torch.linalg.lstsq(X, y[:, None]).solution.reshape(1, -1)
    with torch.no_grad():
        model.weight.copy_(w_star)
    return w_star


def test_average_case_matches_the_linear_regression_closed_form():
    """``L`` quadratic in ``w``: ``E L(w + c u) - L(w) = rho^2 / 2 sum_i c_i^2 A_ii``
    (the linear term averages out; at the least-squares minimum it vanishes, so the
    Monte-Carlo error is small enough for a tight check)."""
    model, loss, data, A, X, y = _regression()
    _at_least_squares(model, X, y)
    rho, eta = 0.1, 0.3
    c = model.weight.detach().reshape(-1).abs() + eta
    truth = 0.5 * rho**2 * float((c**2 * torch.diagonal(A)).sum())
    a = analyze(model, loss, data, metrics=("sharpness",), sharpness_rho=rho,
                sharpness_eta=eta, sharpness_steps=2, sharpness_samples=400, seed=1)
    avg = a.splits["train"].sharpness["average"]
    assert abs(avg.value - truth) < 4 * avg.stderr
    assert avg.stderr < 0.04 * truth  # eta left out (-26%) would fail


def test_worst_case_matches_the_closed_form_at_the_least_squares_minimum():
    """At ``w*`` the worst case is ``rho^2 / 2 lambda_max(C A C)``; the ascent's value is a
    lower bound of it and close after enough steps."""
    model, loss, data, A, X, y = _regression(seed=2)
    w_star = _at_least_squares(model, X, y)
    rho = 0.2
    C = torch.diag(w_star.reshape(-1).abs())
    truth = 0.5 * rho**2 * float(np.linalg.eigvalsh((C @ A @ C).numpy()).max())
    a = analyze(model, loss, data, metrics=("sharpness",), sharpness_rho=rho,
                sharpness_steps=60, sharpness_samples=2, seed=0)
    worst = a.splits["train"].sharpness["worst"]
    assert worst.value <= truth * (1 + 1e-9)
    assert worst.value == pytest.approx(truth, rel=1e-3)


class DictSeq(nn.Module):
    """Takes ``{"x": [B, T, 3], "mask": [B, T]}`` and averages the masked positions."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(3, 5)
        self.l2 = nn.Linear(5, 2)

    def forward(self, batch):
        h = torch.tanh(self.l1(batch["x"]))
        m = batch["mask"].unsqueeze(-1).to(h.dtype)
        return self.l2((h * m).sum(1) / m.sum(1))


def test_dict_inputs_of_different_lengths_in_analyze_and_directly():
    """Batches of dict inputs whose sequence lengths differ (padding per batch, as HF
    collators do) cannot be concatenated; they are not: each is its own pass term."""
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    model = DictSeq().double()
    data = []
    for n, t in ((6, 3), (9, 5)):
        mask = torch.ones(n, t, dtype=torch.long)
        mask[0, -1] = 0
        data.append(({"x": torch.randn(n, t, 3, generator=g, dtype=torch.float64),
                      "mask": mask}, torch.randint(0, 2, (n,), generator=g)))
    loss = nn.CrossEntropyLoss()
    a = analyze(model, loss, data, metrics=("sharpness",), seed=2, **SMALL)
    r = a.splits["train"].sharpness
    direct = cv.adaptive_sharpness(model, loss, data, rho=0.05, kind="worst", steps=4, seed=2)
    assert r["worst"].value == pytest.approx(direct.value, rel=1e-12)
    assert r["worst"].value > 0 and r["average"].stderr > 0


def test_hf_gpt2_batch_encodings_of_different_lengths():
    """A tiny random GPT-2 behind a wrapper taking one BatchEncoding (the project's HF
    convention), two batches of different sequence lengths, left in train mode."""
    transformers = pytest.importorskip("transformers")
    model, lm_loss = tiny_gpt2()
    gpt = model.model.train()

    g = torch.Generator().manual_seed(0)
    data = []
    for n, t in ((3, 5), (4, 7)):
        ids = torch.randint(0, 11, (n, t), generator=g)
        enc = transformers.BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        data.append((enc, ids))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = analyze(model, lm_loss, data, metrics=("sharpness",), sharpness_steps=3,
                sharpness_samples=4)
    direct = cv.adaptive_sharpness(model, lm_loss, data, rho=0.05, kind="worst", steps=3)
    assert a.splits["train"].sharpness["worst"].value == pytest.approx(direct.value, rel=1e-12)
    assert direct.value > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and gpt.transformer.h[0].training


def test_summary_and_report_contain_it_only_when_it_ran(tmp_path):
    model, loss, data = _mlp_problem(seed=1)
    a = analyze(model, loss, data, test_data=data[0], metrics=("trace", "sharpness"),
                trace_matvecs=8, **SMALL)
    write_analysis(a, tmp_path / "with", figures=False)
    s = json.loads((tmp_path / "with" / "summary.json").read_text())
    sh = s["splits"]["train"]["sharpness"]
    assert s["sharpness_worst"] == sh["worst"] == a.splits["train"].sharpness["worst"].value
    assert s["sharpness_average"] == sh["average"] and s["sharpness_rho"] == 0.05
    assert s["sharpness_eta"] == 0.0 and s["sharpness_average_stderr"] > 0
    assert "lower bound" in sh["worst_note"] and sh["worst_steps"] == 4
    assert "sharpness" not in s["splits"]["test"]  # training split only
    assert s["config"]["sharpness_samples"] == 6
    report = (tmp_path / "with" / "report.md").read_text()
    assert "adaptive sharpness, worst case (lower bound)" in report
    row = next(line for line in report.splitlines() if "average case |" in line)
    assert f"{sh['average']:.4g} ± {sh['average_stderr']:.2g}" in row
    assert "ρ = 0.05, η = 0" in report and "lower bound of the maximum" in report

    b = analyze(model, loss, data, metrics=("trace",), trace_matvecs=8)
    write_analysis(b, tmp_path / "without", figures=False)
    s = json.loads((tmp_path / "without" / "summary.json").read_text())
    assert not any(k.startswith("sharpness") for k in s) and "sharpness_rho" not in s["config"]
    assert "sharpness" not in (tmp_path / "without" / "report.md").read_text()


def test_a_budget_that_cannot_afford_it_reports_skipped_budget(monkeypatch, tmp_path):
    """Gradients of 100 s: the least useful sharpness (2 ascent steps, 5 draws) needs
    about 1000 s, far beyond a 60 s budget; the trace still runs."""

    def fake(ops, **_):
        return Costs(product_s={"train": 1.0}, gradient_s={"train": 100.0},
                     loss_s={"train": 100.0})

    monkeypatch.setattr(compute_module, "measure_costs", fake)
    model, loss, data = _mlp_problem(seed=2)
    a = analyze(model, loss, data, metrics=("trace", "sharpness"), budget=60, trace_matvecs=8)
    assert a.plan["train/sharpness"].status == "skipped: budget"
    assert a.plan["train/trace"].status == "ran" and a.splits["train"].sharpness is None
    write_analysis(a, tmp_path / "out", figures=False)
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "sharpness_worst" not in s
    assert [i["status"] for i in s["plan"]["items"] if i["name"] == "train/sharpness"] == [
        "skipped: budget"]
    report = (tmp_path / "out" / "report.md").read_text()
    row = next(line for line in report.splitlines() if "worst case (lower bound)" in line)
    assert "skipped: budget" in row
    # an affordable budget shrinks it towards its least useful size instead
    monkeypatch.setattr(compute_module, "measure_costs", lambda ops, **_: Costs(
        product_s={"train": 1.0}, gradient_s={"train": 1.0}, loss_s={"train": 1.0}))
    c = analyze(model, loss, data, metrics=("trace", "sharpness"), budget=60, trace_matvecs=40)
    it = c.plan["train/sharpness"]
    assert it.status == "ran" and it.settings["steps"] < 10 and it.settings["samples"] < 20
    assert c.splits["train"].sharpness["worst"].steps == it.settings["steps"]


class Exploding(nn.Module):
    """A loss that overflows far from the weights: ``exp(50 * mean(out^2))``."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(3, 1)

    def forward(self, x):
        return torch.exp(50 * self.l(x).pow(2).mean())


def test_a_non_finite_perturbed_loss_is_refused_and_reported(tmp_path):
    torch.manual_seed(0)
    model = Exploding().double()
    with torch.no_grad():
        model.l.weight.fill_(0.1)
        model.l.bias.fill_(0.0)
    x = torch.full((4, 3), 0.1, dtype=torch.float64)
    data = (x, torch.zeros(4, 1, dtype=torch.float64))

    def loss(out, _y):
        return out

    with pytest.raises(ValueError, match="rho = 1000 is too large"):
        cv.adaptive_sharpness(model, loss, data, rho=1000.0, kind="average", samples=3)
    a = analyze(model, loss, data, metrics=("sharpness",), sharpness_rho=1000.0,
                sharpness_steps=2, sharpness_samples=3)
    assert "too large" in a.splits["train"].sharpness["error"]
    write_analysis(a, tmp_path / "out", figures=False)
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "too large" in s["splits"]["train"]["sharpness"]["error"]
    assert "sharpness_worst" not in s
    assert "adaptive sharpness failed" in (tmp_path / "out" / "report.md").read_text()


def test_weights_buffers_and_modes_are_restored():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(6, 2)).double()
    model.train()
    model[1].eval()  # mixed modes must come back as they were
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 2, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    loss = nn.CrossEntropyLoss()
    for kind in ("worst", "average"):
        cv.adaptive_sharpness(model, loss, [(x[:8], y[:8]), (x[8:], y[8:])], rho=0.1,
                              kind=kind, steps=3, samples=3)
    analyze(model, loss, (x, y), metrics=("sharpness",), **SMALL)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics too
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def test_cli_analyze_computes_it_like_the_function(tmp_path, capsys):
    data = "digits:n_train=60,n_test=20"
    torch.manual_seed(0)
    model = cv.models.mlp(hidden=(6,))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "out"
    code = main(["analyze", str(tmp_path / "w.pt"), "--model", "mlp", "--model-kwargs",
                 '{"hidden": [6]}', "--data", data, "--metrics", "sharpness", "--no-test",
                 "--sharpness-rho", "0.03", "--sharpness-eta", "0.01", "--sharpness-steps",
                 "3", "--sharpness-samples", "4", "--out", str(out), "-q"])
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    ds = load_dataset(data)
    direct = cv.adaptive_sharpness(model.double(), nn.CrossEntropyLoss(),
                                   (ds.x_train.double(), ds.y_train), rho=0.03, eta=0.01,
                                   kind="worst", steps=3)
    assert s["sharpness_worst"] == pytest.approx(direct.value, rel=1e-9)
    assert s["sharpness_rho"] == 0.03 and s["sharpness_eta"] == 0.01
    assert main(["analyze", "w.pt", "--out", "o", "--sharpness-eta", "-1"]) == 2
    assert "--sharpness-eta" in capsys.readouterr().err
