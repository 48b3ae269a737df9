"""``ExactProducts.block_matmat``: each column's product restricted to its own block
equals that block's slice of the full Hessian product (float64, dense truth), with 0
elsewhere; parameters the loss does not reach give 0."""

import torch
from torch import nn

import curvature as cv


def test_block_products_equal_the_diagonal_blocks_of_the_dense_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(),
                          nn.Linear(4, 3)).double()
    unused = nn.Linear(2, 2).double()  # a parameter the loss never reaches
    model.add_module("unused", unused)
    model.forward = lambda x: nn.Sequential(*list(model.children())[:5])(x)  # noqa: E731
    x, y = torch.randn(20, 5, dtype=torch.float64), torch.randint(0, 3, (20,))
    loss = nn.CrossEntropyLoss()
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    op = cv.HessianOperator(model, loss, batches, dtype=torch.float64)
    H = cv.dense_hessian(model, loss, batches)
    numels = op.risk.numels
    offsets = [0]
    for m in numels:
        offsets.append(offsets[-1] + m)
    blocks = [[0, 1], [2, 3], [4, 5], [6, 7]]  # the three layers, then the unused one
    V = torch.zeros(op.shape[0], 5, dtype=torch.float64)
    cols = [0, 1, 2, 3, 1]
    for j, b in enumerate(cols):
        lo, hi = offsets[blocks[b][0]], offsets[blocks[b][-1] + 1]
        V[lo:hi, j] = torch.randn(hi - lo, dtype=torch.float64)
    out = op.products.block_matmat(V, [blocks[b] for b in cols])
    for j, b in enumerate(cols):
        lo, hi = offsets[blocks[b][0]], offsets[blocks[b][-1] + 1]
        want = H[lo:hi, lo:hi] @ V[lo:hi, j]
        torch.testing.assert_close(out[lo:hi, j], want, rtol=1e-10, atol=1e-12)
        rest = torch.cat([out[:lo, j], out[hi:, j]])
        assert torch.count_nonzero(rest) == 0
    assert torch.count_nonzero(out[:, 3]) == 0  # the unused block
