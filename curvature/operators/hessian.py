"""The Hessian operator of a model's dataset loss.

:class:`HessianOperator` multiplies by ``H = d^2 L / dw^2`` of the
:class:`~curvature.risk.EmpiricalRisk`: exactly (:mod:`.hessian_products`) or by
finite differences of gradients (:mod:`.finite_differences`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from curvature.operators.base import ModelOperator
from curvature.operators.finite_differences import FiniteDifferences
from curvature.operators.hessian_products import ExactProducts

__all__ = ["HessianOperator"]


class HessianOperator(ModelOperator):
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
        measure the roundoff of a gradient (see :mod:`curvature.operators.finite_differences`).
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
        Memory bound of one vectorised pass for ``chunk_size=None`` (default 2 GiB).
        Wide passes are what make forward-over-reverse pay: Hutch++ traces of 30
        products, settled, by jvp-of-grad under 512 MiB / 1 GiB / 2 GiB took 13.2 /
        10.3 / 7.9 s on a small GPT-2 (0.9M parameters, 4 columns a pass at 512 MiB)
        and 10.4 / 11.2 / 7.7 s on a ResNet-20 of width 32 (1.1M), against 11.8 /
        10.8 / 9.4 s and 10.4 / 11.3 / 10.2 s by double backward; the jvp path holds
        about 1.2 of the charged bytes per column (measured 136 MiB a column on the
        GPT-2, charged 119).
    cache_graphs : bool or None
        Exact method only. Each product needs, per batch, a forward pass and a first
        backward with its graph, then one second backward per vector. Kept graphs
        are reused by later products, which then cost about 1.5-2 gradients instead
        of 2.5-3; :meth:`gradient` builds and keeps them too. ``None`` (default)
        keeps them when the tensors saved by the first batch's graph, times the
        number of batches, fit in ``max_cache_bytes``;
        ``True`` always, ``False`` never (one batch graph in memory at a time).
        Streamed data (DataLoaders, whose batches may change) is never cached; a
        DataLoader kept after its first pass (``cache_data``) is, from then on.
    max_cache_bytes : float
        Memory bound for ``cache_graphs=None`` (default 1 GiB), estimated from the
        bytes of the tensors autograd saves for the first batch.
    cache_data : bool or None
        For data given as a re-iterable (a DataLoader), which is otherwise re-read,
        re-collated and moved on every product. ``None`` (default): the first pass
        keeps the moved batches if they fit ``max_data_bytes``; the second pass
        compares a fresh first batch with the kept one and uses the kept batches from
        then on (like a list: moved once, graphs cached) if it is equal, or if the
        loader only reshuffles the same examples (``shuffle=True``: exact, the dataset
        loss does not depend on how examples are grouped); random augmentation or any
        other change streams with a warning. ``True`` keeps the first pass unchecked,
        ``False`` always streams. :attr:`data_mode` says what was done
        (:mod:`curvature.kept_data`).
    max_data_bytes : float
        Memory bound of the kept batches for ``cache_data`` (default 1 GiB, bytes of
        their tensors on ``device``).
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
        max_chunk_bytes: float = 2**31,
        cache_graphs: bool | None = None,
        max_cache_bytes: float = 2**30,
        reduction: str = "mean",
        cache_data: bool | None = None,
        max_data_bytes: float = 2**30,
    ) -> None:
        if method not in ("exact", "fd", "fd-central"):
            raise ValueError(f"method must be 'exact', 'fd' or 'fd-central', got {method!r}")
        if eps is not None and not (eps > 0 and np.isfinite(eps)):
            raise ValueError(f"eps must be a positive finite number, got {eps!r}")
        super().__init__(
            model, loss_fn, data, params=params, device=device, dtype=dtype,
            progress=progress, chunk_size=chunk_size, max_chunk_bytes=max_chunk_bytes,
            reduction=reduction, cache_data=cache_data, max_data_bytes=max_data_bytes,
        )
        self.method = method
        self.eps = eps
        self.cache_graphs = cache_graphs
        self.max_cache_bytes = max_cache_bytes
        self.products = ExactProducts(self.risk)
        """The exact products (``method="exact"``): :attr:`ExactProducts.paths` says which
        path the module's products take, :attr:`ExactProducts.column_bytes` the measured
        memory per column, :attr:`ExactProducts.num_cached_graphs` the kept graphs."""
        self.finite_differences = FiniteDifferences(self.risk)
        """The finite-difference products (``method="fd"``/``"fd-central"``)."""

    def gradient(self) -> Tensor:
        """The dataset gradient ``g(w): Tensor[n]``. With exact products, its pass builds
        the batch gradient graphs and keeps those the graph cache admits, so the first
        product after it (a Lanczos started from the gradient) is a warm one."""
        if self.method != "exact":
            return super().gradient()
        return self.risk.gradient(
            compute=lambda: self.products.loss_and_gradient(
                self.cache_graphs, self.max_cache_bytes, progress=self.progress
            ),
        )

    def _matmat(self, V: Tensor) -> Tensor:
        if self.method == "exact":
            return self.products.matmat(
                V,
                chunk_size=self.chunk_size,
                progress=self.progress,
                cache_graphs=self.cache_graphs,
                max_cache_bytes=self.max_cache_bytes,
                max_chunk_bytes=self.max_chunk_bytes,
            )
        out, err = self.finite_differences.products(
            V, eps=self.eps, central=self.method == "fd-central", progress=self.progress
        )
        self._product_error = max(self._product_error, float(err.max()))
        return out
