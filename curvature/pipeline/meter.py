"""One progress bar for a whole analysis, and the operator wrapper that moves it.

The bar's total is the plan's work in Hessian products of the training split
(:meth:`curvature.pipeline.plan.Plan.progress_total`), so its ETA is the plan's, and
the estimators run with ``progress=False`` (no bars of their own):
:class:`MeteredOperator` passes every product to the bar as it happens. Labels are
plain text.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from tqdm.auto import tqdm

from curvature.operators import CurvatureOperator

__all__ = ["MeteredOperator", "analysis_bar"]


class MeteredOperator(CurvatureOperator):
    """``op`` whose every product of ``k`` columns calls ``tick(k)`` (same products,
    same ``product_error``; counts its own ``num_matvecs``)."""

    def __init__(self, op: CurvatureOperator, tick: Callable[[int], None]) -> None:
        super().__init__(op.shape[0], op.device, op.dtype)
        self.inner = op
        self.tick = tick

    @property
    def product_error(self) -> float:
        return self.inner.product_error

    def _matmat(self, V: Tensor) -> Tensor:
        out = self.inner.matmat(V)
        self.tick(V.shape[1])
        return out


def analysis_bar(total: float, enabled: bool) -> tqdm:
    """The analysis' bar on stderr: ``total`` products, plain-text label."""
    return tqdm(total=round(total, 1), desc="curvature analysis", unit="product",
                disable=not enabled, dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} products "
                           "[{elapsed}<{remaining}]")
