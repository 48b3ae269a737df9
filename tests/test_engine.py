"""The HVP engine against explicit float64 matrices (double-backward dense Hessians, Jacobians)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import curvature as cv
from curvature.operators import ggn as ggn_room


@pytest.fixture(autouse=True)
def float64_default():
    """Build every model of this module in float64 (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------- workloads
class Quadratic(nn.Module):
    """Model whose output is its own weight vector; loss 0.5 w^T A w - b^T w."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return self.w.expand(x.shape[0], -1)


def quadratic_loss(A, b):
    def loss(out, _):
        w = out[0]
        return 0.5 * w @ A @ w - b @ w

    return loss


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    g = np.random.default_rng(0)
    idx = g.permutation(len(X))[:150]
    return torch.tensor(X[idx]), torch.tensor(y[idx])


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(3 * 4 * 4, 10)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(self.drop(h.flatten(1)))


def cnn():
    torch.manual_seed(1)
    model = SmallCNN()
    # non-trivial running statistics, so eval-mode BatchNorm is not the identity
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model


class AttentionBlock(nn.Module):
    """Embedding -> LayerNorm -> multi-head self-attention -> mean pool -> tied readout."""

    def __init__(self, vocab: int = 7, dim: int = 6, heads: int = 2, fused: bool = False) -> None:
        super().__init__()
        self.fused = fused  # fused=True: scaled_dot_product_attention (no double backward)
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight  # weight tying

    def forward(self, tokens):
        h = self.norm(self.embed(tokens))
        a, _ = self.attn(h, h, h, need_weights=not self.fused)
        return self.out((h + a).mean(1))


def attention(fused: bool = False):
    torch.manual_seed(2)
    return AttentionBlock(fused=fused)


def tokens(n=24, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 7, (n, 5), generator=g), torch.randint(0, 7, (n,), generator=g)


def mse_onehot(out, y):
    return F.mse_loss(out, F.one_hot(y, out.shape[-1]).to(out.dtype))


def workloads(digits):
    X, y = digits
    img = X.reshape(-1, 1, 8, 8)[:40]
    return {
        "mlp-ce": (mlp(), F.cross_entropy, (X, y)),
        "mlp-mse": (mlp(), mse_onehot, (X, y)),
        "cnn-bn-dropout-ce": (cnn(), F.cross_entropy, (img, y[:40])),
        "attention-ln-tied-ce": (attention(), F.cross_entropy, tokens()),
        "attention-ln-tied-mse": (attention(), mse_onehot, tokens()),
    }


NAMES = [
    "mlp-ce",
    "mlp-mse",
    "cnn-bn-dropout-ce",
    "attention-ln-tied-ce",
    "attention-ln-tied-mse",
]


def probe_block(n, k=3, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- exactness
def test_quadratic_known_matrix():
    torch.manual_seed(0)
    n = 12
    Q = torch.linalg.qr(torch.randn(n, n))[0]
    A = Q @ torch.diag(torch.linspace(-3, 10, n)) @ Q.T
    b = torch.randn(n)
    model, loss = Quadratic(n), quadratic_loss(A, b)
    data = (torch.zeros(4, 1), torch.zeros(4))
    V = probe_block(n, 5)
    for method, tol in [("exact", 1e-12), ("fd", 1e-6), ("fd-central", 1e-8)]:
        op = cv.HessianOperator(model, loss, data, method=method)
        assert rel(op @ V, A @ V) < tol, method
    assert rel(cv.dense_hessian(model, loss, data), A) < 1e-12


def test_dense_hessian_of_layernorm_matches_handwritten_formula():
    """Independent check of the ground truth itself on affine LayerNorm.

    The reference writes layer normalisation out by hand (mean, variance, scale,
    shift) so that no fused kernel or its derivative formulas are involved.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3))
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    problem = cv.HessianOperator(model, F.cross_entropy, (x, y)).risk

    def by_hand(w):
        p = problem.unflatten(w)
        h = x @ p["0.weight"].T + p["0.bias"]
        mu = h.mean(-1, keepdim=True)
        var = ((h - mu) ** 2).mean(-1, keepdim=True)
        h = (h - mu) / torch.sqrt(var + 1e-5) * p["1.weight"] + p["1.bias"]
        return F.cross_entropy(h @ p["2.weight"].T + p["2.bias"], y)

    ref = torch.autograd.functional.hessian(by_hand, problem.w0)
    H = cv.dense_hessian(model, F.cross_entropy, (x, y))
    assert rel(H, ref) < 1e-12
    V = probe_block(H.shape[0], 3)
    assert rel(cv.HessianOperator(model, F.cross_entropy, (x, y)) @ V, ref @ V) < 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_exact_and_fd_central_match_dense_hessian(digits, name):
    model, loss, data = workloads(digits)[name]
    H = cv.dense_hessian(model, loss, data)
    assert torch.allclose(H, H.T, atol=1e-12 * H.abs().max())
    n = H.shape[0]
    V = probe_block(n, 3)
    exact = cv.HessianOperator(model, loss, data)
    assert exact.shape == (n, n)
    assert rel(exact @ V, H @ V) <= 1e-10
    assert rel(exact @ V[:, 0], H @ V[:, 0]) <= 1e-10
    central = cv.HessianOperator(model, loss, data, method="fd-central")
    assert rel(central @ V, H @ V) <= 1e-5
    forward = cv.HessianOperator(model, loss, data, method="fd")
    assert rel(forward @ V, H @ V) <= 1e-4


@pytest.mark.parametrize("loss", [F.cross_entropy, mse_onehot])
def test_ggn_equals_jacobian_sandwich(digits, loss):
    X, y = digits
    X, y = X[:30], y[:30]
    model = mlp()
    op = cv.GGNOperator(model, loss, (X, y))
    w = op.params
    problem = op.risk
    J = torch.func.jacrev(lambda w: problem.forward(w, X))(w).reshape(-1, w.numel())
    out = problem.forward(w, X).detach()
    Hout = torch.func.hessian(lambda z: loss(z.reshape(out.shape), y))(out.reshape(-1))
    G = J.T @ Hout @ J
    V = probe_block(w.numel(), 4)
    assert rel(op @ V, G @ V) <= 1e-10
    assert torch.linalg.eigvalsh(op.to_dense()).min() > -1e-10


def test_uneven_dataloader_equals_one_batch(digits):
    X, y = digits
    model = mlp()
    one = cv.HessianOperator(model, F.cross_entropy, (X, y))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=64, shuffle=True
    )  # batches of 64, 64, 22
    many = cv.HessianOperator(model, F.cross_entropy, loader)
    listed = cv.HessianOperator(model, F.cross_entropy, [(X[:100], y[:100]), (X[100:], y[100:])])
    V = probe_block(one.shape[0], 2)
    ref = one @ V
    assert rel(many @ V, ref) < 1e-12
    assert rel(listed @ V, ref) < 1e-12
    assert abs(many.loss() - one.loss()) < 1e-12
    assert rel(many.gradient(), one.gradient()) < 1e-12
    ggn_one = cv.GGNOperator(model, F.cross_entropy, (X, y))
    ggn_many = cv.GGNOperator(model, F.cross_entropy, loader)
    assert rel(ggn_many @ V, ggn_one @ V) < 1e-12
    fd_many = cv.HessianOperator(model, F.cross_entropy, loader, method="fd-central")
    assert rel(fd_many @ V, ref) < 1e-5


def test_param_subset_gives_block(digits):
    X, y = digits
    model = mlp()
    H = cv.dense_hessian(model, F.cross_entropy, (X, y))
    sizes = [p.numel() for p in model.parameters()]
    start = sum(sizes[:2])
    block = H[start:, start:]  # second Linear layer (weight, bias)
    sub = [model[2].weight, model[2].bias]
    op = cv.HessianOperator(model, F.cross_entropy, (X, y), params=sub)
    assert op.shape == block.shape
    assert rel(op.to_dense(), block) < 1e-10
    by_name = cv.HessianOperator(model, F.cross_entropy, (X, y), params=["2.weight", "2.bias"])
    assert rel(by_name.to_dense(), block) < 1e-10
    assert rel(cv.dense_hessian(model, F.cross_entropy, (X, y), params=sub), block) < 1e-12


def test_matmat_counts_and_to_scipy(digits):
    X, y = digits
    op = cv.HessianOperator(mlp(), F.cross_entropy, (X, y))
    V = probe_block(op.shape[0], 4)
    HV = op @ V
    assert op.num_matvecs == 4
    op.matvec(V[:, 0])
    assert op.num_matvecs == 5
    lin = op.to_scipy()
    np.testing.assert_allclose(lin @ V.numpy(), HV.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lin.matvec(V[:, 1].numpy()), HV[:, 1].numpy(), rtol=1e-10, atol=1e-12)


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


def test_operator_refuses_a_model_changed_after_construction(digits):
    X, y = digits
    model = mlp()
    op = cv.HessianOperator(model, F.cross_entropy, (X, y))
    v = torch.ones(op.shape[0])
    op @ v  # graphs now cached at the construction-time parameters
    with torch.no_grad():
        model[0].weight.add_(0.1)
    with pytest.raises(RuntimeError, match="modified after this operator was built"):
        op @ v


def test_float32_operator_and_float64_copy(digits):
    X, y = digits
    model = mlp().float()
    H = cv.dense_hessian(model, F.cross_entropy, (X.float(), y))
    assert H.dtype == torch.float64
    assert next(model.parameters()).dtype == torch.float32  # the user's model is not cast
    op32 = cv.HessianOperator(model, F.cross_entropy, (X.float(), y))
    assert op32.dtype == torch.float32
    V = probe_block(op32.shape[0], 2).float()
    assert rel((op32 @ V).double(), H @ V.double()) < 1e-5
    op64 = cv.HessianOperator(model, F.cross_entropy, (X.float(), y), dtype=torch.float64)
    assert rel(op64 @ V.double(), H @ V.double()) < 1e-10
    # fd-central in float32 with the default step: a few 1e-3 at most (not 3%)
    fd32 = cv.HessianOperator(model, F.cross_entropy, (X.float(), y), method="fd-central")
    assert rel((fd32 @ V).double(), H @ V.double()) < 1e-2


def test_model_state_restored(digits):
    X, y = digits
    img = X.reshape(-1, 1, 8, 8)[:40]
    model = cnn()
    model.train()
    model.drop.eval()  # a mixed mode must come back exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for op in (
        cv.HessianOperator(model, F.cross_entropy, (img, y[:40])),
        cv.HessianOperator(model, F.cross_entropy, (img, y[:40]), method="fd"),
        cv.GGNOperator(model, F.cross_entropy, (img, y[:40])),
        cv.HessianOperator(model, F.cross_entropy, (img, y[:40]), dtype=torch.float32),
    ):
        op @ probe_block(op.shape[0], 2).to(op.dtype)
        op.loss()
    cv.dense_hessian(model, F.cross_entropy, (img, y[:40]))
    assert model.training and model.bn.training and not model.drop.training
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- no double backward
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


# ---------------------------------------------------------------- bad input
def test_bad_vectors(digits):
    X, y = digits
    op = cv.HessianOperator(mlp(), F.cross_entropy, (X, y))
    n = op.shape[0]
    with pytest.raises(ValueError, match=rf"shape \[{n}\]"):
        op.matvec(torch.ones(n + 1))
    with pytest.raises(ValueError, match="dtype"):
        op.matvec(torch.ones(n, dtype=torch.float32))
    with pytest.raises(ValueError, match="on meta"):
        op.matvec(torch.ones(n, device="meta"))
    with pytest.raises(ValueError, match=r"\[.*, k\]"):
        op.matmat(torch.ones(n + 2, 3))
    with pytest.raises(TypeError):
        op.matvec(np.ones(n))
    assert op.num_matvecs == 0


def test_bad_data_and_params(digits):
    X, y = digits
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="empty"):
        cv.HessianOperator(model, F.cross_entropy, [])
    Xbad = X.clone()
    Xbad[70, 3] = float("nan")
    op = cv.HessianOperator(
        model, F.cross_entropy, [(X[:50], y[:50]), (X[50:100], y[50:100]), (Xbad[100:], y[100:])]
    )
    op_nan = cv.HessianOperator(
        model, F.cross_entropy, [(X[:50], y[:50]), (Xbad[50:100], y[50:100])]
    )
    with pytest.raises(FloatingPointError, match="batch 1"):
        op_nan.matvec(torch.ones(op_nan.shape[0]))
    with pytest.raises(FloatingPointError, match="batch 1"):
        op_nan.loss()
    assert op.shape == op_nan.shape
    with pytest.raises(ValueError, match="not a parameter"):
        cv.HessianOperator(model, F.cross_entropy, (X, y), params=[torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match="not a parameter name"):
        cv.HessianOperator(model, F.cross_entropy, (X, y), params=["nope.weight"])
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        cv.HessianOperator(frozen, F.cross_entropy, (X, y))
    with pytest.raises(ValueError, match="method"):
        cv.HessianOperator(model, F.cross_entropy, (X, y), method="magic")
    with pytest.raises(TypeError, match="data"):
        cv.HessianOperator(model, F.cross_entropy, X)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_dense_operator_checks():
    A = torch.randn(5, 5)
    with pytest.raises(ValueError, match="symmetric"):
        cv.DenseOperator(A)
    with pytest.raises(ValueError, match="square"):
        cv.DenseOperator(torch.ones(3, 4))
    S = A + A.T
    op = cv.DenseOperator(S)
    v = torch.randn(5)
    assert torch.allclose(op @ v, S @ v)
    assert torch.allclose(op.to_dense(), S)
