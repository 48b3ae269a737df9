"""The exact products: graph cache, measured column chunks, checked forward-over-reverse path,
and the refusal of models without second derivatives (finite differences instead)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import attention, cnn, mlp, probe_block, rel, tokens
from torch import nn

import curvature as cv
from curvature.operators import ggn as ggn_room
from curvature.operators import hessian_products as products_room

pytestmark = pytest.mark.usefixtures("float64_default")


def test_chunked_and_cached_matmat_match(digits):
    X, y = digits
    model = mlp()
    V = probe_block(sum(p.numel() for p in model.parameters()), 7)
    data = [(X[:100], y[:100]), (X[100:], y[100:])]
    plain = cv.HessianOperator(model, F.cross_entropy, data, cache_graphs=False)
    # chunks and the graph cache belong to double backward: pin it for this module (from
    # 4 columns a pass, a timing may otherwise send 7-column blocks by the jvp path)
    plain.products.paths.func = False
    ref = plain @ V
    chunked = cv.HessianOperator(model, F.cross_entropy, data, chunk_size=3) @ V
    assert rel(chunked, ref) < 1e-13
    cached = cv.HessianOperator(model, F.cross_entropy, data, cache_graphs=True)
    for _ in range(3):  # graphs built on the first call, reused afterwards
        assert rel(cached @ V, ref) < 1e-13
        assert rel(cached @ V[:, 0], ref[:, 0]) < 1e-13
    assert cached.products.num_cached_graphs == 2
    auto = cv.HessianOperator(model, F.cross_entropy, data)  # small graphs: cached
    assert rel(auto @ V, ref) < 1e-13 and auto.products.num_cached_graphs == 2
    bounded = cv.HessianOperator(model, F.cross_entropy, data, max_cache_bytes=1024)
    assert rel(bounded @ V, ref) < 1e-13 and bounded.products.num_cached_graphs == 0
    assert bounded.products.paths.batched is not None  # the faster column path was chosen
    for batched in (True, False):  # both column paths, whichever timing picks
        forced = cv.HessianOperator(model, F.cross_entropy, data)
        forced.products.paths.batched = batched  # shared by operators on this model
        assert rel(forced @ V, ref) < 1e-13



def test_column_path_timed_on_real_work(digits):
    """The batched-or-looped timing runs on slices of the block that are part of the
    product: a 12-column block costs 12 columns per batch; a 5-column one repeats its
    first 4 columns twice (4 + 4 + 4 + 1)."""
    X, y = digits
    data = [(X[:100], y[:100]), (X[100:200], y[100:200])]
    for k, per_batch in ((12, [4, 1, 1, 1, 1, 4]), (10, [3, 1, 1, 1, 3, 1]),
                         (5, [4, 1, 1, 1, 1, 4, 1])):
        model = mlp()  # a new module: its path is not decided yet
        V = probe_block(sum(p.numel() for p in model.parameters()), k)
        op = cv.HessianOperator(model, F.cross_entropy, data, cache_graphs=False)
        op.products.paths.func = False  # the column path's timing alone
        widths, inner = [], op.products.vjp_columns

        def spy(g, v, batched, inner=inner, widths=widths):
            widths.append(v.shape[0] if batched else 1)
            return inner(g, v, batched)

        op.products.vjp_columns = spy
        HV = op @ V
        assert op.products.paths.batched is not None
        assert rel(HV, cv.dense_hessian(model, F.cross_entropy, data) @ V) < 1e-10
        # first batch: the timing slices (and the 5-column block's last column by the
        # chosen path); second batch: the whole block by the chosen path only
        assert widths[: len(per_batch)] == per_batch, (k, widths)
        assert sum(widths) == sum(per_batch) + k, (k, widths)

def test_forward_over_reverse_timed_on_a_slice(digits, monkeypatch):
    """The jvp path is warmed up on 2 columns, then timed against double backward: on
    the whole of a 10-column block, and on the halves of a 20-column one (both part of
    the product); once above ``CHEAP_BLOCK_S``, best of two below."""
    X, y = digits
    img = X.reshape(-1, 1, 8, 8)[:40]
    data = (img, y[:40])
    cases = [(10, 0.0, [2, 10]), (10, math.inf, [2, 10, 10]), (20, 0.0, [2, 10]),
             (20, math.inf, [2, 10, 10])]
    H = cv.dense_hessian(cnn(), F.cross_entropy, data)  # same weights, another module
    for k, cheap_s, expected in cases:
        monkeypatch.setattr(products_room, "CHEAP_BLOCK_S", cheap_s)
        model = cnn()
        V = probe_block(H.shape[0], k)
        op = cv.HessianOperator(model, F.cross_entropy, data)
        widths, inner = [], op.products.hvp_forward_over_reverse

        def spy(V, batch, chunk, inner=inner, widths=widths):
            widths.append(V.shape[1])
            return inner(V, batch, chunk)

        op.products.hvp_forward_over_reverse = spy
        # column path settled by the first product, jvp path by the second (by the
        # third after a close call on a narrow block)
        for _ in range(3):
            assert rel(op @ V, H @ V) < 1e-10
        assert op.products.paths.func is not None
        assert op.products.paths.func_trials <= (1 if k < 16 else 0)
        assert widths[: len(expected)] == expected, (k, cheap_s, widths)



def test_close_call_on_a_narrow_block_waits_for_the_next(digits, monkeypatch):
    """A narrow block whose two paths time within ``CLOSE_CALL`` leaves the jvp choice
    undecided once; the next block decides."""
    X, y = digits
    img = X.reshape(-1, 1, 8, 8)[:40]
    data = (img, y[:40])
    monkeypatch.setattr(products_room, "CLOSE_CALL", math.inf)  # every timing is close
    H = cv.dense_hessian(cnn(), F.cross_entropy, data)
    op = cv.HessianOperator(cnn(), F.cross_entropy, data)
    V = probe_block(H.shape[0], 10)
    states = []
    for _ in range(3):
        assert rel(op @ V, H @ V) < 1e-10
        states.append((op.products.paths.func, op.products.paths.func_trials))
    assert states[0] == (None, 0)  # column path settled
    assert states[1] == (None, 1)  # close call: left undecided
    assert states[2][0] is not None and states[2][1] == 1

def test_chunks_sized_from_measured_memory(digits, monkeypatch):
    """``chunk_size=None``: columns per vectorised pass = max_chunk_bytes / measured bytes."""
    X, y = digits
    img = X.reshape(-1, 1, 8, 8)[:40]
    model, data = cnn(), [(img[:25], y[:25]), (img[25:], y[25:40])]
    H = cv.dense_hessian(model, F.cross_entropy, data)
    V = probe_block(H.shape[0], 10)
    free = cv.HessianOperator(model, F.cross_entropy, data)
    assert rel(free @ V, H @ V) < 1e-10
    per_column = free.products.column_bytes
    assert per_column > 0  # measured on the first batch's gradient graph
    assert free.products.chunk_for(10, None, 2**30) is None  # 1 GiB: all columns at once
    assert free.products.chunk_for(10, None, 2.5 * per_column) == 2
    assert free.products.chunk_for(10, None, 0.1 * per_column) == 1
    assert free.products.chunk_for(10, 4, 0.1 * per_column) == 4  # explicit chunk_size wins
    V20 = probe_block(H.shape[0], 20)
    # (path, memory bound in columns, block width) -> widths of the vectorised passes
    cases = [("batched", 2.5, 10, [2] * 10), ("func", 8.5, 20, [7, 7]), ("func", 2.5, 10, [])]
    for path, cols, k, expected in cases:
        model_b = cnn()  # a new module: its own path choices
        op = cv.HessianOperator(model_b, F.cross_entropy, data, max_chunk_bytes=cols * per_column)
        op.products.paths.batched = True
        op.products.paths.func = path == "func"
        widths = []
        if path == "batched":
            inner = op.products.vjp_columns

            def spy(g, v, batched, inner=inner, widths=widths):
                widths.append(v.shape[0] if batched else 1)
                return inner(g, v, batched)

            op.products.vjp_columns = spy
        else:
            inner = op.products.hvp_forward_over_reverse

            def spy(V, batch, chunk, inner=inner, widths=widths):
                widths.append(chunk)
                return inner(V, batch, chunk)

            op.products.hvp_forward_over_reverse = spy
        block = V if k == 10 else V20
        assert rel(op @ block, H @ block) < 1e-10, path
        # balanced passes (20 columns under a bound of 8: 7 + 7 + 6); the jvp path is
        # never used (or decided) on chunks narrower than FUNC_MIN_COLUMNS
        assert widths == expected, (path, cols, widths)
    ggn = cv.GGNOperator(model, F.cross_entropy, data)
    G = ggn @ V
    small = cv.GGNOperator(model, F.cross_entropy, data, max_chunk_bytes=1)
    chunks = []
    real_vmap = ggn_room.vmap

    def vmap_spy(fn, **kwargs):
        chunks.append(kwargs.get("chunk_size"))
        return real_vmap(fn, **kwargs)

    monkeypatch.setattr(ggn_room, "vmap", vmap_spy)
    assert rel(small @ V, G) < 1e-12
    assert chunks == [1, 1] and small.forward_column_bytes > 0
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        cv.HessianOperator(model, F.cross_entropy, data, max_chunk_bytes=0)


def test_wide_products_checked_forward_over_reverse(digits):
    """Wide blocks may go through jvp-of-grad, but only if it agrees."""
    X, y = digits
    img = X.reshape(-1, 1, 8, 8)[:40]
    model, data = cnn(), (img, y[:40])
    H = cv.dense_hessian(model, F.cross_entropy, data)
    V = probe_block(H.shape[0], 10)
    op = cv.HessianOperator(model, F.cross_entropy, data)
    for _ in range(2):
        assert rel(op @ V, H @ V) < 1e-10
    decided = op.products.paths
    assert decided.func is not None  # calibrated on the second wide product
    again = cv.HessianOperator(model, F.cross_entropy, data)
    assert again.products.paths is decided  # later operators on the model reuse it
    again.products.paths.func = True
    assert rel(again @ V, H @ V) < 1e-10
    # a path that disagrees with double backward is never chosen, however fast
    wrong = cv.HessianOperator(cnn(), F.cross_entropy, data)  # same weights, new module
    assert wrong.products.paths is not decided
    exact_func = wrong.products.hvp_forward_over_reverse
    wrong.products.hvp_forward_over_reverse = lambda V, b, c: (1.01 * exact_func(V, b, c)[0], exact_func(V, b, c)[1])
    for _ in range(3):  # column path settled by the first product, jvp path by the second
        assert rel(wrong @ V, H @ V) < 1e-10
    assert wrong.products.paths.func is False


class OnceTanh(torch.autograd.Function):
    """tanh whose backward is not differentiable (like fused attention kernels)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class OnceTanhMLP(nn.Module):
    def __init__(self, ref: nn.Sequential) -> None:
        super().__init__()
        self.l1, self.l2 = ref[0], ref[2]

    def forward(self, x):
        return self.l2(OnceTanh.apply(self.l1(x)))


def test_fd_where_double_backward_is_missing(digits):
    X, y = digits
    ref = mlp()
    H = cv.dense_hessian(ref, F.cross_entropy, (X, y))
    model = OnceTanhMLP(ref)
    # plain double backward through this op would silently drop its second-order
    # terms; the engine refuses it instead of returning a wrong product
    with pytest.raises(RuntimeError, match="method='fd'"):
        cv.HessianOperator(model, F.cross_entropy, (X, y)).matvec(torch.ones(H.shape[0]))
    with pytest.raises(RuntimeError, match="once_differentiable"):
        cv.dense_hessian(model, F.cross_entropy, (X, y))
    V = probe_block(H.shape[0], 2)
    fd = cv.HessianOperator(model, F.cross_entropy, (X, y), method="fd-central")
    assert rel(fd @ V, H @ V) < 1e-5


def test_fd_on_fused_attention_kernel():
    """torch's CPU flash-attention kernel has no double backward: FD still gives H v."""
    data = tokens()
    H = cv.dense_hessian(attention(fused=False), F.cross_entropy, data)
    fused = attention(fused=True)
    with pytest.raises(RuntimeError, match="method='fd'"):
        cv.HessianOperator(fused, F.cross_entropy, data).matvec(torch.ones(H.shape[0]))
    V = probe_block(H.shape[0], 2)
    fd = cv.HessianOperator(fused, F.cross_entropy, data, method="fd-central")
    assert rel(fd @ V, H @ V) < 1e-5


def test_gradient_pass_keeps_graphs_for_the_first_product(digits):
    """``op.gradient()`` with exact products builds the batch graphs and keeps those the
    cache admits: the gradient is the plain one, and the next product builds no graph."""
    X, y = digits
    data = [(X[:100], y[:100]), (X[100:180], y[100:180])]
    model = mlp()
    plain = cv.HessianOperator(model, F.cross_entropy, data, cache_graphs=False)
    g_ref = plain.risk.loss_and_gradient(plain.risk.w0)[1]
    H = cv.dense_hessian(model, F.cross_entropy, data)
    v = probe_block(H.shape[0], 1)[:, 0]
    for cache, kept in ((None, 2), (True, 2), (False, 0)):
        op = cv.HessianOperator(model, F.cross_entropy, data, cache_graphs=cache)
        assert rel(op.gradient(), g_ref) < 1e-13
        assert abs(op.loss() - plain.loss()) < 1e-13
        assert op.products.num_cached_graphs == kept
        built, inner = [], op.products.gradient_graph

        def spy(*args, inner=inner, built=built, **kwargs):
            built.append(1)
            return inner(*args, **kwargs)

        op.products.gradient_graph = spy
        assert rel(op @ v, H @ v) < 1e-10
        assert len(built) == 2 - kept, cache  # kept graphs are reused
    # streamed data: no graph kept, a plain gradient
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[:180], y[:180]),
                                         batch_size=100)  # the same two batches
    op = cv.HessianOperator(model, F.cross_entropy, loader, cache_data=False)
    assert rel(op.gradient(), g_ref) < 1e-13
    assert op.products.num_cached_graphs == 0
