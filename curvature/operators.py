"""Symmetric linear operators on flat parameter vectors.

Every estimator in :mod:`curvature` takes a :class:`CurvatureOperator` and nothing
else: it multiplies vectors and never learns where the matrix comes from (the
scipy.sparse.linalg convention). Three implementations are public:

* :class:`HessianOperator` -- the Hessian of a model's dataset loss,
* :class:`GGNOperator` -- the generalised Gauss-Newton ``J^T H_out J`` (PSD),
* :class:`DenseOperator` -- an explicit symmetric matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from curvature import engine

__all__ = ["CurvatureOperator", "DenseOperator", "HessianOperator", "GGNOperator"]


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
        Hessians report their estimate (:mod:`curvature._fd`).
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


class _ModelOperator(CurvatureOperator):
    """Shared construction of model-based operators (Hessian, GGN)."""

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
    ) -> None:
        self.problem = engine.Problem(
            model, loss_fn, data, params=params, device=device, dtype=dtype,
            reduction=reduction,
        )
        self.progress = progress
        self.chunk_size = chunk_size
        if not max_chunk_bytes > 0:
            raise ValueError(f"max_chunk_bytes must be positive, got {max_chunk_bytes!r}")
        self.max_chunk_bytes = max_chunk_bytes
        super().__init__(self.problem.num_params, self.problem.device, self.problem.dtype)

    @property
    def param_names(self) -> list[str]:
        """Names of the differentiated parameters, in flat-vector order."""
        return list(self.problem.names)

    @property
    def params(self) -> Tensor:
        """The flat parameter vector ``w: Tensor[n]`` at which the operator is taken."""
        return self.problem.w0

    @property
    def reduction(self) -> str:
        """``"mean"`` or ``"sum"``: how batch losses make the dataset loss."""
        return self.problem.reduction

    def loss(self) -> float:
        """The dataset loss at ``w``: the batch-size weighted mean of the per-batch mean
        losses (``reduction="mean"``) or the sum of the per-batch summed losses
        (``"sum"``)."""
        return self.problem.loss()

    def gradient(self) -> Tensor:
        """The dataset gradient ``g(w): Tensor[n]`` (same reduction as :meth:`loss`)."""
        return self.problem.gradient()


class HessianOperator(_ModelOperator):
    """Hessian of a model's dataset loss with respect to (a subset of) its parameters.

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode; its weights, buffers and train/eval mode are left
        exactly as they were.
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar``: the mean loss of a batch
        (``reduction="mean"``) or its summed loss (``reduction="sum"``).
    data : batch or iterable of batches
        One ``(inputs, targets)`` pair or an iterable of them (a DataLoader), all-reduced
        over ranks when ``torch.distributed`` is initialised (``data`` is then this
        rank's shard). ``inputs`` may be a tensor, any ``Mapping`` (``dict``,
        ``UserDict``, HuggingFace ``BatchEncoding``) or nested tuples/lists of them: a
        tuple is passed to the model as positional arguments, anything else as its one
        argument (a model whose ``forward`` takes keyword arguments needs a small
        wrapper, see the README). The batch size is the leading dimension of the first
        tensor in the inputs; floating tensors are cast to ``dtype``, integer ones
        (``input_ids``) kept.
    reduction : {"mean", "sum"}
        ``"mean"`` (default): ``loss_fn`` averages over its batch and the operator is
        the Hessian of ``sum_b n_b L_b(w) / sum_b n_b`` -- what one big batch gives.
        ``"sum"``: ``loss_fn`` sums over its batch and the operator is the Hessian of
        ``sum_b S_b(w)``, the loss summed over the whole dataset (curvlinops'
        convention for summed losses). The first batch checks the declaration: a
        ``loss_fn`` whose value doubles on the batch repeated twice (a summed loss)
        under ``"mean"``, or stays equal (a mean) under ``"sum"``, raises
        ``ValueError`` naming the fix (:func:`curvature.batches.check_reduction`);
        losses whose outputs or targets are not tensors are not checked.
    method : {"exact", "fd", "fd-central"}
        ``"exact"``: autograd (forward-over-reverse, falling back to double
        backward). ``"fd"``: ``(g(w + eps v) - g(w)) / eps`` with ``g(w)`` cached.
        ``"fd-central"``: ``(g(w + eps v) - g(w - eps v)) / (2 eps)``. Finite
        differences only need first derivatives (kernels without double backward).
        Both are evaluated at ``eps`` and ``eps / 2`` and Richardson-extrapolated
        (error ``O(eps^2)`` forward, ``O(eps^4)`` central); the pair also gives each
        product's error estimate, whose maximum is :attr:`product_error`. Cost per
        vector: 2 gradients (``"fd"``) or 4 (``"fd-central"``), up to 3x that when
        the step of a vector is corrected, plus 4 gradients once per operator to
        measure the roundoff of a gradient (see :mod:`curvature._fd`).
    eps : float, optional
        Finite-difference step on ``v`` (points ``w +- eps v`` and ``w +- eps v / 2``).
        ``None`` (default) adapts the step per vector to balance truncation against
        the measured gradient roundoff, starting from (and never above)
        ``c (1 + ||w||) / ||v||`` with ``c = sqrt(u)`` (forward) or ``cbrt(u)``
        (central), ``u`` the unit roundoff of ``dtype``. An explicit ``eps`` is used
        as given (no adaptation; the error is still estimated).
    params : parameters or names, optional
        Parameters to differentiate (default: all with ``requires_grad``). A subset
        gives that diagonal block of the Hessian.
    device, dtype : optional
        Where and in which precision to compute. A different dtype/device works on
        a copy of the model, never the user's.
    chunk_size : int, optional
        Number of vectors pushed through the model at once by :meth:`matmat`.
        ``None`` (default) sizes it from memory: each vector of a vectorised pass
        holds about one copy of the tensors autograd saves for a batch's gradient
        graph (measured on the first batch), and as many vectors go at once as keep
        that under ``max_chunk_bytes``.
    max_chunk_bytes : float
        Memory bound of one vectorised pass for ``chunk_size=None`` (default 512 MiB,
        the fastest of 256 MiB / 512 MiB / 1 GiB for Hutch++ traces on a ResNet-20
        and a ViT: 8.1 / 6.0 / 9.3 s and 3.2 / 2.6 / 4.1 s; very wide passes fault
        in fresh memory on every call, narrow ones vectorise less).
    cache_graphs : bool or None
        Exact method only. Each product needs, per batch, a forward pass and a first
        backward with its graph, then one second backward per vector. Kept graphs
        are reused by later products, which then cost about 1.5-2 gradients instead
        of 2.5-3. ``None`` (default) keeps them when the tensors saved by the first
        batch's graph, times the number of batches, fit in ``max_cache_bytes``;
        ``True`` always, ``False`` never (one batch graph in memory at a time).
        Streamed data (DataLoaders, whose batches may change) is never cached.
    max_cache_bytes : float
        Memory bound for ``cache_graphs=None`` (default 1 GiB), estimated from the
        bytes of the tensors autograd saves for the first batch.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        data: Any,
        *,
        method: str = "exact",
        eps: float | None = None,
        params: Sequence[Tensor] | Sequence[str] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        progress: bool = False,
        chunk_size: int | None = None,
        max_chunk_bytes: float = 2**29,
        cache_graphs: bool | None = None,
        max_cache_bytes: float = 2**30,
        reduction: str = "mean",
    ) -> None:
        if method not in ("exact", "fd", "fd-central"):
            raise ValueError(f"method must be 'exact', 'fd' or 'fd-central', got {method!r}")
        if eps is not None and not (eps > 0 and np.isfinite(eps)):
            raise ValueError(f"eps must be a positive finite number, got {eps!r}")
        super().__init__(
            model, loss_fn, data, params=params, device=device, dtype=dtype,
            progress=progress, chunk_size=chunk_size, max_chunk_bytes=max_chunk_bytes,
            reduction=reduction,
        )
        self.method = method
        self.eps = eps
        self.cache_graphs = cache_graphs
        self.max_cache_bytes = max_cache_bytes

    def _matmat(self, V: Tensor) -> Tensor:
        if self.method == "exact":
            return self.problem.hvp_exact(
                V,
                chunk_size=self.chunk_size,
                progress=self.progress,
                cache_graphs=self.cache_graphs,
                max_cache_bytes=self.max_cache_bytes,
                max_chunk_bytes=self.max_chunk_bytes,
            )
        out, err = self.problem.hvp_fd(
            V, eps=self.eps, central=self.method == "fd-central", progress=self.progress
        )
        self._product_error = max(self._product_error, float(err.max()))
        return out


class GGNOperator(_ModelOperator):
    """Generalised Gauss-Newton ``G = sum_b (n_b/N) J_b^T H_out,b J_b`` (PSD for convex losses).

    ``J_b`` is the Jacobian of the model outputs of batch ``b`` with respect to the
    parameters and ``H_out,b`` the Hessian of ``loss_fn`` with respect to those
    outputs. With ``reduction="sum"`` the weights ``n_b/N`` are 1 (``loss_fn`` sums
    over its batch). Same arguments as :class:`HessianOperator` (no ``method``/``eps``).
    """

    def _matmat(self, V: Tensor) -> Tensor:
        return self.problem.ggn(
            V, chunk_size=self.chunk_size, progress=self.progress,
            max_chunk_bytes=self.max_chunk_bytes,
        )
