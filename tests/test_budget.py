"""The budgeted analysis (:mod:`curvature.pipeline.plan`): budget parsing, the planner's
split, honest reporting of what a budget cuts, the report's contents and warnings, and
plain-text progress labels.

Timings are machine-dependent, so the analyses here replace the measured costs by fixed
ones (``measure_costs`` patched): the plan, and with it every number, is then
deterministic. Eigenvalues are checked against the dense float64 Hessian.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import curvature as cv
from curvature.cli import main
from curvature.data import DATASETS, load_dataset
from curvature.errors import ConvergenceWarning, InputError
from curvature.models import MODELS
from curvature.pipeline import AnalysisConfig, analyze, make_loss, write_analysis
from curvature.pipeline import compute as compute_module
from curvature.pipeline.plan import Costs, make_plan, parse_budget

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def problem():
    ds = load_dataset("digits:n_train=120,n_test=40")
    torch.manual_seed(0)
    model = cv.models.mlp(hidden=(8,))
    return model, make_loss("ce"), (ds.x_train, ds.y_train), (ds.x_test, ds.y_test)


@pytest.fixture(scope="module")
def spectrum(problem):
    model, loss, train, _ = problem
    H = cv.dense_hessian(model.double(), loss, (train[0].double(), train[1]))
    model.float()
    return torch.linalg.eigvalsh(H)  # ascending


def fixed_costs(monkeypatch, product_s: float = 1.0, evaluation_s: float = 0.01) -> None:
    """Replace the measured costs by fixed ones (a product takes ``product_s`` seconds)."""

    def fake(ops, *, evaluate=None, per_layer_width=0, **_):
        splits = list(ops)
        return Costs(product_s=dict.fromkeys(splits, product_s),
                     gradient_s=dict.fromkeys(splits, product_s / 2),
                     evaluation_s=dict.fromkeys(splits, evaluation_s) if evaluate else {},
                     column_s=product_s if per_layer_width else None,
                     pass_s=0.0 if per_layer_width else None)

    monkeypatch.setattr(compute_module, "measure_costs", fake)


# ------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, seconds", [("90s", 90.0), ("5m", 300.0), ("1h", 3600.0),
                                           ("300", 300.0), ("1.5m", 90.0), (" 2 min ", 120.0),
                                           (45, 45.0), (None, None)])
def test_budget_parsing(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["5x", "", "m", "-3", "0", "0s", "1e9q", "five minutes", True])
def test_bad_budget_is_one_clear_error(text):
    with pytest.raises(InputError, match="budget"):
        parse_budget(text)
    with pytest.raises(InputError, match="budget"):
        AnalysisConfig(budget=text)


def test_config_and_cli_take_durations(capsys):
    assert AnalysisConfig(budget="5m").budget == 300.0
    assert main(["analyze", "x.pt", "--out", "o", "--budget", "5 parsecs"]) == 2
    err = capsys.readouterr().err
    assert "--budget" in err and "5 parsecs" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------- the split


def test_plan_keeps_every_setting_when_affordable_and_shares_a_short_budget():
    config = AnalysisConfig()
    costs = Costs(product_s={"train": 0.01, "test": 0.01}, gradient_s={"train": 0.005},
                  evaluation_s={"train": 0.001, "test": 0.001})
    full = make_plan(config, costs, num_params=1000, k=5, splits=("train", "test"))
    assert full.budget_rule == "default"
    assert full["train/eigenvalues_largest"].settings == {"max_matvecs": 1000}
    assert full["train/trace"].settings == {"num_matvecs": 90}
    assert full["test/density"].settings == {"num_probes": 8, "num_steps": 60}
    assert full["train/landscape"].settings == {"points": 41, "grid": 25}
    assert all(it.status == "planned" for it in full.items)

    short = make_plan(config, costs, num_params=1000, k=5, splits=("train", "test"),
                      budget_s=8.0)
    assert short.seconds <= 8.0 + 1e-9
    for it in short.items:  # a budget only lowers settings
        for key, value in (it.settings or {}).items():
            assert value <= it.cap.get(key, value) if key in it.cap else True
    assert short["train/eigenvalues_largest"].planned > short["test/eigenvalues_largest"].planned
    assert short["train/eigenvalues_largest"].planned > short["train/trace"].planned

    for budget in (1.0, 2.0, 4.0, 8.0):  # the test split gives way first
        plan = make_plan(config, costs, num_params=1000, k=5, splits=("train", "test"),
                         budget_s=budget)
        skipped = {it.name for it in plan.items if it.status == "skipped: budget"}
        if any(n.startswith("train/") for n in skipped):
            assert all(it.name in skipped for it in plan.items if it.split == "test"), budget
        assert "train/eigenvalues_largest" not in skipped or budget < 0.1

    # 3 products: fewer than lambda_max alone (5) or Hutch++ (4) needs
    tiny = make_plan(config, costs, num_params=1000, k=5, splits=("train",), budget_s=0.03)
    assert all(it.status == "skipped: budget" and it.planned == 0 for it in tiny.items)
    assert "skipped for the budget" in tiny.line()


def test_default_budget_is_capped_for_expensive_products():
    config = AnalysisConfig(per_layer=True)
    costs = Costs(product_s={"train": 5.0}, gradient_s={"train": 2.0},
                  evaluation_s={"train": 1.0}, column_s=3.0, pass_s=2.0)
    plan = make_plan(config, costs, num_params=11_000_000, k=5, splits=("train",),
                     block_dims=[1000] * 60, probe_columns=2)
    assert plan.budget_s == pytest.approx(900.0)  # 10 minutes x 1.5 with per-layer
    assert plan.seconds <= 900.0
    assert plan["train/eigenvalues_largest"].planned >= 40
    line = plan.line()
    assert line.startswith("plan: up to ") and "5 s each" in line and "= 2.5 gradients" in line


# ------------------------------------------------------------------ honest results


def test_tiny_budget_reports_not_converged_never_wrong(problem, spectrum, monkeypatch):
    model, loss, train, _ = problem
    fixed_costs(monkeypatch, product_s=1.0)
    a = analyze(model, loss, train, budget=60, metrics=("eigenvalues", "trace", "density",
                                                         "landscape"))
    res, plan = a.splits["train"], a.plan
    assert plan.seconds <= 60
    truth_top, truth_bottom = spectrum.flip(0).double(), spectrum.double()
    checked = 0
    for r, truth in ((res.top, truth_top), (res.bottom, truth_bottom)):
        assert r is not None and r.num_matvecs <= 60
        for i, ok in enumerate(r.converged_mask.tolist()):
            if ok:  # a pair called converged is right (error <= residual)
                assert abs(float(r.values[i]) - float(truth[i])) <= float(r.residuals[i]) + 1e-10
                checked += 1
    # the budget cut something, and says so
    assert not (res.top.converged and res.bottom.converged)
    assert any("eigenvalues (lanczos)" in w for w in res.warnings)
    land = plan["train/landscape"].settings  # landscapes shrink to their share
    assert land["grid"] < 25 and land["points"] <= 41 and plan["train/landscape"].status == "ran"
    assert len(res.planes["random"].coords[0]) == land["grid"]
    assert res.trace is not None and res.trace.num_matvecs == plan["train/trace"].used
    s = a.summary()
    assert s["plan"]["items"][0]["used"] == res.top.num_matvecs


def test_generous_budget_gives_todays_eigenvalues(problem, spectrum):
    model, loss, train, _ = problem
    a = analyze(model, loss, train, budget="1h", metrics=("eigenvalues",), top_k=3)
    op = cv.HessianOperator(model, loss, train, dtype=torch.float64)
    for which, r in (("largest", a.splits["train"].top), ("smallest", a.splits["train"].bottom)):
        direct = cv.eigenvalues(op, 3, which=which, tol=1e-5, max_matvecs=1000, seed=0)
        assert r.converged and direct.converged
        assert r.values.tolist() == pytest.approx(direct.values.tolist(), rel=1e-9, abs=1e-12)
    assert a.splits["train"].top.values.tolist() == pytest.approx(
        spectrum.flip(0)[:3].tolist(), rel=1e-6)
    assert all(it.settings == {"max_matvecs": 1000} for it in a.plan.items)


# ---------------------------------------------------------------------- the report


def test_report_lists_only_metrics_that_ran(problem, tmp_path, monkeypatch):
    model, loss, train, test = problem
    a = analyze(model, loss, train, test_data=test, metrics=("eigenvalues",), top_k=2)
    out = write_analysis(a, tmp_path / "only_eig", figures=False)
    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert "Lanczos" in report and "λ_max" in report
    for absent in ("Hutch++", "SLQ", "Landscapes", "trace (Hutch++)", "density"):
        assert absent not in report, absent
    for key in ("trace_matvecs", "density_probes", "density_steps", "landscape_points"):
        assert key not in summary["config"], key
    assert summary["config"]["top_k"] == 2 and summary["config"]["metrics"] == ["eigenvalues"]
    assert "## Budget" in report and "| eigenvalues largest | test | ran |" in report

    fixed_costs(monkeypatch, product_s=1.0, evaluation_s=1.0)
    cut = analyze(model, loss, train, metrics=("trace", "landscape"), budget=30)
    report = (write_analysis(cut, tmp_path / "cut", figures=False) / "report.md").read_text()
    assert "| landscape | train | skipped: budget |" in report


class ChattyMLP(nn.Module):
    """An MLP whose forward warns like a third-party library (transformers' sdpa notice,
    a deprecation)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = cv.models.mlp(hidden=(8,))

    def forward(self, x):
        warnings.warn("sdpa attention does not support output_attentions", UserWarning,
                      stacklevel=2)
        warnings.warn("`foo` is deprecated", DeprecationWarning, stacklevel=2)
        return self.net(x)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_only_curvatures_own_warnings_are_recorded(problem):
    _, loss, train, _ = problem
    torch.manual_seed(0)
    model = ChattyMLP()
    with pytest.warns(UserWarning, match="sdpa"):  # still shown to the caller
        a = analyze(model, loss, train, metrics=("eigenvalues",), max_matvecs=12, top_k=2,
                    budget="1h")
    recorded = a.splits["train"].warnings
    assert any("eigenvalues (lanczos)" in w for w in recorded)  # a ConvergenceWarning
    assert not any("sdpa" in w or "deprecated" in w for w in recorded), recorded
    assert issubclass(ConvergenceWarning, cv.errors.CurvatureWarning)


# ------------------------------------------------------------------ labels and help


def test_progress_labels_are_plain_text(problem, capsys):
    for path in (ROOT / "curvature").rglob("*.py"):
        for m in re.finditer(r"desc=(f?\"[^\"]*\"|f?'[^']*')", path.read_text()):
            assert "$" not in m.group(1) and "\\" not in m.group(1), (path, m.group(1))
    model, loss, train, _ = problem
    analyze(model, loss, train, metrics=("eigenvalues", "landscape"), top_k=2,
            landscape_points=5, landscape_grid=3, per_layer=True, max_matvecs=40,
            progress=True)
    err = capsys.readouterr().err
    assert "plan: up to " in err
    assert "$" not in err and "\\lambda" not in err
    bars = {line.split(":")[0] for line in re.split(r"[\r\n]", err) if "%|" in line}
    assert bars and bars <= {"curvature analysis", "train"}, bars  # one bar, no inner ones
    done, total = re.findall(r"(\d+)/(\d+) products", err)[-1]
    assert done == total  # the total was honest: the bar ends full


def test_analyze_help_documents_data_zoo_and_budget(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = capsys.readouterr().out
    for name in [*MODELS, *DATASETS]:
        assert name in text, name
    assert "--data syntax" in text and "--budget" in text and "5m" in text
    assert "at most 10" in text


def test_per_layer_is_shrunk_to_its_share_and_stays_honest(problem, monkeypatch):
    model, loss, train, _ = problem
    fixed_costs(monkeypatch, product_s=1.0)
    a = analyze(model, loss, train, metrics=("trace",), per_layer=True, budget=100)
    item = a.plan["train/per_layer"]
    assert item.status == "ran" and item.settings["max_steps"] < 300
    assert item.settings["trace_matvecs"] < 90
    assert a.per_layer.num_matvecs <= item.planned  # converged blocks leave early
    names = [p for b in a.per_layer for p in b.params]
    H = cv.dense_hessian(model.double(), loss, (train[0].double(), train[1]), params=names)
    model.float()
    start = 0
    for block in a.per_layer:
        Hb = H[start:start + block.num_params, start:start + block.num_params]
        start += block.num_params
        ev = torch.linalg.eigvalsh(Hb)
        assert block.lanczos_steps <= item.settings["max_steps"]
        if block.converged_max:  # converged means right; otherwise it says so
            assert float(block.top[0]) == pytest.approx(float(ev[-1]), rel=1e-4)
    assert a.plan.seconds <= 100


def test_a_late_run_is_cut_to_the_time_left_under_a_given_budget():
    config = AnalysisConfig(metrics=("eigenvalues", "trace"))
    costs = Costs(product_s={"train": 1.0}, gradient_s={"train": 0.5})
    plan = make_plan(config, costs, num_params=1000, k=2, splits=("train",), budget_s=100)
    planned = plan["train/eigenvalues_largest"].planned
    on_time = plan.grant("train/eigenvalues_largest", elapsed=0.0)
    assert on_time.settings == {"max_matvecs": planned}
    plan.spend("train/eigenvalues_largest", planned)
    smallest = plan["train/eigenvalues_smallest"].planned
    late = plan.grant("train/eigenvalues_smallest", elapsed=100 - 0.5 * (100 - planned))
    assert late.settings["max_matvecs"] < smallest  # products ran slow: less than planned
    plan.spend("train/eigenvalues_smallest", late.settings["max_matvecs"])
    assert plan.grant("train/trace", elapsed=99.9).status == "skipped: budget"
    default = make_plan(config, costs, num_params=1000, k=2, splits=("train",))
    first = default["train/eigenvalues_largest"].planned
    assert default.grant("train/eigenvalues_largest", elapsed=1e6).settings == {
        "max_matvecs": first}  # a default budget is never cut by the clock


def test_slow_products_plan_per_layer_columns_without_a_wide_product(problem, monkeypatch):
    """Above WIDE_MEASURE_LIMIT_S no wide product is run: a per-layer column is planned as
    the second backward of the timed one-column product; below it, the wide product is
    measured."""
    from curvature.pipeline import costs as costs_module

    model, loss, train, _ = problem
    op = cv.HessianOperator(model, loss, [train])
    widths = []
    real = costs_module.product_seconds

    def counting(op_, width=1, seed=0, parts=None):
        widths.append(width)
        return real(op_, width, seed, parts)

    monkeypatch.setattr(costs_module, "product_seconds", counting)
    monkeypatch.setattr(costs_module, "WIDE_MEASURE_LIMIT_S", 0.0)
    slow = costs_module.measure_costs({"train": op}, per_layer_width=4)
    assert widths == [1]
    # a column is the timed product's second backward, the pass the rest of it
    assert 0 < slow.column_s < slow.product_s["train"] and slow.pass_s > 0
    assert slow.column_s + slow.pass_s == pytest.approx(slow.product_s["train"])
    widths.clear()
    monkeypatch.setattr(costs_module, "WIDE_MEASURE_LIMIT_S", float("inf"))
    fast = costs_module.measure_costs({"train": op}, per_layer_width=4)
    assert widths == [1, 4]
    assert fast.column_s is not None and fast.column_s > 0


def test_a_slow_first_product_is_timed_once(problem, monkeypatch):
    """Above WIDE_MEASURE_LIMIT_S the first product's time is the measurement (no second
    product); below it the first product is a warm-up and the warm ones are timed."""
    from curvature.pipeline import costs as costs_module

    model, loss, train, _ = problem
    op = cv.HessianOperator(model, loss, [train])
    monkeypatch.setattr(costs_module, "WIDE_MEASURE_LIMIT_S", 0.0)
    before = op.num_matvecs
    parts: dict[str, float] = {}
    t = costs_module.product_seconds(op, 1, 0, parts)
    assert op.num_matvecs - before == 1 and t > 0
    assert parts["second_backward"] + parts["pass"] == pytest.approx(t)
    monkeypatch.setattr(costs_module, "WIDE_MEASURE_LIMIT_S", float("inf"))
    before = op.num_matvecs
    costs_module.product_seconds(op, 1, 0)
    assert op.num_matvecs - before >= 2


def test_slow_products_reuse_the_analysis_gradient_and_forward_times(problem, monkeypatch):
    """Above WIDE_MEASURE_LIMIT_S the gradient and a landscape point are not timed again:
    the analysis' first gradient and its forward pass stand in; below it they are timed."""
    from curvature.pipeline import costs as costs_module

    model, loss, train, _ = problem
    op = cv.HessianOperator(model, loss, [train])
    timed = []
    monkeypatch.setattr(costs_module, "gradient_seconds", lambda op_: timed.append("g") or 0.5)
    evaluate = lambda: timed.append("point") or 0.25  # noqa: E731
    monkeypatch.setattr(costs_module, "WIDE_MEASURE_LIMIT_S", 0.0)
    slow = costs_module.measure_costs({"train": op}, evaluate=evaluate,
                                      gradient_s=7.0, forward_s=3.0)
    assert timed == [] and slow.gradient_s["train"] == 7.0
    assert slow.evaluation_s["train"] == 3.0
    monkeypatch.setattr(costs_module, "WIDE_MEASURE_LIMIT_S", float("inf"))
    fast = costs_module.measure_costs({"train": op}, evaluate=evaluate,
                                      gradient_s=7.0, forward_s=3.0)
    assert timed == ["g", "point"]
    assert fast.gradient_s["train"] == 0.5 and fast.evaluation_s["train"] == 0.25


def test_a_budget_too_short_for_k_eigenvalues_computes_lambda_max_alone(problem, spectrum,
                                                                        monkeypatch):
    """Below ``max(2k, 10)`` products the largest end runs with ``top_k`` 1 (at least 5
    products) instead of being skipped; the report says so, and a converged lambda_max is
    the dense Hessian's."""
    model, loss, train, _ = problem
    fixed_costs(monkeypatch, product_s=1.0)
    a = analyze(model, loss, train, budget=8, metrics=("eigenvalues",), top_k=5, tol=1e-3)
    item = a.plan["train/eigenvalues_largest"]
    assert item.settings["top_k"] == 1 and 5 <= item.settings["max_matvecs"] < 10
    assert a.plan["train/eigenvalues_smallest"].status == "skipped: budget"
    top = a.splits["train"].top
    assert top.values.numel() == 1 and top.num_matvecs <= item.settings["max_matvecs"]
    if top.converged:
        assert abs(float(top.values[0]) - float(spectrum[-1])) <= float(top.residuals[0]) + 1e-10
    enough = make_plan(AnalysisConfig(top_k=5), a.plan.costs, num_params=1000, k=5,
                       splits=("train",), budget_s=100)
    assert "top_k" not in enough["train/eigenvalues_largest"].settings


def test_a_metric_that_cannot_run_on_the_whole_budget_takes_nothing_from_the_others():
    """Per-layer spectra that need more than the whole budget (a heavy weight) must not
    push lambda_max out: they are skipped first, and lambda_max gets the time."""
    config = AnalysisConfig(per_layer=True)
    costs = Costs(product_s={"train": 27.0}, gradient_s={"train": 11.0},
                  evaluation_s={"train": 3.0}, column_s=27.0, pass_s=0.0)
    plan = make_plan(config, costs, num_params=11_000_000, k=5, splits=("train",),
                     block_dims=[1_000_000] * 7, budget_s=232.0)
    assert plan["train/per_layer"].status == "skipped: budget"
    top = plan["train/eigenvalues_largest"]
    assert top.status == "planned" and top.settings == {"max_matvecs": 8, "top_k": 1}


def test_least_useful_sizes_come_first_then_shares():
    """With room for per-layer spectra's least size (3 lockstep steps) and lambda_max's,
    both run although per-layer's weighted share alone would be too small; the rest goes
    by weight, and the plan stays within the budget."""
    config = AnalysisConfig(per_layer=True)
    costs = Costs(product_s={"train": 30.0}, gradient_s={"train": 11.0},
                  evaluation_s={"train": 3.0}, column_s=19.0, pass_s=10.0)
    plan = make_plan(config, costs, num_params=11_000_000, k=5, splits=("train",),
                     block_dims=[1_000_000] * 7, budget_s=900.0, probe_columns=5,
                     block_densities=False)
    per_layer, top = plan["train/per_layer"], plan["train/eigenvalues_largest"]
    assert per_layer.status == "planned" and per_layer.settings["max_steps"] >= 3
    assert top.status == "planned" and top.planned >= 5
    assert plan.seconds <= 900.0 + 1e-6


def test_block_densities_that_do_not_fit_memory_are_not_planned():
    config = AnalysisConfig(per_layer=True)
    costs = Costs(product_s={"train": 1.0}, gradient_s={"train": 0.5},
                  evaluation_s={"train": 0.1}, column_s=1.0, pass_s=0.0)
    kw = dict(num_params=10_000, k=2, splits=("train",), block_dims=[5_000, 5_000])
    with_d = make_plan(config, costs, **kw)["train/per_layer"].cap
    without = make_plan(config, costs, block_densities=False, **kw)["train/per_layer"]
    assert with_d["density_probes"] == 8 and without.cap["density_probes"] == 0
    assert without.settings["density_probes"] == 0


def test_slow_products_measure_a_per_layer_column_with_restricted_block_products(problem,
                                                                                monkeypatch):
    """Above WIDE_MEASURE_LIMIT_S with exact products, a per-layer column is timed as one
    restricted step on the first batch (``block_column_seconds``), scaled by examples."""
    from curvature.pipeline import costs as costs_module

    model, loss, train, _ = problem
    x, y = train
    batches = [(x[:40], y[:40]), (x[40:80], y[40:80]), (x[80:], y[80:])]
    names = [n for n, _ in model.named_parameters()]
    blocks = [names[:2], names[2:]]
    t = costs_module.block_column_seconds(model, loss, batches, blocks, 120,
                                          torch.float64, torch.device("cpu"))
    assert 0 < t < 10
    op = cv.HessianOperator(model, loss, batches)
    monkeypatch.setattr(costs_module, "WIDE_MEASURE_LIMIT_S", 0.0)
    costs = costs_module.measure_costs({"train": op}, per_layer_width=2,
                                       block_column=lambda: 0.125)
    assert costs.column_s == 0.125 and costs.pass_s == 0.0


def test_analyze_plans_per_layer_from_a_restricted_block_step(problem, monkeypatch):
    from curvature.pipeline import costs as costs_module

    model, loss, train, _ = problem
    monkeypatch.setattr(costs_module, "WIDE_MEASURE_LIMIT_S", 0.0)
    a = analyze(model, loss, train, per_layer=True, metrics=("eigenvalues",), top_k=1)
    costs = a.plan.costs
    assert costs.column_s > 0 and costs.pass_s == 0.0
    assert a.plan["train/per_layer"].status == "ran" and a.per_layer is not None
