"""The empirical risk: a model's dataset loss as a function of its flat parameters.

An :class:`EmpiricalRisk` owns the functional model call on a *flat* parameter
vector ``w: Tensor[n]`` (``torch.func.functional_call``; the other parameters and
the buffers held fixed), the selection of the differentiated parameters, the copy of
the model when another dtype/device is asked for (the user's model is never cast or
written), and the dataset loss and gradient

``L(w) = sum_b n_b L_b(w) / N`` (``reduction="mean"``, ``L_b`` the mean loss of
batch ``b``) or ``L(w) = sum_b S_b(w)`` (``"sum"``, ``S_b`` its summed loss),

whose passes over the data go through :class:`curvature.data_loop.DataLoop` (one
loop: device moves, weighting, all-reduce, non-finite checks, eval mode). The
curvature operators (:mod:`curvature.operators`) are built on it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from curvature.batches import check_reduction, check_reduction_name, model_args
from curvature.data_loop import DataLoop

__all__ = ["EmpiricalRisk"]


def _select(named: dict[str, Tensor], params: Any) -> list[str]:
    """Names of the parameters to differentiate (default: all with ``requires_grad``)."""
    if params is None:
        names = [k for k, p in named.items() if p.requires_grad]
        if not names:
            raise ValueError("model has no trainable parameters (none with requires_grad)")
        return names
    params = list(params)
    if not params:
        raise ValueError("params is empty: select at least one parameter")
    by_id = {id(p): k for k, p in named.items()}
    names = []
    for i, p in enumerate(params):
        if isinstance(p, str):
            if p not in named:
                raise ValueError(f"params[{i}] = {p!r} is not a parameter name of the model")
            names.append(p)
        elif isinstance(p, Tensor):
            if id(p) not in by_id:
                raise ValueError(
                    f"params[{i}] (shape {list(p.shape)}) is not a parameter of the model"
                )
            names.append(by_id[id(p)])
        else:
            raise TypeError(f"params[{i}] must be a Tensor or a name, got {type(p).__name__}")
    if len(set(names)) != len(names):
        raise ValueError("params lists the same parameter twice")
    return names


class EmpiricalRisk:
    """A model, a loss and a dataset, viewed as the dataset loss ``L(w)`` of flat ``w``.

    See :class:`curvature.HessianOperator` for the meaning of the arguments.

    Attributes:
        model: the module evaluated (the user's, or a copy in ``dtype`` on ``device``).
        names, shapes, numels: the differentiated parameters in flat-vector order.
        num_params: ``n``, the length of ``w``.
        w0: ``Tensor[n]``, the parameters at construction (a copy).
        data: the :class:`~curvature.data_loop.DataLoop` over the batches.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        data: Any,
        *,
        params: Sequence[Tensor] | Sequence[str] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        reduction: str = "mean",
        cache_data: bool | None = None,
        max_data_bytes: float = 2**30,
    ) -> None:
        check_reduction_name(reduction)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
        named = dict(model.named_parameters())
        if not named:
            raise ValueError("model has no parameters to differentiate")
        names = _select(named, params)
        ref = named[names[0]]
        self.device = torch.device(device) if device is not None else ref.device
        self.dtype = dtype if dtype is not None else ref.dtype
        if not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {self.dtype}")
        needs_copy = any(
            p.dtype != self.dtype or p.device != self.device for p in named.values()
        ) or any(b.is_floating_point() and b.dtype != self.dtype for b in model.buffers())
        self.user_model = model
        # A different dtype/device works on a copy; the user's model is never cast.
        self.model = copy.deepcopy(model).to(device=self.device, dtype=self.dtype) if needs_copy else model
        self.loss_fn = loss_fn
        self.names = names
        own = dict(self.model.named_parameters())
        self.shapes = [own[k].shape for k in names]
        self.numels = [own[k].numel() for k in names]
        self.num_params = sum(self.numels)
        self.w0 = torch.cat([own[k].detach().reshape(-1) for k in names]).clone()
        selected = set(names)
        self.fixed = {k: v.detach() for k, v in own.items() if k not in selected}
        self.fixed.update(dict(self.model.named_buffers()))
        self.param_list = [own[k] for k in names]
        if isinstance(data, Iterator):  # every product passes over the data again
            raise TypeError(
                f"data is a one-shot iterator ({type(data).__name__}): the first pass would "
                "use it up and later products would see no data; pass a list of batches or "
                "a re-iterable such as a DataLoader"
            )
        # the first batch of the first pass checks that loss_fn reduces as declared
        self.data = DataLoop(
            data, device=self.device, dtype=self.dtype, reduction=reduction,
            model=self.model, first_batch=self._check_reduction,
            cache_data=cache_data, max_data_bytes=max_data_bytes,
        )
        self._pending_check: tuple[Any, int | None] | None = None
        self._grad0: Tensor | None = None
        self._loss0: Tensor | None = None

    @property
    def reduction(self) -> str:
        """``"mean"`` or ``"sum"``: how batch losses make the dataset loss."""
        return self.data.reduction

    def _check_reduction(self, batch: Any, num_batches: int | None) -> Callable[[], None]:
        """:func:`curvature.batches.check_reduction` on the first batch of a pass.

        The data loop's first-batch hook: a step that runs :meth:`module_loss` on
        ``batch`` has the check done on that forward's outputs (no extra forward, about
        1/6 of a gradient on two batches); the returned ``finish`` runs one no-grad
        forward for steps that did not."""
        self._pending_check = (batch, num_batches)

        def finish() -> None:
            if self._pending_check is None:
                return
            self._pending_check = None
            with torch.no_grad():
                out = self.forward(self.w0, batch[0])
            check_reduction(self.loss_fn, out, batch[1], self.reduction, num_batches)

        return finish

    # ------------------------------------------------------------------ the model
    def unflatten(self, w: Tensor) -> dict[str, Tensor]:
        """Split ``w: Tensor[n]`` into named parameter views."""
        return {
            k: t.view(s)
            for k, t, s in zip(self.names, torch.split(w, self.numels), self.shapes)
        }

    def forward(self, w: Tensor, inputs: Any) -> Any:
        """Model outputs at flat parameters ``w``: a tuple of inputs is passed as the
        positional arguments, anything else (tensor, Mapping, list) as the one argument."""
        params = {**self.fixed, **self.unflatten(w)}
        return functional_call(self.model, params, model_args(inputs))

    def batch_loss(self, w: Tensor, batch: Any) -> Tensor:
        """Loss of one batch at ``w`` (scalar): its mean or its sum, per ``reduction``."""
        return self.loss_fn(self.forward(w, batch[0]), batch[1])

    def module_loss(self, batch: Any) -> Tensor:
        """Loss of one batch through the module itself (its own parameter tensors, so
        autograd can differentiate :attr:`param_list`; see :meth:`differentiable`)."""
        out = self.model(*model_args(batch[0]))
        pending = self._pending_check
        if pending is not None and pending[0] is batch:  # the first batch of a pass
            self._pending_check = None
            outputs = out.detach() if isinstance(out, Tensor) else out
            check_reduction(self.loss_fn, outputs, batch[1], self.reduction, pending[1])
        return self.loss_fn(out, batch[1])

    @contextlib.contextmanager
    def differentiable(self) -> Iterator[None]:
        """Let autograd differentiate the selected parameters (flags restored afterwards)."""
        flags = [p.requires_grad for p in self.param_list]
        try:
            for p in self.param_list:
                p.requires_grad_(True)
            yield
        finally:
            for p, flag in zip(self.param_list, flags):
                p.requires_grad_(flag)

    # --------------------------------------------------------------- quantities
    def loss(self) -> float:
        """Dataset loss at ``w0``."""
        if self._loss0 is None:
            self.gradient()
        return float(self._loss0)

    def gradient(
        self,
        w: Tensor | None = None,
        progress: bool = False,
        compute: Callable[[], tuple[Tensor, Tensor]] | None = None,
    ) -> Tensor:
        """Dataset gradient ``g(w): Tensor[n]`` (cached at ``w0``, with the loss).

        ``compute`` (at ``w0`` only): another one-pass way to ``(loss, gradient)``, such
        as the exact products' pass that keeps the batch graphs for later products.
        """
        at_w0 = w is None
        if at_w0 and self._grad0 is not None:
            return self._grad0
        if at_w0 and compute is not None:
            loss, g = compute()
        else:
            loss, g = self.loss_and_gradient(self.w0 if w is None else w, progress)
        if at_w0:
            self._grad0, self._loss0 = g, loss
        return g

    def loss_and_gradient(self, w: Tensor, progress: bool = False) -> tuple[Tensor, Tensor]:
        """Dataset loss (0-d) and gradient ``Tensor[n]`` at flat ``w``, one pass."""

        def batch_gradient(_: int, batch: Any) -> tuple[Tensor, Tensor]:
            wr = w.detach().requires_grad_(True)
            loss = self.batch_loss(wr, batch)
            (g,) = torch.autograd.grad(loss, wr)
            return g, loss

        return self.accumulate_loss_and_gradient(batch_gradient, progress)

    def accumulate_loss_and_gradient(
        self, batch_gradient: Callable[[int, Any], tuple[Tensor, Tensor]], progress: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Dataset loss (0-d) and gradient ``Tensor[n]`` in one pass, from
        ``batch_gradient(i, batch) -> (g_b: Tensor[n], loss_b)`` (batch means or sums,
        weighted and normalised by the data loop)."""

        def step(i: int, batch: Any) -> tuple[Tensor, Tensor]:
            g, loss = batch_gradient(i, batch)
            return torch.cat([g, loss.detach().reshape(1).to(g.dtype)]), loss

        total = torch.zeros(self.num_params + 1, dtype=self.dtype, device=self.device)
        total = self.data.accumulate(step, total, progress=progress, desc="gradient")
        return total[-1], total[:-1]

    def gradients_at(self, W: Tensor, progress: bool = False, desc: str = "gradients") -> Tensor:
        """Dataset gradients ``Tensor[n, m]`` at the ``m`` points ``W: Tensor[n, m]``, one
        pass over the data (the losses at the first point are checked)."""

        def step(_: int, batch: Any) -> tuple[Tensor, Tensor]:
            out = torch.empty_like(W)
            first = None
            for j in range(W.shape[1]):
                wj = W[:, j].detach().clone().requires_grad_(True)
                loss = self.batch_loss(wj, batch)
                (out[:, j],) = torch.autograd.grad(loss, wj)
                first = loss if first is None else first
            return out, first

        return self.data.accumulate(step, torch.zeros_like(W), progress=progress, desc=desc)
