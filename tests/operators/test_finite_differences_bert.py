"""Finite-difference products on a small BERT whose data hold the padding token.

``nn.Embedding(padding_idx=0)`` makes autograd report a zero gradient for the padding
row although the loss depends on it: the gradient is ``P grad L``, double backward
gives ``P H P`` and differences of gradients along ``v`` gave ``P H v``, off by
``P H (I - P) v`` at every step (an error the step pair cannot see, so the float32
``fd-central`` estimate was 2-3x below the true error). Truth: float64 double backward
on the eager-attention model, whose loss is checked to equal the sdpa model's.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import curvature as cv

transformers = pytest.importorskip("transformers")

HIDDEN = 32


class LogitsOf(nn.Module):
    """A HuggingFace sequence classifier as ``batch (dict) -> logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model(**batch).logits


def bert(attn: str, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=64, max_position_embeddings=32, num_labels=3, attn_implementation=attn,
    )
    return LogitsOf(transformers.BertForSequenceClassification(cfg).to(dtype))


def unit(n: int, seed: int) -> torch.Tensor:
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


@pytest.fixture(scope="module")
def bert_case():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (6, 10), generator=gen)
    mask = torch.ones(6, 10, dtype=torch.long)
    mask[5, 6:] = 0
    ids[mask == 0] = 0  # padded positions hold the pad token (id 0, the embedding's padding_idx)
    # ... and so do two attended positions: only there does the loss depend on the
    # padding row (attention masks the padded positions out)
    ids[0, 3] = ids[2, 7] = 0
    data = ({"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (6,), generator=gen))
    fused32 = bert("sdpa", torch.float32)
    truth = cv.HessianOperator(bert("eager", torch.float64), F.cross_entropy, data)
    fused64 = cv.HessianOperator(bert("sdpa", torch.float64), F.cross_entropy, data, method="fd")
    assert abs(truth.loss() - fused64.loss()) < 1e-12  # the truth is the same function
    return fused32, data, truth


def test_padding_row_is_left_out_as_in_exact_products(bert_case):
    fused32, data, truth = bert_case
    op = cv.HessianOperator(fused32, F.cross_entropy, data, method="fd-central", dtype=torch.float64)
    # float64: differences along v match double backward (they were 5e-4 relative off)
    v = unit(truth.shape[0], 1)
    ref = truth @ v
    assert float((op @ v - ref).norm()) < 1e-7 * float(ref.norm())
    mask = op.finite_differences.mask
    assert mask is not None and int((mask == 0).sum()) == HIDDEN
    assert op.risk.names[0].endswith("word_embeddings.weight")
    assert torch.all(mask[:HIDDEN] == 0)  # row 0 of the first parameter
    # a direction inside the padding row: zero product, as the exact one
    e = torch.zeros_like(v)
    e[:HIDDEN] = unit(HIDDEN, 2)
    assert float((truth @ e).norm()) == 0.0
    assert float((op @ e).norm()) == 0.0


@pytest.mark.parametrize("method", ["fd", "fd-central"])
def test_bert_float32_error_estimate_bounds_true_error(bert_case, method):
    fused32, data, truth = bert_case
    for seed in (1, 2, 3):
        v = unit(truth.shape[0], seed)
        op = cv.HessianOperator(fused32, F.cross_entropy, data, method=method)
        hv = op @ v.float()
        ref = truth @ v
        true = float((hv.double() - ref).norm())
        assert true <= op.product_error <= 100 * true, (seed, true, op.product_error)
        assert true < 1e-2 * float(ref.norm())
