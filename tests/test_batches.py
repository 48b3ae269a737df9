"""Batch structure: sizes, single batch vs list of batches, device/dtype moves."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from curvature import batches as B
from curvature.risk import EmpiricalRisk


def test_batch_helpers():
    t = torch.zeros(3, 2)
    ids = torch.zeros(3, dtype=torch.long)
    # first tensor with a leading dimension, depth first; 0-d tensors skipped
    assert B.batch_size_of(({"scale": torch.tensor(2.0), "x": t}, ids)) == 3
    assert B.batch_size_of(([(t[:2], ids)], ids)) == 2
    with pytest.raises(ValueError, match="batch size"):
        B.batch_size_of(({"flag": True}, ids))
    with pytest.raises(TypeError, match="every batch must be an .inputs, targets. pair"):
        B.batch_size_of({"input_ids": ids, "labels": ids})
    loader = DataLoader([{"x": t[0], "labels": ids[0]}] * 4, batch_size=2)
    with pytest.raises(TypeError, match="batch 0 is a dict with keys \\['x', 'labels'\\]"):
        EmpiricalRisk(nn.Linear(2, 1), nn.MSELoss(), loader).loss()
    # single batch vs list of batches
    assert len(B.as_batches((collections.UserDict(x=t), ids))) == 1
    assert len(B.as_batches(((t, t), ids))) == 1
    assert len(B.as_batches([(t, ids), (t, ids)])) == 2
    with pytest.raises(TypeError, match="data must be"):
        B.as_batches({"x": t})
    # moves: types kept where they can be rebuilt, integers kept, originals untouched
    Pair = collections.namedtuple("Pair", "a b")
    nested = {"od": collections.OrderedDict(a=t), "dd": collections.defaultdict(list, a=[t]),
              "nt": Pair(t, ids), "l": [t, (ids,)], "s": "text"}
    moved = B.to_device(nested, "cpu", torch.float64)
    assert type(moved["od"]) is collections.OrderedDict and type(moved["nt"]) is Pair
    assert type(moved["dd"]) is dict and moved["dd"]["a"][0].dtype == torch.float64
    assert moved["nt"].b.dtype == torch.long and moved["l"][1][0].dtype == torch.long
    assert moved["s"] == "text" and nested["od"]["a"].dtype == torch.float32


def test_one_shot_iterators_are_refused_with_the_way_out():
    """A generator would be used up by the first pass (a second product then saw no data
    and said only "data is empty"): refused up front, naming a list or a DataLoader."""
    import curvature as cv

    x, y = torch.randn(6, 3), torch.randn(6, 1)
    model = torch.nn.Linear(3, 1)
    for one_shot in ((b for b in [(x, y)]), iter([(x, y)]), map(tuple, [(x, y)])):
        with pytest.raises(TypeError, match="one-shot iterator.*DataLoader"):
            cv.HessianOperator(model, torch.nn.functional.mse_loss, one_shot)
    op = cv.HessianOperator(model, torch.nn.functional.mse_loss, [(x, y)])
    v = torch.randn(op.shape[0])
    assert torch.equal(op @ v, op @ v)  # a list is passed over again and again
