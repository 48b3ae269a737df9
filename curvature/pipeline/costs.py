"""Measured costs of an analysis' parts, for its plan (:mod:`curvature.pipeline.plan`).

Every time is a wall-clock measurement on the actual model, data, dtype and device:

* a Hessian product: the *second* product of the training split's operator (the first
  one also fills caches, so it is not typical), or the first where that one alone took
  over :data:`WIDE_MEASURE_LIMIT_S`;
* a gradient: a warm dataset gradient;
* a landscape point: a short 1-D landscape, per point (points are vectorised);
* a loss evaluation (adaptive sharpness): one pass of the training loss at a copy of
  the parameters (:func:`curvature.sharpness.loss_at`);
* the test split: one product (its first, an upper bound of a warm one); its gradient
  and landscape point scaled from the training split's by the ratio of product times;
* a per-layer column: from a warm 1-column and a warm ``w``-column product
  (``w = min(4, blocks)``), ``seconds = pass + columns * column``.

When one product takes more than :data:`WIDE_MEASURE_LIMIT_S` (a model of millions of
parameters on a CPU), every measurement would cost a sizeable part of a short budget
(measured on an 11M-parameter ResNet-18, 256 examples, 2 cores: 37 s of 117 s of set-up
were the warm gradient and the landscape line). There the times the analysis has already
spent stand in: the gradient is the first dataset gradient (``gradient_s``, an upper
bound of a warm one), a landscape point is one forward pass over the split's data
(``forward_s``, the accuracy pass; the landscape's points are evaluated together, so a
point costs at most a forward pass), and a per-layer column is planned as the second
backward of the timed product (the batch graphs of a multi-column product are built
once and shared by its columns; the rest of the product is the pass).

Under ``torch.distributed`` the slowest rank's times (and set-up time) are used on every
rank, so all ranks make the same plan (their products are all-reduced and must match;
what a metric leaves to the next is counted in products, not measured time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from curvature.pipeline.plan import Costs

__all__ = ["gradient_seconds", "measure_costs", "point_seconds", "product_seconds"]


def _unit_columns(op: Any, width: int, seed: int) -> Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    V = torch.randn(op.shape[0], width, generator=gen, dtype=torch.float64)
    V /= V.norm(dim=0, keepdim=True)
    return V.to(device=op.device, dtype=op.dtype)


WIDE_MEASURE_LIMIT_S = 2.0
"""Seconds of one product above which nothing is timed twice: the first product's time
stands for a warm one, the analysis' own first gradient and forward pass for the
gradient and a landscape point, and the per-layer column cost is not measured with a
wide product (on an 11M-parameter ResNet-18 on 2 CPU cores, measuring it took over five
minutes)."""


def _median_time(fn: Callable[[], Any], device: Any, repeats: int = 5,
                 within: float = 0.3) -> float:
    """Median wall time of ``fn()``: repeated (up to ``repeats`` times) only while the
    repeats take under ``within`` seconds, so cheap operations are timed robustly on a
    loaded machine and expensive ones are run once."""
    times: list[float] = []
    while len(times) < repeats and sum(times) < within:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def product_seconds(op: Any, width: int = 1, seed: int = 0,
                    parts: dict[str, float] | None = None) -> float:
    """Seconds of a warm ``width``-column product of ``op``. The first product also
    chooses the product path and fills caches, so it is timed again warm, unless it
    took over :data:`WIDE_MEASURE_LIMIT_S`: there its time stands (an upper bound of a
    warm one; start-up is a small part of such a product and a second one would cost a
    sizeable part of a short budget). ``parts``: filled with the timed product's seconds
    in second backwards (``"second_backward"``) and the rest (``"pass"``), for exact
    Hessian products (left empty otherwise)."""
    V = _unit_columns(op, width, seed)
    products = getattr(op, "products", None)
    record = (parts is not None and getattr(op, "method", None) == "exact"
              and products is not None)
    if record:
        products.record_parts = True
    try:
        t0 = time.perf_counter()
        op.matmat(V)
        _sync(op.device)
        t = time.perf_counter() - t0
        if t <= WIDE_MEASURE_LIMIT_S:
            t = _median_time(lambda: op.matmat(V), op.device)
    finally:
        if record:
            products.record_parts = False
    if record and products.parts:
        backward = products.parts["second_backward"]
        parts.update(second_backward=backward, **{"pass": max(t - backward, 0.0)})
    return t


def block_column_seconds(model: nn.Module, loss_fn: Callable[[Any, Any], Tensor], data: Any,
                         blocks: list[list[str]], examples: int, dtype: torch.dtype,
                         device: torch.device, seed: int = 0) -> float:
    """Seconds per column of a per-layer step (one column per block, each product
    restricted to its block: :meth:`ExactProducts.block_matmat`) over ``examples``
    examples, from one such step on the first batch of ``data`` scaled by the examples
    (a first call, so an upper bound of a warm one). ``blocks``: parameter names per
    block."""
    from curvature.batches import batch_size_of
    from curvature.data_loop import DataLoop
    from curvature.operators import HessianOperator

    batch = next(b for _, b in DataLoop(data).iterate())
    names = [n for ps in blocks for n in ps]
    sub = HessianOperator(model, loss_fn, [batch], params=names, dtype=dtype, device=device)
    index = {n: i for i, n in enumerate(sub.risk.names)}
    columns = [[index[n] for n in ps] for ps in blocks]
    V = _unit_columns(sub, len(blocks), seed)
    t0 = time.perf_counter()
    sub.products.block_matmat(V, columns)
    _sync(sub.device)
    seconds = time.perf_counter() - t0
    return seconds * examples / max(batch_size_of(batch), 1) / len(blocks)


def gradient_seconds(op: Any) -> float:
    """Seconds of a warm dataset gradient of ``op``'s loss (at a copy of its parameters,
    so the cached gradient is not returned; the analysis' first gradient also pays
    one-time set-up and is not typical)."""
    w = op.params.clone()
    return _median_time(lambda: op.risk.gradient(w), op.device)


def point_seconds(model: nn.Module, loss_fn: Callable[[Any, Any], Tensor], batches: Any,
                  params: list[str], seed: int = 0, points: int = 5) -> float:
    """Seconds per point of a 1-D loss landscape (:func:`curvature.loss_landscape_1d`,
    vectorised over points as the analysis runs it): a ``points``-point line divided by
    ``points`` (the median of a few lines when they are cheap)."""
    from curvature.landscape import filter_normalized_direction, loss_landscape_1d

    d = filter_normalized_direction(model, params=params, seed=seed)
    grid = np.linspace(-1e-3, 1e-3, points)
    run = lambda: loss_landscape_1d(model, loss_fn, batches, d, grid, params=params)  # noqa: E731
    return _median_time(run, d.device) / points


def measure_costs(
    ops: dict[str, Any],
    *,
    evaluate: Callable[[], float] | None = None,
    per_layer_width: int = 0,
    seed: int = 0,
    started: float | None = None,
    gradient_s: float | None = None,
    forward_s: float | None = None,
    loss: bool = False,
    block_column: Callable[[], float] | None = None,
) -> Costs:
    """:class:`Costs` of the splits' operators ``ops`` (``{"train": op, ...}``).

    The training split is timed in full; another split by one (first, so not faster
    than typical) product, its gradient and landscape point scaled from the training
    split's by the ratio of the product times. ``evaluate``: returns the seconds of one
    landscape point (omitted when no landscape is computed); ``per_layer_width``:
    columns of the wide product that measures per-layer columns (0: not measured);
    ``started``: ``time.perf_counter()`` at the start of the analysis (for ``setup_s``);
    ``gradient_s``, ``forward_s``: seconds the analysis spent on the training split's
    first gradient and on a forward pass over it, used instead of new measurements when
    a product takes over :data:`WIDE_MEASURE_LIMIT_S` (module docstring);
    ``loss``: also time a plain loss evaluation of the training split (``loss_s``);
    ``block_column``: returns the seconds of a per-layer column
    (:func:`block_column_seconds`), used for products above :data:`WIDE_MEASURE_LIMIT_S`.
    """
    costs = Costs()
    train = ops["train"]
    parts: dict[str, float] = {}
    costs.product_s["train"] = product_seconds(train, 1, seed, parts)
    expensive = costs.product_s["train"] > WIDE_MEASURE_LIMIT_S
    if expensive and gradient_s is not None:
        costs.gradient_s["train"] = gradient_s
    else:
        costs.gradient_s["train"] = gradient_seconds(train)
    if evaluate is not None:
        expensive_point = expensive and forward_s is not None
        costs.evaluation_s["train"] = forward_s if expensive_point else evaluate()
    if loss:
        from curvature.sharpness import loss_at

        w = train.risk.w0.clone()
        costs.loss_s["train"] = (forward_s if expensive and forward_s is not None else
                                 _median_time(lambda: loss_at(train.risk, w), train.device))
    for split, op in ops.items():
        if split != "train":
            # one product, not repeated: a first product is at least as slow as a warm
            # one, and time is not proportional to examples (fixed costs per pass)
            V = _unit_columns(op, 1, seed)
            t0 = time.perf_counter()
            op.matmat(V)
            _sync(op.device)
            costs.product_s[split] = time.perf_counter() - t0
            ratio = costs.product_s[split] / costs.product_s["train"]
            for table in (costs.gradient_s, costs.evaluation_s):
                if "train" in table:
                    table[split] = table["train"] * ratio
    if per_layer_width >= 2 and expensive and block_column is not None:
        # one restricted step on one batch: columns share no pass here (each builds its
        # own part of the double backward), so a step costs its columns
        costs.column_s, costs.pass_s = block_column(), 0.0
    elif per_layer_width >= 2 and expensive and parts:
        # a wide product costs minutes here: the columns of a multi-column product share
        # the pass (batch graphs) and each adds one second backward over them
        costs.column_s, costs.pass_s = parts["second_backward"], parts["pass"]
    elif per_layer_width >= 2 and expensive:
        # and without a measured split, each column is planned as a full product (an
        # upper bound)
        costs.column_s, costs.pass_s = costs.product_s["train"], 0.0
    elif per_layer_width >= 2:
        t1 = costs.product_s["train"]
        tw = product_seconds(train, per_layer_width, seed + 1)
        costs.column_s = max((tw - t1) / (per_layer_width - 1), 0.1 * t1)
        costs.pass_s = max(t1 - costs.column_s, 0.0)
    elif per_layer_width == 1:
        costs.column_s, costs.pass_s = costs.product_s["train"], 0.0
    if started is not None:
        costs.setup_s = time.perf_counter() - started
    _slowest_rank(costs)
    return costs


def _slowest_rank(costs: Costs) -> None:
    """Every rank takes the largest of each time over the ranks (identical plans)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    keys = [("product_s", s) for s in sorted(costs.product_s)]
    keys += [("gradient_s", s) for s in sorted(costs.gradient_s)]
    keys += [("evaluation_s", s) for s in sorted(costs.evaluation_s)]
    keys += [("loss_s", s) for s in sorted(costs.loss_s)]
    values = [getattr(costs, a)[s] for a, s in keys]
    values += [costs.setup_s, costs.column_s or 0.0, costs.pass_s or 0.0]
    backend = dist.get_backend()
    dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    out = t.cpu().tolist()
    for (a, s), v in zip(keys, out):
        getattr(costs, a)[s] = v
    costs.setup_s = out[-3]
    if costs.column_s is not None:
        costs.column_s, costs.pass_s = out[-2], out[-1]


def _sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
