"""Two gloo processes on uneven shards give the single-process operator (1e-8 relative)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import curvature as cv

pytestmark = pytest.mark.distributed

SPLIT = 37  # rank 0 holds examples [0, 37), rank 1 the other 83: uneven shards


def workload():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 9, dtype=torch.float32), nn.Tanh(), nn.Linear(9, 4, dtype=torch.float32)
    ).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(120, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (120,), generator=g)
    n = sum(p.numel() for p in model.parameters())
    V = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return model, x, y, V


def shard(x, y, rank):
    lo, hi = (0, SPLIT) if rank == 0 else (SPLIT, len(y))
    xs, ys = x[lo:hi], y[lo:hi]
    # uneven batches inside the shard as well
    return [(xs[i : i + 16], ys[i : i + 16]) for i in range(0, len(ys), 16)]


def products(model, data, V):
    out = {}
    for name, op in [
        ("exact", cv.HessianOperator(model, F.cross_entropy, data)),
        ("fd-central", cv.HessianOperator(model, F.cross_entropy, data, method="fd-central")),
        ("ggn", cv.GGNOperator(model, F.cross_entropy, data)),
    ]:
        out[name] = op @ V
    op = cv.HessianOperator(model, F.cross_entropy, data)
    out["loss"] = torch.tensor(op.loss())
    out["gradient"] = op.gradient()
    return out


def worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, x, y, V = workload()
        out = products(model, shard(x, y, rank), V)
        if rank == 0:
            torch.save(out, result_file)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_single_process(tmp_path):
    model, x, y, V = workload()
    single = products(model, [(x, y)], V)
    result = tmp_path / "result.pt"
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True)
    multi = torch.load(result, weights_only=True)
    for key, ref in single.items():
        err = float((multi[key] - ref).norm() / ref.norm())
        assert err < 1e-8, (key, err)
