"""The memory and dtype policy of an analysis (:mod:`curvature.memory`): small models keep
float64 and every estimator default; a model above the (monkeypatched, tiny) thresholds gets
float32 products with float64 results, bounded Lanczos / SLQ / Hutch++ storage and product
batches, each checked against float64 dense truth (``numpy.linalg.eigh`` of the dense
Hessian) or against the unbounded run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import curvature as cv
from curvature import memory
from curvature.operators.hessian_products import saved_bytes
from curvature.pipeline import analyze, analyze_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

METRICS = ("eigenvalues", "trace", "density")


def _problem(n_in: int = 6, hidden: int = 5, classes: int = 3, examples: int = 40):
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
    x = torch.randn(examples, n_in, generator=gen)
    y = torch.randint(0, classes, (examples,), generator=gen)
    return model, nn.functional.cross_entropy, (x, y)


def _dense_eigs(model, loss_fn, data) -> np.ndarray:
    H = cv.dense_hessian(model.double(), loss_fn, (data[0].double(), data[1]))
    model.float()
    return np.linalg.eigvalsh(H.numpy())


def test_small_model_keeps_float64_and_every_default():
    model, loss_fn, data = _problem()
    res = analyze(model, loss_fn, data, metrics=METRICS, top_k=2, trace_matvecs=12,
                  density_probes=2, density_steps=10)
    assert res.info["dtype"] == "float64"
    assert res.info["dtype_reason"].startswith("float64:")
    plan = res.info["memory_plan"]
    assert plan["lanczos_basis_size"] is None and plan["hutchpp_sketch_size"] is None
    assert plan["density_probe_block"] is None and plan["density_steps"] == 10
    assert res.splits["train"].top.vectors.dtype == torch.float64


def test_large_model_gets_float32_products_with_float64_results(monkeypatch):
    model, loss_fn, data = _problem()
    n = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(memory, "FLOAT64_MAX_PARAMS", n - 1)
    res = analyze(model, loss_fn, data, metrics=("eigenvalues", "trace"), top_k=2,
                  trace_matvecs=12, tol=1e-4)
    assert res.info["dtype"] == "float32"
    assert "float32 products with float64 bookkeeping" in res.info["dtype_reason"]
    train = res.splits["train"]
    assert train.top.vectors.dtype == torch.float32  # the products and the basis
    for r in (train.top, train.bottom):  # Ritz values and residuals: float64
        assert r.values.dtype == torch.float64 and r.residuals.dtype == torch.float64
        assert r.converged
    ev = _dense_eigs(model, loss_fn, data)
    scale = np.abs(ev).max()
    np.testing.assert_allclose(train.top.values.numpy(), ev[::-1][:2], atol=1e-4 * scale)
    np.testing.assert_allclose(train.bottom.values.numpy(), ev[:2], atol=1e-4 * scale)
    assert isinstance(train.trace.estimate, float)
    # the model the user passed is untouched (float32 here, but never converted in place)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bounded_storage_gives_the_dense_answer(monkeypatch):
    """A vector budget of 12 parameter vectors: thick restarts with a small basis, a capped
    Hutch++ sketch and capped SLQ steps -- the eigenvalues still match float64 eigh."""
    model, loss_fn, data = _problem(n_in=8, hidden=6)
    n = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(memory, "VECTOR_BYTES", 12 * n * 8)
    res = analyze(model, loss_fn, data, metrics=METRICS, top_k=3, trace_matvecs=30,
                  density_probes=2, density_steps=40, tol=1e-7, dtype="float64")
    plan = res.info["memory_plan"]
    assert plan["vectors"] == 12
    assert plan["lanczos_basis_size"] == 9  # 12 vectors - a block of 3
    assert plan["hutchpp_sketch_size"] == 5  # (12 - 2) / 2, not 30 // 3
    assert plan["density_steps"] == 10 and plan["density_probe_block"] == 1
    train = res.splits["train"]
    ev = _dense_eigs(model, loss_fn, data)
    scale = np.abs(ev).max()
    assert train.top.converged and train.bottom.converged
    np.testing.assert_allclose(train.top.values.numpy(), ev[::-1][:3], atol=1e-6 * scale)
    np.testing.assert_allclose(train.bottom.values.numpy(), ev[:3], atol=1e-6 * scale)
    assert train.num_matvecs["trace"] == 30
    assert abs(train.trace.estimate - ev.sum()) <= 5 * train.trace.stderr + 1e-9 * scale
    assert train.density.nodes.shape == (2, 10)
    assert "Lanczos basis 9 columns" in "\n".join(memory.memory_lines(res.info))


def test_slq_plan_and_sketch_size_leave_defaults_when_they_fit():
    assert memory.slq_plan(60, 8, 1000, torch.float64) == (60, None)
    assert memory.sketch_size(90, 1000, torch.float64) is None
    assert memory.lanczos_basis_size(5, 10**6, torch.float64) is None
    # ResNet-18 in float32: 36 vectors of 11.17M parameters fit 1.5 GiB
    n = 11_173_962
    assert memory.vector_count(n, torch.float32) == 36
    assert memory.slq_plan(60, 8, n, torch.float32) == (34, 1)
    assert memory.lanczos_basis_size(5, n, torch.float32) == 31
    assert memory.sketch_size(90, n, torch.float32) == 17


def test_per_layer_plan_bounds_blocks_steps_and_densities(monkeypatch):
    """A 20-vector budget on a 2-block model: 4 vectors of columns, 16 Lanczos steps, no
    room left for densities, which are left out and said so; with 60 vectors the densities
    get fewer probes. The per-block extremes of an analysis equal the dense blocks'."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Tanh(), nn.Linear(2, 2, bias=False))
    n = 8
    monkeypatch.setattr(memory, "VECTOR_BYTES", 20 * n * 8)
    plan = memory.per_layer_plan(model, n, torch.float64, 300, True, 40, 4)
    assert plan["per_layer_blocks"] == "module"
    assert plan["per_layer_steps"] == 16  # 20 - 2 x 2 blocks
    assert plan["per_layer_density"] is False and "left out" in plan["per_layer_note"]
    monkeypatch.setattr(memory, "VECTOR_BYTES", 60 * n * 8)
    plan = memory.per_layer_plan(model, n, torch.float64, 20, True, 40, 4)
    # 60 - 20 steps - 4 columns = 36 left; 4 probes need 4 x 40 + 16: fewer probes
    assert plan["per_layer_density"] and plan["per_layer_density_probes"] < 4
    probes, steps = plan["per_layer_density_probes"], plan["per_layer_density_steps"]
    assert probes * steps + 2 * 2 * probes <= 36 and steps >= 10
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 2, generator=gen), torch.randint(0, 2, (30,), generator=gen)
    res = analyze(model, nn.functional.cross_entropy, (x, y), metrics=("eigenvalues",),
                  top_k=1, per_layer=True, tol=1e-8, dtype="float64")
    H = cv.dense_hessian(model.double(), nn.functional.cross_entropy, (x.double(), y)).numpy()
    model.float()
    for b, (s, e) in zip(res.per_layer.blocks, ((0, 4), (4, 8))):
        ev = np.linalg.eigvalsh(H[s:e, s:e])
        assert b.lambda_max == pytest.approx(ev[-1], rel=1e-7, abs=1e-10)
        assert b.lambda_min == pytest.approx(ev[0], rel=1e-7, abs=1e-10)


def test_block_grouping(monkeypatch):
    model, _, _ = _problem()
    n = sum(p.numel() for p in model.parameters())
    assert memory.block_grouping(model, n, torch.float64) == "module"
    deep = nn.Sequential(nn.Linear(3, 3), nn.Sequential(*[nn.Linear(3, 3) for _ in range(4)]),
                         nn.Linear(3, 2))
    n = sum(p.numel() for p in deep.parameters())
    monkeypatch.setattr(memory, "MODULE_BLOCKS_MAX", 4)
    assert memory.block_grouping(deep, n, torch.float64) == "layer"  # 6 modules, 3 children
    flat = nn.Sequential(nn.Sequential(*[nn.Linear(3, 3) for _ in range(6)]))
    assert memory.block_grouping(flat, 54 + 18, torch.float64) == "module"  # one child only


def test_product_batch_size_bounds_the_saved_graph():
    model, loss_fn, (x, y) = _problem(examples=64)

    def graph(m: int) -> int:
        with saved_bytes() as nb:
            loss = loss_fn(model(x[:m]), y[:m])
            torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        return nb[0]

    budget = graph(20) + 1
    cap = memory.product_batch_size(model, loss_fn, x, y, torch.float32, budget=budget)
    assert cap == 20 and graph(cap) <= budget < graph(cap + 1)


def test_capped_batches_give_the_same_analysis(tmp_path, monkeypatch):
    """``analyze_checkpoint`` splits the data into equal batches within GRAPH_BYTES; for a
    mean loss the Hessian is the same, so are the eigenvalues and the trace."""
    torch.manual_seed(0)
    model = cv.build_model("mlp", hidden=[6])
    ckpt = tmp_path / "m.pt"
    spec = "digits:n_train=90,n_test=10"
    cv.save_checkpoint(ckpt, model, factory="mlp", factory_kwargs={"hidden": [6]}, data_spec=spec)
    kw = {"metrics": ("eigenvalues", "trace"), "top_k": 1, "trace_matvecs": 8, "test": False,
          "tol": 1e-9}
    whole = analyze_checkpoint(ckpt, **kw)
    said = []
    monkeypatch.setattr(memory, "GRAPH_BYTES", 2**13)
    split = analyze_checkpoint(ckpt, log=said.append, **kw)
    assert any(m.startswith("batches of ") for m in said), said
    a, b = whole.splits["train"], split.splits["train"]
    assert a.top.values[0] == pytest.approx(float(b.top.values[0]), rel=1e-9)
    assert a.bottom.values[0] == pytest.approx(float(b.bottom.values[0]), rel=1e-9, abs=1e-12)
    assert a.trace.estimate == pytest.approx(b.trace.estimate, rel=1e-9)
