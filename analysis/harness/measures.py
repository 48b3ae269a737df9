"""Curvature of a trained model, as the experiment drivers measure it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

import curvature as cv

__all__ = ["curvature_metrics"]


def curvature_metrics(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    max_examples: int = 1000,
    tol: float = 1e-3,
    trace_matvecs: int = 100,
    k: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """``lambda_max`` (Lanczos) and ``Tr(H)`` (Hutch++) of the loss Hessian on the
    first ``max_examples`` examples of ``(x, y)``.

    Returns a dict with ``lambda_max``, ``lambda_max_residual``, ``lambda_converged``,
    ``trace``, ``trace_stderr``, ``matvecs`` and, under ``"_eig"``, the
    :class:`curvature.EigenResult` (its vectors are the top-``k`` eigenvectors) and,
    under ``"_op"``, the operator.
    """
    batch = (x[:max_examples], y[:max_examples])
    op = cv.HessianOperator(model, loss_fn, batch, progress=progress)
    eig = cv.eigenvalues(op, k=k, tol=tol, seed=seed, progress=progress)
    tr = cv.trace(op, num_matvecs=trace_matvecs, seed=seed, progress=progress)
    return {
        "lambda_max": float(eig.values[0]),
        "lambda_max_residual": float(eig.residuals[0]),
        "lambda_converged": bool(eig.converged),
        "trace": float(tr.estimate),
        "trace_stderr": float(tr.stderr),
        "matvecs": int(op.num_matvecs),
        "_eig": eig,
        "_op": op,
    }
