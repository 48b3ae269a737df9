"""The HVP engine: one place that turns (model, loss, data) into curvature products.

A :class:`Problem` owns

* the functional model call on a *flat* parameter vector ``w: Tensor[n]``
  (``torch.func.functional_call``; other parameters and buffers held fixed),
* the data loop with full-dataset semantics: the loss is
  ``L(w) = sum_b n_b L_b(w) / N`` with ``L_b`` the mean loss of batch ``b`` and
  ``N = sum_b n_b`` -- exactly what one big batch gives, for batches of any size,
* the all-reduce of those batch-weighted sums over ranks when ``torch.distributed``
  is initialised (``data`` is then this rank's shard),
* the products: exact Hessian (forward-over-reverse ``jvp(grad)`` vectorised over
  the columns with ``vmap``; double backward as a fallback), finite differences of
  gradients, and the generalised Gauss-Newton ``J^T H_out J``.

The model is run in eval mode and its mode is restored afterwards; its tensors
are never written (a different dtype/device works on a copy).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from tqdm.auto import tqdm

__all__ = ["Problem", "as_batches", "batch_size_of", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The loss of a batch is NaN or infinite (the message names the batch index)."""


class DoubleBackwardError(RuntimeError):
    """The model contains an operation without a second derivative."""


def _is_batch(data: Any) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and not isinstance(data[0], (tuple, list))
        and isinstance(data[0], Tensor)
    )


def as_batches(data: Any) -> Iterable:
    """``data`` as an iterable of ``(inputs, targets)`` batches.

    A single ``(inputs, targets)`` pair of tensors becomes a one-element list; any
    other iterable (list of batches, DataLoader) is returned as is.
    """
    if _is_batch(data):
        return [tuple(data)]
    if isinstance(data, Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be one (inputs, targets) batch or an iterable of such batches, "
            f"got {type(data).__name__}"
        )
    return data


def batch_size_of(batch: Any) -> int:
    """Number of examples in ``(inputs, targets)``: the leading dimension of the inputs."""
    x = batch[0]
    while isinstance(x, (tuple, list)):
        x = x[0]
    if isinstance(x, dict):
        x = next(iter(x.values()))
    return int(x.shape[0])


def _to(obj: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    """Move tensors in a nested structure; floating tensors are cast to ``dtype``."""
    if isinstance(obj, Tensor):
        if dtype is not None and obj.is_floating_point():
            return obj.to(device=device, dtype=dtype, non_blocking=True)
        return obj.to(device=device, non_blocking=True)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device, dtype) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: Tensor) -> Tensor:
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class Problem:
    """A model, a loss and a dataset, viewed as a function of flat parameters ``w``.

    See :class:`curvature.HessianOperator` for the meaning of the arguments.
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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets)")
        named = dict(model.named_parameters())
        if not named:
            raise ValueError("model has no parameters to differentiate")
        names = self._select(model, named, params)
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
        batches = as_batches(data)
        # Lists of batches are moved to the device once; other iterables (DataLoaders)
        # are streamed and moved batch by batch on every pass.
        if isinstance(batches, (list, tuple)):
            self._stream = False
            self.batches = [_to(b, self.device, self.dtype) for b in batches]
            if not self.batches:
                raise ValueError("data is empty: no batches to compute the loss on")
        else:
            self._stream = True
            self.batches = batches
        self._grad0: Tensor | None = None
        self._loss0: float | None = None
        self._use_func = True

    @staticmethod
    def _select(model: nn.Module, named: dict[str, Tensor], params) -> list[str]:
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

    # ------------------------------------------------------------------ basics
    def unflatten(self, w: Tensor) -> dict[str, Tensor]:
        """Split ``w: Tensor[n]`` into named parameter views."""
        return {
            k: t.view(s)
            for k, t, s in zip(self.names, torch.split(w, self.numels), self.shapes)
        }

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def forward(self, w: Tensor, inputs: Any) -> Any:
        """Model outputs at flat parameters ``w``."""
        params = {**self.fixed, **self.unflatten(w)}
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        return functional_call(self.model, params, args)

    def batch_loss(self, w: Tensor, batch: Any) -> Tensor:
        """Mean loss of one batch at ``w`` (scalar)."""
        return self.loss_fn(self.forward(w, batch[0]), batch[1])

    def _iterate(self, progress: bool, desc: str) -> Iterator[tuple[int, int, Any]]:
        it = self.batches
        total = len(it) if hasattr(it, "__len__") else None
        bar = tqdm(it, total=total, desc=desc, disable=not progress or total == 1, leave=False)
        for i, batch in enumerate(bar):
            if self._stream:
                batch = _to(batch, self.device, self.dtype)
            yield i, batch_size_of(batch), batch

    def _finish(self, total: Tensor, count: int, losses: list[Tensor]) -> Tensor:
        """Divide the batch-weighted sum by N (over all ranks) and check the losses."""
        if not losses:
            raise ValueError("data is empty: no batches to compute the loss on")
        stacked = torch.stack([loss.detach().reshape(()) for loss in losses])
        bad = ~torch.isfinite(stacked)
        if bool(bad.any()):  # one host sync per pass over the data
            i = int(bad.nonzero()[0, 0])
            raise NonFiniteLossError(
                f"loss of batch {i} is {float(stacked[i])} (non-finite) at the current "
                "parameters; check the data and the model"
            )
        n = torch.tensor(float(count), dtype=torch.float64, device=total.device)
        _all_reduce(total)
        _all_reduce(n)
        return total / n.to(total.dtype)

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        with eval_mode(self.model):
            yield

    # --------------------------------------------------------------- quantities
    def loss(self) -> float:
        """Dataset loss at ``w0``."""
        if self._loss0 is None:
            self.gradient()
        return float(self._loss0)

    def gradient(self, w: Tensor | None = None, progress: bool = False) -> Tensor:
        """Dataset gradient ``g(w): Tensor[n]`` (cached at ``w0``)."""
        at_w0 = w is None
        if at_w0 and self._grad0 is not None:
            return self._grad0
        w = self.w0 if w is None else w
        total = torch.zeros(self.num_params + 1, dtype=self.dtype, device=self.device)
        count, losses = 0, []
        with self._session():
            for _, nb, batch in self._iterate(progress, "gradient"):
                wr = w.detach().requires_grad_(True)
                loss = self.batch_loss(wr, batch)
                (g,) = torch.autograd.grad(loss, wr)
                total[:-1].add_(g, alpha=nb)
                total[-1].add_(loss.detach(), alpha=nb)
                count += nb
                losses.append(loss)
        total = self._finish(total, count, losses)
        if at_w0:
            self._grad0, self._loss0 = total[:-1], total[-1]
        return total[:-1]

    def hvp_exact(self, V: Tensor, chunk_size: int | None = None, progress: bool = False) -> Tensor:
        """Exact ``H V`` for ``V: Tensor[n, k]`` in one pass over the data."""
        total = torch.zeros_like(V)
        count, losses = 0, []
        with self._session():
            for i, nb, batch in self._iterate(progress, "hvp"):
                hv, loss = self._hvp_batch(V, batch, i, chunk_size)
                total.add_(hv, alpha=nb)
                count += nb
                losses.append(loss)
        return self._finish(total, count, losses)

    def _hvp_batch(self, V: Tensor, batch: Any, index: int, chunk_size: int | None):
        if self._use_func:
            try:
                return self._hvp_batch_func(V, batch, chunk_size)
            except (RuntimeError, NotImplementedError) as err:
                # Operations without forward-mode AD or vmap support: fall back to
                # plain reverse-over-reverse autograd.
                if "double backward" in str(err).lower():
                    raise self._no_double_backward(err) from err
                self._use_func = False
        return self._hvp_batch_autograd(V, batch)

    def _hvp_batch_func(self, V: Tensor, batch: Any, chunk_size: int | None):
        def loss_at(w):
            loss = self.batch_loss(w, batch)
            return loss, loss.detach()

        grad_fn = grad(loss_at, has_aux=True)
        w0 = self.w0

        def one(v):
            (_, loss), (hv, _) = jvp(grad_fn, (w0,), (v,))
            return hv, loss

        hv, loss = vmap(one, in_dims=1, out_dims=(1, None), chunk_size=chunk_size)(V)
        return hv, loss

    def _hvp_batch_autograd(self, V: Tensor, batch: Any):
        w = self.w0.detach().requires_grad_(True)
        loss = self.batch_loss(w, batch)
        (g,) = torch.autograd.grad(loss, w, create_graph=True)
        if not g.requires_grad:  # loss is linear in w: Hessian is zero
            return torch.zeros_like(V), loss.detach()
        cols = []
        for j in range(V.shape[1]):
            try:
                (hv,) = torch.autograd.grad(
                    g, w, V[:, j], retain_graph=j < V.shape[1] - 1, allow_unused=True
                )
            except RuntimeError as err:
                raise self._no_double_backward(err) from err
            cols.append(torch.zeros_like(w) if hv is None else hv)
        return torch.stack(cols, dim=1).detach(), loss.detach()

    @staticmethod
    def _no_double_backward(err: Exception) -> DoubleBackwardError:
        return DoubleBackwardError(
            "exact Hessian-vector products need second derivatives, but an operation in "
            f"the model has none ({str(err).splitlines()[0]}); use "
            "HessianOperator(..., method='fd') or method='fd-central' (finite differences "
            "of gradients need only first derivatives)"
        )

    def default_eps(self, V: Tensor, central: bool) -> Tensor:
        """Scale-aware step per column: ``c (1 + ||w||) / ||v||``, ``c = u^(1/2)`` or ``u^(1/3)``."""
        u = torch.finfo(self.dtype).eps
        c = u ** (1 / 3) if central else math.sqrt(u)
        scale = c * (1.0 + torch.linalg.vector_norm(self.w0))
        norms = torch.linalg.vector_norm(V, dim=0)
        return torch.where(norms > 0, scale / norms, torch.ones_like(norms))

    def hvp_fd(
        self, V: Tensor, eps: float | None, central: bool, progress: bool = False
    ) -> Tensor:
        """Finite-difference ``H V`` from gradients only, one pass over the data for all columns."""
        k = V.shape[1]
        if eps is None:
            steps = self.default_eps(V, central)
        else:
            steps = torch.full((k,), float(eps), dtype=self.dtype, device=self.device)
        if not central:
            g0 = self.gradient()
        total = torch.zeros_like(V)
        count, losses = 0, []
        with self._session():
            for _, nb, batch in self._iterate(progress, "fd-hvp"):
                for j in range(k):
                    dw = steps[j] * V[:, j]
                    wp = (self.w0 + dw).requires_grad_(True)
                    loss = self.batch_loss(wp, batch)
                    (gp,) = torch.autograd.grad(loss, wp)
                    if central:
                        wm = (self.w0 - dw).requires_grad_(True)
                        (gm,) = torch.autograd.grad(self.batch_loss(wm, batch), wm)
                        gp = gp - gm
                    total[:, j].add_(gp, alpha=nb)
                    if j == 0:
                        losses.append(loss.detach())
                count += nb
        out = self._finish(total, count, losses)
        if central:
            return out / (2 * steps)
        return (out - g0.unsqueeze(1)) / steps

    def ggn(self, V: Tensor, chunk_size: int | None = None, progress: bool = False) -> Tensor:
        """Generalised Gauss-Newton product ``G V = J^T H_out J V`` in one pass over the data."""
        total = torch.zeros_like(V)
        count, losses = 0, []
        with self._session():
            for _, nb, batch in self._iterate(progress, "ggn"):
                inputs, targets = batch

                def model_at(w, inputs=inputs):
                    return self.forward(w, inputs)

                out, pullback = vjp(model_at, self.w0)

                def out_loss(z, targets=targets):
                    return self.loss_fn(z, targets)

                out_grad = grad(out_loss)

                def one(v, model_at=model_at, out=out, pullback=pullback, out_grad=out_grad):
                    _, jv = jvp(model_at, (self.w0,), (v,))
                    _, hjv = jvp(out_grad, (out,), (jv,))
                    (gv,) = pullback(hjv)
                    return gv

                total.add_(vmap(one, in_dims=1, out_dims=1, chunk_size=chunk_size)(V), alpha=nb)
                losses.append(self.loss_fn(out.detach(), targets))
                count += nb
        return self._finish(total, count, losses)

    def dense_hessian(self) -> Tensor:
        """Dense ``Tensor[n, n]`` Hessian by ``torch.func.hessian`` per batch (small models)."""
        total = torch.zeros(self.num_params, self.num_params, dtype=self.dtype, device=self.device)
        count, losses = 0, []
        with self._session():
            for _, nb, batch in self._iterate(False, "hessian"):

                def f(w, batch=batch):
                    return self.batch_loss(w, batch)

                total.add_(torch.func.hessian(f)(self.w0), alpha=nb)
                losses.append(f(self.w0).detach())
                count += nb
        return self._finish(total, count, losses)
