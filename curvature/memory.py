"""Memory and dtype policy of a post-hoc analysis at scale (:func:`curvature.pipeline.analyze`).

Every estimator of an analysis stores ``n``-vectors besides the model: the Lanczos basis
(``basis_size + b`` columns), the SLQ probe bases (``num_steps + 2`` per probe advanced
together), the Hutch++ sketch (``H S`` and its orthonormal basis, ``2 s`` columns) and the
per-block Lanczos bases of :func:`curvature.block_spectra` (``n x steps`` in all, plus
``2 x blocks`` columns of the multi-column product). On a small model these are a few
megabytes; on an 11M-parameter ResNet-18 one vector is 45 MB in float32, and the defaults
(a 40-column Lanczos basis, 62 SLQ vectors, a 30-column sketch twice, 300 per-block steps)
would need 1.8 / 2.8 / 2.7 / 13 GB. The functions here size them from one bound,
:data:`VECTOR_BYTES` (the stored vectors of the estimator that runs; they run one after
another), and leave today's defaults untouched wherever these fit:

* :func:`vector_count` -- how many ``n``-vectors of a dtype fit a byte budget;
* :func:`lanczos_basis_size` -- the thick-restart basis (restarts keep the ``k`` wanted
  Ritz vectors, so a smaller basis costs products, not correctness);
* :func:`slq_plan` -- SLQ probes per block and steps per probe (steps are capped only when
  a single probe's basis does not fit; fewer steps mean fewer quadrature nodes);
* :func:`sketch_size` -- the Hutch++ sketch (the remaining products go to the Hutchinson
  part, so the estimate stays unbiased with an honest standard error);
* :func:`per_layer_plan` and :func:`block_grouping` -- the per-block Lanczos steps and
  densities, and the partition of ``--per-layer`` (one block per module while the multi-column product and
  the bases fit, else one block per top-level child: stem, residual stages, head).

The dtype (:func:`analysis_dtype`): float64 on CPU up to :data:`FLOAT64_MAX_PARAMS`
parameters, float32 products above (and on accelerators). The bookkeeping stays float64
in both: Lanczos' tridiagonal / arrowhead matrix, its eigenproblem, the Ritz values and
residuals, the SLQ tridiagonals, nodes and weights, and the Hutch++ / Hutchinson quadratic
forms are float64 on the host (:mod:`curvature.algorithms`), so only the products and the
orthogonalisation of the basis are in the product dtype.

:func:`product_batch_size` caps the examples per batch of the Hessian products so that the
tensors autograd saves for one batch's gradient graph stay under :data:`GRAPH_BYTES`:
a double-backward product keeps that graph and builds a second one over it, so its peak
grows with the batch (measured on the ResNet-18 in float32: a training step at 256
examples rises 1.5 GB, one product 3.9 GB). For a mean loss in eval mode the batches'
weighted mean is the same Hessian, so the cap changes the cost per product, not the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "FLOAT64_MAX_PARAMS",
    "GRAPH_BYTES",
    "MODULE_BLOCKS_MAX",
    "VECTOR_BYTES",
    "analysis_dtype",
    "block_grouping",
    "lanczos_basis_size",
    "per_layer_plan",
    "product_batch_size",
    "sketch_size",
    "slq_plan",
    "vector_count",
]

VECTOR_BYTES = 3 * 2**29
"""Bound on the ``n``-vectors one estimator of an analysis stores (1.5 GiB): 36 parameter
vectors of a ResNet-18 in float32; every default of today's estimators fits up to about
2.5M parameters in float64. With the process itself (~0.6 GB: interpreter, torch, model
copies) and one product's graph (:data:`GRAPH_BYTES`) this keeps an analysis of the
ResNet-18 under 4 GB."""

FLOAT64_MAX_PARAMS = 2**21
"""Largest model (2,097,152 parameters) analysed in float64 on CPU by default; above it
products are float32 (half the memory per vector, about half the time per product)."""

GRAPH_BYTES = 2**30
"""Bound on the bytes autograd saves for one batch's gradient graph (1 GiB, as counted by
:func:`curvature.operators.hessian_products.saved_bytes`, which counts a tensor saved by
two operations twice), which sets the largest batch of the Hessian products
(:func:`product_batch_size`): 50 examples of the ResNet-18 in float32."""

MODULE_BLOCKS_MAX = 24
"""Most blocks of the ``"module"`` partition chosen by default for ``--per-layer``
(:func:`block_grouping`); a model with more modules is grouped by top-level child."""


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def vector_count(n: int, dtype: torch.dtype, budget: float | None = None) -> int:
    """How many ``n``-vectors of ``dtype`` fit in ``budget`` bytes (default
    :data:`VECTOR_BYTES`), at least 1."""
    budget = VECTOR_BYTES if budget is None else budget
    return max(1, int(budget // (max(n, 1) * _itemsize(dtype))))


def analysis_dtype(
    num_params: int, device: torch.device, requested: str | None = None
) -> tuple[torch.dtype, str]:
    """The computation dtype of an analysis and why, as ``(dtype, reason)``.

    ``requested`` (``"float32"``/``"float64"``) wins. Otherwise float64 on CPU for models
    of at most :data:`FLOAT64_MAX_PARAMS` parameters, else float32 (on accelerators
    always float32, whose float64 throughput is a small fraction).
    """
    if requested is not None:
        return getattr(torch, requested), "requested"
    if device.type != "cpu":
        return torch.float32, f"float32 products on {device.type}"
    if num_params <= FLOAT64_MAX_PARAMS:
        return torch.float64, (
            f"float64: {num_params:,} parameters <= {FLOAT64_MAX_PARAMS:,} (affordable)")
    return torch.float32, (
        f"float32 products with float64 bookkeeping: {num_params:,} parameters > "
        f"{FLOAT64_MAX_PARAMS:,}")


def lanczos_basis_size(k: int, n: int, dtype: torch.dtype, budget: float | None = None) -> int | None:
    """Thick-restart basis size for ``k`` wanted pairs under the vector budget.

    ``None`` (the estimator's default, :func:`curvature.algorithms.lanczos.default_basis_size`)
    when that default with its block of up to ``k`` columns fits; else the largest size
    that fits, but at least ``k + 2`` (room for the kept Ritz vectors and a block), so the
    budget may be exceeded by at most a few vectors on a tiny budget.
    """
    from curvature.algorithms.lanczos import default_basis_size

    fit = vector_count(n, dtype, budget)
    default = default_basis_size(k, n)
    if default + min(k, n) <= fit:
        return None
    size = max(fit - k, k + 2)
    return min(size, n) if size < n else None


def slq_plan(
    num_steps: int, num_probes: int, n: int, dtype: torch.dtype, budget: float | None = None
) -> tuple[int, int | None]:
    """``(num_steps, probe_block)`` of an SLQ density under the vector budget: each probe
    advanced together stores ``num_steps + 2`` vectors; steps are lowered (to at least 2)
    only when one probe's basis does not fit. ``probe_block=None`` (the estimator's
    default, so the same probes are drawn as before) when that default fits."""
    fit = vector_count(n, dtype, budget)
    steps = max(2, min(num_steps, fit - 2))
    default = max(1, min(num_probes, (1 << 28) // ((num_steps + 2) * max(n, 1))))
    if steps == num_steps and default * (steps + 2) <= fit:
        return steps, None
    return steps, max(1, min(num_probes, fit // (steps + 2)))


def sketch_size(num_matvecs: int, n: int, dtype: torch.dtype, budget: float | None = None) -> int | None:
    """Hutch++ sketch columns under the vector budget (``H S`` and its basis: 2 vectors
    per column, plus a block of products); ``None`` when the default ``num_matvecs // 3``
    fits."""
    fit = vector_count(n, dtype, budget)
    s = min(num_matvecs // 3, n)
    if 2 * s + 2 <= fit:
        return None
    return max(1, (fit - 2) // 2)


def per_layer_plan(
    model: nn.Module,
    n: int,
    dtype: torch.dtype,
    max_steps: int,
    density: bool,
    density_steps: int,
    density_probes: int,
    budget: float | None = None,
) -> dict[str, Any]:
    """Grouping, steps and densities of :func:`curvature.block_spectra` under the budget.

    Its storage, in parameter vectors (each block stores ``n_b`` numbers per vector, so
    all blocks together store ``n``): the Lanczos bases (``steps``), the SLQ bases of the
    block densities (``probes x density_steps``) and the columns of one multi-column
    product and their products (``2 x blocks x (1 + probes)``). The blocks come from
    :func:`block_grouping`; then the Lanczos steps are capped to fit (at least 2); the
    densities keep their probes and steps if the rest fits, else fewer probes (at least 1),
    else fewer steps (at least 10), else they are left out and ``note`` says so.
    """
    from curvature.partition import partition

    fit = vector_count(n, dtype, budget)
    grouping = block_grouping(model, n, dtype, budget)
    blocks = len(partition(model, grouping))
    steps = max(2, min(max_steps, fit - 2 * blocks))
    out = {"per_layer_blocks": grouping, "per_layer_steps": steps,
           "per_layer_density": density, "per_layer_density_steps": density_steps,
           "per_layer_density_probes": density_probes, "per_layer_note": ""}
    if not density:
        return out
    left = fit - steps - 2 * blocks
    for probes in range(density_probes, 0, -1):
        m = min(density_steps, (left - 2 * blocks * probes) // probes)
        if m >= min(density_steps, 10):
            out.update(per_layer_density_steps=m, per_layer_density_probes=probes)
            return out
    out.update(per_layer_density=False, per_layer_note=(
        f"per-block densities left out: {density_probes} probes x {density_steps} steps per "
        f"block do not fit the {fit} parameter vectors of the memory bound next to "
        f"{steps} Lanczos steps"))
    return out


def block_grouping(model: nn.Module, n: int, dtype: torch.dtype, budget: float | None = None) -> str:
    """Partition of ``--per-layer``: ``"module"`` (one block per module owning parameters)
    when there are at most :data:`MODULE_BLOCKS_MAX` of them and their multi-column product
    (one column per block and its product, ``2 x blocks`` vectors) takes at most a quarter
    of the vector budget; else ``"layer"`` (one block per top-level child: for a ResNet the
    stem, the residual stages and the head), unless that leaves a single block.

    Every lockstep pass costs one second backward per column, so the grouping bounds
    time as well as memory: a ResNet-18 has 62 modules with parameters (62 columns per
    pass) and 7 top-level children."""
    from curvature.partition import partition

    blocks = len(partition(model, "module"))
    if blocks <= MODULE_BLOCKS_MAX and 2 * blocks <= vector_count(n, dtype, budget) // 4:
        return "module"
    return "layer" if len(partition(model, "layer")) > 1 else "module"


def product_batch_size(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    x: Tensor,
    y: Tensor,
    dtype: torch.dtype,
    budget: float | None = None,
) -> int:
    """Largest batch whose gradient graph saves at most ``budget`` bytes (default
    :data:`GRAPH_BYTES`), at least 1. The bytes autograd saves for the first backward with
    its graph are measured on 2 and 4 examples of ``x, y`` (in ``dtype``, eval mode, on a
    copy of the model): their difference is the cost per example, the rest (weights saved
    by the layers) is paid once per batch."""
    import copy

    from curvature.batches import model_args
    from curvature.operators.hessian_products import saved_bytes

    budget = GRAPH_BYTES if budget is None else budget
    work = copy.deepcopy(model).to(dtype).eval()
    params = [p for p in work.parameters() if p.requires_grad]

    def graph_bytes(m: int) -> int:
        xs = x[:m].to(dtype) if x.is_floating_point() else x[:m]
        with saved_bytes() as nbytes:
            loss = loss_fn(work(*model_args(xs)), y[:m])
            torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        return nbytes[0]

    if len(x) < 4:
        return max(1, len(x))
    two, four = graph_bytes(2), graph_bytes(4)
    per_example = max((four - two) / 2, 1.0)
    fixed = max(two - 2 * per_example, 0.0)
    return max(1, int(math.floor((budget - fixed) / per_example)))


def memory_lines(info: dict[str, Any]) -> list[str]:
    """Report lines (markdown bullets) stating the dtype of an analysis and why, and each
    stored-vector size the memory bound changed from the estimators' defaults."""
    lines = []
    if info.get("dtype_reason"):
        lines.append(f"- dtype: {info['dtype_reason']}")
    plan = info.get("memory_plan") or {}
    if not plan:
        return lines
    changed = []
    if plan.get("lanczos_basis_size") is not None:
        changed.append(f"Lanczos basis {plan['lanczos_basis_size']} columns (thick restarts)")
    if plan.get("hutchpp_sketch_size") is not None:
        changed.append(f"Hutch++ sketch {plan['hutchpp_sketch_size']} columns")
    if plan.get("density_probe_block") is not None:
        changed.append(f"SLQ {plan['density_steps']} steps per probe, "
                       f"{plan['density_probe_block']} probe(s) at a time")
    if plan.get("per_layer_blocks"):
        changed.append(f"per-layer blocks by {plan['per_layer_blocks']}, "
                       f"at most {plan['per_layer_steps']} Lanczos steps per block"
                       + (f" ({plan['per_layer_note']})" if plan.get("per_layer_note") else ""))
    bound = plan.get("vector_bytes", VECTOR_BYTES) / 2**30
    lines.append(f"- memory: stored vectors of each estimator within {bound:g} GiB "
                 f"({plan.get('vectors')} parameter vectors)"
                 + (": " + "; ".join(changed) if changed else " (every default fits)"))
    return lines
