"""What :mod:`analysis.scale` runs in a child process, reporting its own peak memory.

``python -m analysis.scale.child RESULT.json train --width W --examples N --dtype D``
times one training step (forward and backward of the mean cross-entropy at a batch of
``N`` CIFAR-shaped examples) of :func:`analysis.scale.resnet18.resnet18_cifar`;
``python -m analysis.scale.child RESULT.json cli -- ARGS...`` runs ``curvature ARGS``
in this process. Both write ``{"wall_s", "peak_rss_mib", "exit_code", ...}`` to
``RESULT.json``; the peak is the process's high-water resident set (``VmHWM`` of
``/proc/self/status``, MiB), which includes the interpreter, torch and the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def peak_rss_mib() -> float:
    """High-water resident set of this process (``VmHWM``), MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def train_step(width: float, examples: int, dtype: str) -> dict:
    """One forward + backward of the ResNet-18 at ``examples`` images; seconds and RSS."""
    import torch

    from analysis.scale.resnet18 import resnet18_cifar

    model = resnet18_cifar(width=width).to(getattr(torch, dtype))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(examples, 3, 32, 32, generator=gen, dtype=model.fc.weight.dtype)
    y = torch.randint(0, 10, (examples,), generator=gen)
    before = peak_rss_mib()
    t0 = time.perf_counter()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return {"wall_s": time.perf_counter() - t0, "rss_before_mib": before,
            "num_params": sum(p.numel() for p in model.parameters())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.scale.child")
    p.add_argument("result")
    sub = p.add_subparsers(dest="what", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--width", type=float, default=1.0)
    tr.add_argument("--examples", type=int, default=256)
    tr.add_argument("--dtype", default="float32")
    cl = sub.add_parser("cli")
    cl.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.what == "train":
        out = train_step(a.width, a.examples, a.dtype)
        out["exit_code"] = 0
    else:
        from curvature.cli import main as curvature_main

        args = a.args[1:] if a.args[:1] == ["--"] else a.args
        code = curvature_main(args)
        out = {"wall_s": time.perf_counter() - t0, "exit_code": int(code or 0)}
    out["peak_rss_mib"] = peak_rss_mib()
    Path(a.result).write_text(json.dumps(out))
    return out["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
