"""Mapping / nested inputs and loss reduction, against float64 truth on the whole dataset.

The truth is written here independently of the engine: the flat-parameter Hessian of
the loss of all examples concatenated into one batch, by
``torch.autograd.functional.hessian`` (double backward) on a float64 copy.
"""

from __future__ import annotations

import collections
import copy
import warnings

import pytest
import torch
from conftest import tiny_gpt2
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader

import curvature as cv
from curvature import batches as B
from curvature.risk import EmpiricalRisk

N, SPLITS, C = 12, (5, 3, 4), 3  # uneven batches


class DictNet(nn.Module):
    """Takes one Mapping with a float ``x [B, 4]`` and integer ``ids [B]``."""

    def __init__(self, out: int = C) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.l1 = nn.Linear(7, 6)
        self.l2 = nn.Linear(6, out)

    def forward(self, batch):
        h = torch.cat([batch["x"], self.emb(batch["ids"])], dim=-1)
        return self.l2(torch.tanh(self.l1(h)))


class TupleNet(DictNet):
    """Takes positional ``(x, [ids, scale])`` (nested list inside the argument tuple)."""

    def forward(self, x, extra):
        ids, scale = extra
        return super().forward({"x": x * scale, "ids": ids})


def make_data(out: int = C, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 4, generator=g)
    ids = torch.randint(0, 5, (N,), generator=g)
    targets = {
        "mse": torch.randn(N, out, generator=g),
        "ce": torch.randint(0, out, (N,), generator=g),
        "bce": torch.randint(0, 2, (N, out), generator=g).float(),
    }
    return x, ids, targets


LOSSES = {
    "mse": nn.MSELoss,
    "ce": nn.CrossEntropyLoss,
    "bce": nn.BCEWithLogitsLoss,
}


def split(t: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(t, SPLITS))


def truth(model, loss_fn, inputs, targets, call=lambda m, p, i: functional_call(m, p, (i,))):
    """(loss, gradient, Hessian) of ``loss_fn`` on the whole dataset in float64."""
    m = copy.deepcopy(model).double()
    named = dict(m.named_parameters())
    names = list(named)
    shapes = [named[k].shape for k in names]
    w0 = torch.cat([named[k].detach().reshape(-1) for k in names])

    def f(w):
        parts = torch.split(w, [s.numel() for s in shapes])
        params = {k: t.view(s) for k, t, s in zip(names, parts, shapes)}
        return loss_fn(call(m, params, inputs), targets)

    w = w0.clone().requires_grad_(True)
    loss = f(w)
    (g,) = torch.autograd.grad(loss, w)
    H = torch.autograd.functional.hessian(f, w0)
    return float(loss.detach()), g, H


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def mapping_batches(kind: str, x, ids, y):
    make = {
        "dict": dict,
        "userdict": collections.UserDict,
        "batchencoding": lambda d: pytest.importorskip("transformers").BatchEncoding(d),
    }[kind]
    return [(make({"x": a, "ids": b}), t) for a, b, t in zip(split(x), split(ids), split(y))]


@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reduction_matches_whole_dataset_truth(loss, reduction):
    torch.manual_seed(0)
    model = DictNet().double()
    x, ids, targets = make_data()
    x = x.double()
    y = targets[loss].double() if targets[loss].is_floating_point() else targets[loss]
    loss_fn = LOSSES[loss](reduction=reduction)
    data = mapping_batches("dict", x, ids, y)
    L, g, H = truth(model, loss_fn, {"x": x, "ids": ids}, y)
    op = cv.HessianOperator(model, loss_fn, data, reduction=reduction)
    V = torch.randn(op.shape[0], 3, dtype=torch.float64)
    assert rel(op @ V, H @ V) < 1e-12
    assert abs(op.loss() - L) < 1e-12 * abs(L)
    assert rel(op.gradient(), g) < 1e-12
    assert rel(cv.dense_hessian(model, loss_fn, data, reduction=reduction), H) < 1e-12


def test_sum_through_dataloader_and_ggn():
    """A DataLoader of ``(dict, y)`` examples collates to ``[dict, y]`` batches of 5, 5, 2."""
    torch.manual_seed(1)
    model = DictNet().double()
    x, ids, targets = make_data(seed=1)
    x, y = x.double(), targets["mse"].double()
    examples = [({"x": x[i], "ids": ids[i]}, y[i]) for i in range(N)]
    loader = DataLoader(examples, batch_size=5)
    loss_fn = nn.MSELoss(reduction="sum")
    L, _, H = truth(model, loss_fn, {"x": x, "ids": ids}, y)
    op = cv.HessianOperator(model, loss_fn, loader, reduction="sum")
    V = torch.randn(op.shape[0], 2, dtype=torch.float64)
    assert rel(op @ V, H @ V) < 1e-12 and abs(op.loss() - L) < 1e-12 * L
    for method in ("fd", "fd-central"):  # finite differences of the summed gradient
        fd = cv.HessianOperator(model, loss_fn, loader, reduction="sum", method=method)
        assert rel(fd @ V, H @ V) < 1e-5

    # GGN truth: J^T H_out J on the whole dataset (H_out = 2 I for the summed MSE)
    m = copy.deepcopy(model)
    names = [k for k, _ in m.named_parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    shapes = [p.shape for p in m.parameters()]

    def outputs(w):
        parts = torch.split(w, [s.numel() for s in shapes])
        return functional_call(m, {k: t.view(s) for k, t, s in zip(names, parts, shapes)},
                               ({"x": x, "ids": ids},)).reshape(-1)

    J = torch.autograd.functional.jacobian(outputs, w0)
    G = 2 * J.T @ J
    ggn = cv.GGNOperator(model, loss_fn, loader, reduction="sum")
    assert rel(ggn @ V, G @ V) < 1e-12
    mean_ggn = cv.GGNOperator(model, nn.MSELoss(), loader)
    assert rel(mean_ggn @ V, G @ V / (N * C)) < 1e-12  # MSE mean divides by N * C


@pytest.mark.parametrize("kind", ["userdict", "batchencoding"])
def test_mapping_inputs_and_dtype_moves(kind):
    """float32 model and data analysed in float64: floats cast, ``ids`` stay int64,
    the Mapping type is kept, the user's batches are not modified."""
    torch.manual_seed(2)
    model = DictNet()
    x, ids, targets = make_data(seed=2)
    y = targets["ce"]
    data = mapping_batches(kind, x, ids, y)
    loss_fn = nn.CrossEntropyLoss()
    risk = EmpiricalRisk(model, loss_fn, data, dtype=torch.float64)
    moved = risk.data.batches[0][0]
    assert type(moved) is type(data[0][0])
    assert moved["x"].dtype == torch.float64 and moved["ids"].dtype == torch.int64
    assert data[0][0]["x"].dtype == torch.float32  # the user's batch is untouched
    L, _, H = truth(model, loss_fn, {"x": x.double(), "ids": ids}, y)
    op = cv.HessianOperator(model, loss_fn, data, dtype=torch.float64)
    V = torch.randn(op.shape[0], 10, dtype=torch.float64)
    assert rel(op @ V, H @ V) < 1e-12 and abs(op.loss() - L) < 1e-12 * L
    # every column path on Mapping inputs: batched / looped second backward, jvp-of-grad
    for batched, func in ((True, False), (False, False), (True, True)):
        op.products.paths.batched, op.products.paths.func = batched, func
        assert rel(op @ V, H @ V) < 1e-12
    assert rel(cv.dense_hessian(model, loss_fn, data), H) < 1e-12
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_nested_tuple_inputs():
    """Tuple inputs are positional arguments, one of them a list; one batch or a list."""
    torch.manual_seed(3)
    model = TupleNet().double()
    x, ids, targets = make_data(seed=3)
    x, y = x.double(), targets["mse"].double()
    scale = torch.full((N, 1), 0.7, dtype=torch.float64)
    loss_fn = nn.MSELoss(reduction="sum")
    L, _, H = truth(model, loss_fn, (x, [ids, scale]), y,
                    call=lambda m, p, i: functional_call(m, p, i))
    data = [((a, [b, s]), t) for a, b, s, t in zip(split(x), split(ids), split(scale), split(y))]
    assert B.batch_size_of(data[0]) == SPLITS[0]
    for d in (data, ((x, [ids, scale]), y)):  # a list of batches, and one batch
        op = cv.HessianOperator(model, loss_fn, d, reduction="sum")
        V = torch.randn(op.shape[0], 2, dtype=torch.float64)
        assert rel(op @ V, H @ V) < 1e-12 and abs(op.loss() - L) < 1e-12 * L


def test_reduction_mismatch_is_refused():
    torch.manual_seed(4)
    model = DictNet().double()
    x, ids, targets = make_data(seed=4)
    data = mapping_batches("dict", x.double(), ids, targets["mse"].double())
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    with pytest.raises(ValueError, match="sums over its batch.*Pass reduction='sum'"):
        cv.HessianOperator(model, nn.MSELoss(reduction="sum"), data) @ v
    with pytest.raises(ValueError, match="averages over its batch.*Pass reduction='mean'"):
        cv.HessianOperator(model, nn.MSELoss(), data, reduction="sum").loss()
    with pytest.raises(ValueError, match="sums over its batch"):
        cv.dense_hessian(model, nn.CrossEntropyLoss(reduction="sum"),
                         mapping_batches("dict", x, ids, targets["ce"]))
    with pytest.raises(ValueError, match="must return a scalar"):
        cv.HessianOperator(model, nn.MSELoss(reduction="none"), data).loss()
    # one batch: both reductions give the Hessian of loss_fn on it -- a warning only
    one = ({"x": x.double(), "ids": ids}, targets["mse"].double())
    with pytest.warns(UserWarning, match="sums over its batch.*single batch"):
        H1 = cv.dense_hessian(model, nn.MSELoss(reduction="sum"), one)
    assert rel(H1, cv.dense_hessian(model, nn.MSELoss(reduction="sum"), one,
                                    reduction="sum")) < 1e-14
    # matching declarations neither raise nor warn
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for loss_fn, reduction in ((nn.MSELoss(), "mean"), (nn.MSELoss(reduction="sum"), "sum")):
            cv.HessianOperator(model, loss_fn, data, reduction=reduction) @ v
            cv.HessianOperator(model, loss_fn, one, reduction=reduction) @ v
    for bad in ("avg", None, "Sum"):
        with pytest.raises(ValueError, match="reduction must be 'mean'"):
            cv.HessianOperator(model, nn.MSELoss(), data, reduction=bad)
    # consistent declarations pass; the check names what it found
    out = model({"x": x.double(), "ids": ids})
    assert B.check_reduction(nn.MSELoss(), out, targets["mse"].double(), "mean") == "mean"
    assert B.check_reduction(nn.MSELoss(reduction="sum"), out, targets["mse"].double(),
                             "sum") == "sum"
    # a loss coupling the examples (neither doubles nor stays) is not judged
    def coupled(o, t):
        return ((o - t) ** 2).sum() / len(o) ** 0.5
    assert B.check_reduction(coupled, out, targets["mse"].double(), "mean") is None
    # targets that are not a tensor are not judged either
    assert B.check_reduction(lambda o, t: (o - t["y"]).pow(2).mean(), out,
                             {"y": targets["mse"].double()}, "sum") is None


def test_keyword_argument_model_gpt2():
    """The README's wrapper for a HuggingFace model called with keyword arguments:
    ``BatchEncoding`` inputs, HVPs against double backward on the whole dataset."""
    transformers = pytest.importorskip("transformers")
    model, lm_loss = tiny_gpt2()
    model.eval()  # no dropout in the truth either
    ids = torch.randint(0, 11, (5, 6))
    mask = torch.ones_like(ids)
    mask[3, 4:] = 0

    def enc(sl):
        return transformers.BatchEncoding({"input_ids": ids[sl], "attention_mask": mask[sl]})

    data = [(enc(slice(0, 3)), ids[:3]), (enc(slice(3, 5)), ids[3:])]
    # the embedding is tied to the output layer: both uses are differentiated
    params = ["model.transformer.wte.weight", "model.transformer.h.0.attn.c_attn.weight"]
    op = cv.HessianOperator(model, lm_loss, data, params=params)
    sel = dict(model.named_parameters())
    w0 = torch.cat([sel[k].detach().reshape(-1) for k in params])
    shapes = [sel[k].shape for k in params]

    def f(w):  # batch-size weighted mean of the two batch losses, in one function
        parts = torch.split(w, [s.numel() for s in shapes])
        p = {k: t.view(s) for k, t, s in zip(params, parts, shapes)}
        total = 0
        for inputs, labels in data:
            total = total + len(labels) * lm_loss(functional_call(model, p, (dict(inputs),)), labels)
        return total / 5

    V = torch.randn(op.shape[0], 2, dtype=torch.float64)
    ref = torch.stack([torch.autograd.functional.hvp(f, w0, v)[1] for v in V.T], 1)
    assert rel(op @ V, ref) < 1e-10


def test_landscape_monitor_pipeline_take_mapping_inputs():
    """The application loops share the batch helpers: UserDict / BatchEncoding batches
    give the whole-dataset numbers computed here directly."""
    from curvature.monitor import _per_example_statistics
    from curvature.pipeline.compute import _accuracy

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(6)
    model = DictNet().double()
    x, ids, targets = make_data(seed=6)
    x = x.double()
    full = {"x": x, "ids": ids}
    names = [k for k, _ in model.named_parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]

    def outputs(w):
        parts = torch.split(w, [s.numel() for s in shapes])
        return functional_call(model, {k: t.view(s) for k, t, s in zip(names, parts, shapes)},
                               (full,))

    # landscape: loss and accuracy along a direction
    y = targets["ce"]
    data = mapping_batches("userdict", x, ids, y)
    d = torch.randn(w0.numel(), dtype=torch.float64)
    alphas = [-0.5, 0.0, 0.7]
    land = cv.loss_landscape_1d(model, nn.CrossEntropyLoss(), data, d, alphas)
    for i, a in enumerate(alphas):
        out = outputs(w0 + a * d)
        assert abs(float(land.loss[i]) - float(nn.functional.cross_entropy(out, y))) < 1e-12
        assert float(land.accuracy[i]) == float((out.argmax(-1) == y).double().mean())

    # pipeline accuracy on BatchEncoding batches
    enc = mapping_batches("batchencoding", x, ids, y)
    assert _accuracy(model, enc, "cpu", torch.float64) == float(
        (outputs(w0).argmax(-1) == y).double().mean())
    assert transformers.BatchEncoding is type(enc[0][0])

    # monitor: per-example GGN diagonal and gradient variance, MSE (H_out = 2/C I)
    y = targets["mse"].double()
    J = torch.autograd.functional.jacobian(outputs, w0)  # [N, C, n]
    resid = (outputs(w0) - y).detach()
    ggn_truth = (J.square().sum(1) * 2 / C).mean(0)
    g = torch.einsum("icn,ic->in", J, 2 / C * resid)
    var_truth = g.square().mean(0) - g.mean(0).square()
    ggn, var = _per_example_statistics(model, list(model.parameters()), names, nn.MSELoss(),
                                       mapping_batches("userdict", x, ids, y), torch.float64)
    assert rel(ggn, ggn_truth) < 1e-12 and rel(var, var_truth) < 1e-12


def _sum_products(rank: int | None):
    """reduction='sum' products on rank ``rank``'s shard (examples [0, 5) or [5, 12),
    uneven batches inside), or on the whole dataset in one batch for ``None``."""
    torch.manual_seed(7)
    model = DictNet().double()
    x, ids, targets = make_data(seed=7)
    x, y = x.double(), targets["ce"]
    sl = slice(0, N) if rank is None else (slice(0, 5) if rank == 0 else slice(5, N))
    xs, idss, ys = x[sl], ids[sl], y[sl]
    data = [({"x": xs[i : i + 3], "ids": idss[i : i + 3]}, ys[i : i + 3])
            for i in range(0, len(ys), 3)]
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    V = torch.randn(sum(p.numel() for p in model.parameters()), 2, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(8))
    op = cv.HessianOperator(model, loss_fn, data, reduction="sum")
    ggn = cv.GGNOperator(model, loss_fn, data, reduction="sum")
    return {"hvp": op @ V, "ggn": ggn @ V, "loss": torch.tensor(op.loss()),
            "gradient": op.gradient()}


@pytest.mark.slow  # two processes: 39 s measured on the loaded 2-core dev machine
@pytest.mark.distributed  # (tests/test_distributed.py covers the default mean reduction)
def test_sum_reduction_all_reduces_over_ranks(tmp_path):
    """Two gloo ranks with uneven shards: the summed loss over both, as in one process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_distributed import free_port

    single = _sum_products(None)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, __file__, str(r), port, str(tmp_path / f"{r}.pt")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r}:\n{log}"
        multi = torch.load(tmp_path / f"{r}.pt", weights_only=True)
        for key, ref in single.items():
            assert rel(multi[key], ref) < 1e-12, (r, key)


if __name__ == "__main__":  # one rank of test_sum_reduction_all_reduces_over_ranks
    import sys

    import torch.distributed as dist

    rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        torch.save(_sum_products(rank), out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_reduction_check_rides_on_the_first_forward():
    """The declaration check of a fresh exact product uses that product's own forward of
    the first batch (one forward per batch, not one extra), still refuses a summed loss
    declared as a mean, and checks again on the next pass after a refusal; the product
    equals the float64 dense Hessian times v."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, Y = torch.randn(9, 3, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    data = [(X[:4], Y[:4]), (X[4:], Y[4:])]
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    n = sum(p.numel() for p in model.parameters())
    v = torch.randn(n, dtype=torch.float64)
    op = cv.HessianOperator(model, nn.MSELoss(), data, cache_graphs=False)
    hv = op @ v
    assert len(calls) == 2  # two batches, two forwards
    H = cv.dense_hessian(model, nn.MSELoss(), data)
    assert float((hv - H @ v).norm() / (H @ v).norm()) < 1e-12
    bad = cv.HessianOperator(model, nn.MSELoss(reduction="sum"), data)
    for _ in range(2):  # refused on every pass, not only the first
        with pytest.raises(ValueError, match="sums over its batch"):
            bad @ v
