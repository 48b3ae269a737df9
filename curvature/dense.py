"""Exact dense Hessians of small models: the ground truth every estimator is tested against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from curvature import engine

__all__ = ["dense_hessian"]


def dense_hessian(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    data: Any,
    *,
    params: Sequence[Tensor] | Sequence[str] | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Exact dense Hessian ``Tensor[n, n]`` of the dataset loss by reverse-over-reverse autograd.

    Row ``i`` is the gradient of ``(grad L)_i`` by plain double backward, independent
    of the forward-mode code paths (``torch.func.hessian`` returns a wrong,
    non-symmetric matrix for affine LayerNorm in torch 2.13). Ground truth for small
    models (``n`` up to a few thousand). Computed in ``dtype`` (float64 by default) on
    a copy of the model; same data semantics (inputs, ``reduction="mean" | "sum"``) as
    :class:`HessianOperator`.
    """
    problem = engine.Problem(
        model, loss_fn, data, params=params, device=device, dtype=dtype, reduction=reduction
    )
    return problem.dense_hessian()


