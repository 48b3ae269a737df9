"""The exact products: graph cache, measured column chunks, checked forward-over-reverse path,
and the refusal of models without second derivatives (finite differences instead)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import attention, cnn, mlp, probe_block, rel, tokens
from torch import nn

import curvature as cv
from curvature.operators import ggn as ggn_room

pytestmark = pytest.mark.usefixtures("float64_default")


def test_chunked_and_cached_matmat_match(digits):
    X, y = digits
    model = mlp()
    V = probe_block(sum(p.numel() for p in model.parameters()), 7)
    data = [(X[:100], y[:100]), (X[100:], y[100:])]
    ref = cv.HessianOperator(model, F.cross_entropy, data, cache_graphs=False) @ V
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
    cases = [("batched", 2.5, 10, [2] * 10), ("func", 8.5, 20, [8, 8]), ("func", 2.5, 10, [])]
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
        # the jvp path is never used (or decided) on chunks narrower than 8 columns
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
    """Blocks of >= 8 columns may go through jvp-of-grad, but only if it agrees."""
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
