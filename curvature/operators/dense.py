"""Explicit matrices: :class:`DenseOperator` and the exact dense Hessian of small models.

:func:`dense_hessian` is the ground truth every estimator is tested against: rows
``d(g . e_i)/dw`` by plain double backward (:mod:`.hessian_products`), summed over
the data by :meth:`curvature.data_loop.DataLoop.accumulate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from curvature.operators.base import CurvatureOperator
from curvature.operators.hessian_products import ExactProducts
from curvature.risk import EmpiricalRisk

__all__ = ["DenseOperator", "dense_hessian"]


class DenseOperator(CurvatureOperator):
    """An explicit symmetric matrix ``A: Tensor[n, n]`` as a :class:`CurvatureOperator`.

    Raises ``ValueError`` if ``A`` is not square, not finite, or not symmetric to
    ``rtol`` (relative to ``max |A_ij|``).
    """

    def __init__(self, matrix: Tensor | np.ndarray, *, rtol: float = 1e-6) -> None:
        A = torch.as_tensor(matrix)
        if not A.is_floating_point():
            A = A.to(torch.get_default_dtype())
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"DenseOperator needs a square matrix, got shape {list(A.shape)}")
        if not torch.isfinite(A).all():
            raise ValueError("DenseOperator: matrix has non-finite entries")
        scale = A.abs().max().clamp_min(torch.finfo(A.dtype).tiny)
        asym = (A - A.T).abs().max()
        if asym > rtol * scale:
            raise ValueError(
                f"DenseOperator needs a symmetric matrix: max |A - A^T| = {float(asym):.3g} "
                f"exceeds rtol * max|A| = {float(rtol * scale):.3g}"
            )
        super().__init__(A.shape[0], A.device, A.dtype)
        self.matrix = A

    def _matmat(self, V: Tensor) -> Tensor:
        return self.matrix @ V


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
    risk = EmpiricalRisk(
        model, loss_fn, data, params=params, device=device, dtype=dtype, reduction=reduction
    )
    products = ExactProducts(risk)
    n = risk.num_params
    eye = torch.eye(n, dtype=risk.dtype, device=risk.device)

    def step(_: int, batch: Any) -> tuple[Tensor, Tensor]:
        g, loss = products.gradient_graph(batch)
        return products.second_backward(g, eye, chunk_size=256), loss

    with risk.differentiable():
        return risk.data.accumulate(step, torch.zeros(n, n, dtype=risk.dtype, device=risk.device))
