"""CurvatureOperator: product counting, scipy view, refusal of bad vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import mlp, probe_block

import curvature as cv

pytestmark = pytest.mark.usefixtures("float64_default")


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
