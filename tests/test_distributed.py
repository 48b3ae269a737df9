"""Two gloo processes on uneven shards give the single-process operator (1e-8 relative).

The ranks run as plain subprocesses of this file (``python test_distributed.py RANK ...``)
so that a failing rank's whole stderr reaches the assertion message, and each rank
writes its own result, compared with the single-process one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import curvature as cv

pytestmark = pytest.mark.distributed

SPLIT = 37  # rank 0 holds examples [0, 37), rank 1 the other 83: uneven shards
WORLD = 2


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


def run_rank(rank: int, port: int, result_file: str) -> None:
    """One rank: join the group, compute on its shard, save, and leave in step."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        model, x, y, V = workload()
        torch.save(products(model, shard(x, y, rank), V), result_file)
        dist.barrier()  # no rank tears down while another still communicates
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_single_process(tmp_path):
    model, x, y, V = workload()
    single = products(model, [(x, y)], V)
    port = free_port()
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(port), str(tmp_path / f"rank{rank}.pt")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in range(WORLD)
    ]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{log}"
    for rank in range(WORLD):
        multi = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key, ref in single.items():
            err = float((multi[key] - ref).norm() / ref.norm())
            assert err < 1e-8, (rank, key, err)


if __name__ == "__main__":
    run_rank(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
