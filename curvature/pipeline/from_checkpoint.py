"""``curvature analyze``: analyse a checkpoint file.

:func:`analyze_checkpoint` loads the checkpoint (never executing code from it),
rebuilds its dataset and loss, checks that the data fits the model, takes a seeded
subset and -- under ``torch.distributed`` -- this rank's shard of each split, and hands
the batches to :func:`curvature.pipeline.analyze`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from curvature.inputs import LOSSES, InputError, check_data_fits, make_loss
from curvature.pipeline.compute import analyze
from curvature.pipeline.config import AnalysisConfig, resolve_config
from curvature.pipeline.summary import Analysis

__all__ = ["analyze_checkpoint"]


def analyze_checkpoint(
    path: str | os.PathLike,
    *,
    model: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    data: Any = None,
    loss: str | None = None,
    max_examples: int | None = None,
    batch_size: int | None = 1024,
    test: bool = True,
    config: AnalysisConfig | None = None,
    log: Callable[[str], None] | None = None,
    source_name: str | None = None,
    **overrides: Any,
) -> Analysis:
    """Load a checkpoint (never executing code from it), rebuild its data and analyse it.

    Args:
        path: a checkpoint of :func:`curvature.checkpoint.save_checkpoint` or a bare
            state dict (then ``model`` is required).
        model, model_kwargs: model factory (``"package.module:function"`` or a zoo
            name) and its arguments, overriding the recorded ones.
        data: a dataset spec (default: the one recorded in the checkpoint).
        loss: ``"ce"`` or ``"mse"`` (default: recorded, else from the dataset's task).
        max_examples: analyse a seeded random subset of this many examples per split.
        batch_size: examples per batch in the Hessian products (``None``: one batch).
        test: also analyse the test split when the dataset has one.

        config, overrides: see :func:`analyze`.
        source_name: how the checkpoint is named in the summary and report (default:
            ``path`` as given).

    Raises:
        curvature.checkpoint.CheckpointError: bad checkpoint, unknown factory,
            mismatching state dict.
        InputError: no data spec, data that does not fit the model, bad options.
        ValueError: a bad data spec.

    Under ``torch.distributed`` (e.g. ``torchrun``), every rank takes the examples
    ``rank::world_size`` of each split and the products, losses and landscapes are
    all-reduced, so every rank computes the single-process analysis.
    """
    from curvature.checkpoint import load_checkpoint
    from curvature.data import batches, load_dataset

    config = resolve_config(config, overrides)
    ckpt = load_checkpoint(path, model_factory=model, model_kwargs=model_kwargs,
                           map_location="cpu")
    spec = data if data is not None else ckpt.data_spec
    if spec is None:
        raise InputError(
            f"{path} records no dataset; name one with --data (e.g. --data digits)")
    ds = load_dataset(spec)
    loss_name = loss or (ckpt.metadata.get("loss") if ckpt.metadata.get("loss") in LOSSES
                         else None) or ("ce" if ds.task == "classification" else "mse")
    loss_fn = make_loss(loss_name)
    what = f"{ckpt.factory}(**{json.dumps(ckpt.factory_kwargs)})"
    check_data_fits(ckpt.model, loss_fn, ds.x_train, ds.y_train, what,
                    labels=torch.cat([ds.y_train, ds.y_test]))
    if max_examples is not None and (isinstance(max_examples, bool) or max_examples < 1):
        raise InputError(f"max_examples must be a positive integer, got {max_examples!r}")
    # the same seeded subset on every rank, then this rank's shard of it
    x, y = _shard(*_subsample(ds.x_train, ds.y_train, max_examples, config.seed))
    batch_size = _memory_batch_size(ckpt.model, loss_fn, x, y, batch_size, config, log)
    train_batches = batches(x, y, batch_size)
    test_batches = None
    if test and len(ds.x_test):
        xt, yt = _shard(*_subsample(ds.x_test, ds.y_test, max_examples, config.seed + 1))
        test_batches = batches(xt, yt, batch_size)
    info = {
        "checkpoint": source_name or str(path),
        "factory": ckpt.factory,
        "factory_kwargs": ckpt.factory_kwargs,
        "data_spec": ds.spec,
        "loss_name": loss_name,
        "bare_state_dict": ckpt.bare,
        "metadata": {k: v for k, v in ckpt.metadata.items() if k != "monitor_history"},
    }
    return analyze(ckpt.model, loss_fn, train_batches, test_data=test_batches, config=config,
                   info=info, log=log)


def _memory_batch_size(model, loss_fn, x: Tensor, y: Tensor, batch_size: int | None,
                       config: AnalysisConfig, log: Callable[[str], None] | None) -> int | None:
    """``batch_size`` lowered to :func:`curvature.memory.product_batch_size` (the gradient
    graph of a batch within :data:`curvature.memory.GRAPH_BYTES`), in equal batches."""
    from curvature import memory

    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    device = torch.device(config.device) if config.device else torch.device("cpu")
    dtype, _ = memory.analysis_dtype(n, device, config.dtype)
    try:
        cap = memory.product_batch_size(model, loss_fn, x, y, dtype)
    except Exception:  # noqa: BLE001 - no second derivatives etc.: the analysis says why
        return batch_size
    want = len(x) if batch_size is None else min(batch_size, len(x))
    if want <= cap:
        return batch_size
    size = -(-want // -(-want // cap))  # equal batches of at most cap examples
    if log is not None:
        log(f"batches of {size} examples (not {want}): one batch's gradient graph stays "
            f"within {memory.GRAPH_BYTES / 2**30:g} GiB (curvature.memory.GRAPH_BYTES)")
    return size


def _subsample(x: Tensor, y: Tensor, n: int | None, seed: int) -> tuple[Tensor, Tensor]:
    if n is None or n >= len(x):
        return x, y
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=gen)[:n].sort().values
    return x[idx], y[idx]


def _shard(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """This rank's examples ``x[rank::world]`` under torch.distributed, else all."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        r, w = dist.get_rank(), dist.get_world_size()
        return x[r::w], y[r::w]
    return x, y
