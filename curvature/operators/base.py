"""The operator base: a symmetric linear operator on flat parameter vectors.

Every estimator in :mod:`curvature` takes a :class:`CurvatureOperator` and nothing
else: it multiplies vectors and never learns where the matrix comes from (the
scipy.sparse.linalg convention). :class:`ModelOperator` is the shared construction
of the operators of a model's dataset loss (Hessian, GGN) on an
:class:`~curvature.risk.EmpiricalRisk`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from curvature.risk import EmpiricalRisk

__all__ = ["CurvatureOperator", "ModelOperator"]


class CurvatureOperator:
    """Base class: a symmetric ``n x n`` linear operator acting on ``Tensor[n]``.

    Subclasses implement :meth:`_matmat` (``Tensor[n, k] -> Tensor[n, k]``); the base
    class validates inputs, counts products and provides ``@`` and :meth:`to_scipy`.
    """

    def __init__(self, n: int, device: torch.device, dtype: torch.dtype) -> None:
        self._n = int(n)
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_matvecs = 0
        self._product_error = 0.0

    @property
    def product_error(self) -> float:
        """Estimated largest error of the products made so far, per unit-norm input.

        ``max_j ||(H v_j)_computed - H v_j|| / ||v_j||`` over every column multiplied
        by this operator, in eigenvalue units. 0.0 for operators whose products are
        exact up to ordinary roundoff (exact Hessian, GGN, dense); finite-difference
        Hessians report their estimate (:mod:`curvature.operators.finite_differences`).
        """
        return self._product_error

    @property
    def shape(self) -> tuple[int, int]:
        return (self._n, self._n)

    def _matmat(self, V: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check(self, X: Tensor, ndim: int) -> None:
        if not isinstance(X, Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(X).__name__}")
        if X.ndim != ndim or X.shape[0] != self._n:
            want = f"[{self._n}]" if ndim == 1 else f"[{self._n}, k]"
            raise ValueError(
                f"operator of shape {self.shape} needs a tensor of shape {want}, "
                f"got {list(X.shape)}"
            )
        if X.dtype != self.dtype:
            raise ValueError(
                f"vector dtype {X.dtype} does not match operator dtype {self.dtype}; "
                f"cast it with .to({self.dtype})"
            )
        if X.device.type != self.device.type or (
            self.device.index is not None and X.device.index not in (None, self.device.index)
        ):
            raise ValueError(
                f"vector is on {X.device} but the operator is on {self.device}; "
                f"move it with .to('{self.device}')"
            )

    def matvec(self, v: Tensor) -> Tensor:
        """Return ``H v`` for ``v: Tensor[n]`` as ``Tensor[n]``."""
        self._check(v, 1)
        return self.matmat(v.unsqueeze(1)).squeeze(1)

    def matmat(self, V: Tensor) -> Tensor:
        """Return ``H V`` for ``V: Tensor[n, k]`` as ``Tensor[n, k]``.

        Implementations make one pass over their data for all ``k`` columns.
        """
        self._check(V, 2)
        if V.shape[1] == 0:
            return V.clone()
        out = self._matmat(V)
        self.num_matvecs += V.shape[1]
        return out

    def __matmul__(self, X: Tensor) -> Tensor:
        if isinstance(X, Tensor) and X.ndim == 2:
            return self.matmat(X)
        return self.matvec(X)

    def to_scipy(self):
        """A :class:`scipy.sparse.linalg.LinearOperator` in float64 numpy (for cross-checks)."""
        from scipy.sparse.linalg import LinearOperator

        def mm(X: np.ndarray) -> np.ndarray:
            X = np.asarray(X, dtype=np.float64)
            squeeze = X.ndim == 1
            T = torch.as_tensor(X.reshape(self._n, -1), dtype=self.dtype, device=self.device)
            out = self.matmat(T).detach().to("cpu", torch.float64).numpy()
            return out[:, 0] if squeeze else out

        return LinearOperator(
            self.shape, matvec=mm, matmat=mm, rmatvec=mm, rmatmat=mm, dtype=np.float64
        )

    def to_dense(self) -> Tensor:
        """Materialise the operator as ``Tensor[n, n]`` by multiplying the identity (small n)."""
        eye = torch.eye(self._n, dtype=self.dtype, device=self.device)
        return self.matmat(eye)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, device={self.device})"


class ModelOperator(CurvatureOperator):
    """Shared construction of model-based operators (Hessian, GGN): the
    :class:`~curvature.risk.EmpiricalRisk` they differentiate (attribute ``risk``)
    and how their products are chunked."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        data: Any,
        *,
        params: Sequence[Tensor] | Sequence[str] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        progress: bool = False,
        chunk_size: int | None = None,
        max_chunk_bytes: float = 2**29,
        reduction: str = "mean",
        cache_data: bool | None = None,
        max_data_bytes: float = 2**30,
    ) -> None:
        self.risk = EmpiricalRisk(
            model, loss_fn, data, params=params, device=device, dtype=dtype,
            reduction=reduction, cache_data=cache_data, max_data_bytes=max_data_bytes,
        )
        self.progress = progress
        self.chunk_size = chunk_size
        if not max_chunk_bytes > 0:
            raise ValueError(f"max_chunk_bytes must be positive, got {max_chunk_bytes!r}")
        self.max_chunk_bytes = max_chunk_bytes
        super().__init__(self.risk.num_params, self.risk.device, self.risk.dtype)

    @property
    def param_names(self) -> list[str]:
        """Names of the differentiated parameters, in flat-vector order."""
        return list(self.risk.names)

    @property
    def params(self) -> Tensor:
        """The flat parameter vector ``w: Tensor[n]`` at which the operator is taken."""
        return self.risk.w0

    @property
    def data_mode(self) -> str:
        """How the data are iterated: ``"list"``, ``"streamed"``, ``"kept"``,
        ``"kept (reason)"`` or ``"streamed (reason)"``
        (:attr:`curvature.data_loop.DataLoop.data_mode`, :mod:`curvature.kept_data`)."""
        return self.risk.data.data_mode

    @property
    def reduction(self) -> str:
        """``"mean"`` or ``"sum"``: how batch losses make the dataset loss."""
        return self.risk.reduction

    def loss(self) -> float:
        """The dataset loss at ``w``: the batch-size weighted mean of the per-batch mean
        losses (``reduction="mean"``) or the sum of the per-batch summed losses
        (``"sum"``)."""
        return self.risk.loss()

    def gradient(self) -> Tensor:
        """The dataset gradient ``g(w): Tensor[n]`` (same reduction as :meth:`loss`)."""
        return self.risk.gradient()
