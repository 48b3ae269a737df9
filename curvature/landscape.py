r"""Loss along directions in parameter space: 1-D lines and 2-D planes through ``w``.

For flat parameters ``w`` (the same flat layout as :class:`curvature.HessianOperator`:
the selected parameters in ``named_parameters`` order) and directions ``d_1, d_2``,

.. math::
    f(a) = L(w + a\,d_1), \qquad f(a, b) = L(w + a\,d_1 + b\,d_2),

with ``L`` the dataset loss (per-batch mean losses weighted by batch size, summed by
:mod:`curvature.data_loop`). Directions are either eigenvectors of the Hessian (unit norm, so ``a`` is the
Euclidean distance moved) or *filter-normalised* random directions (Li, Xu, Taylor,
Studer & Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets", Sec. 4):
a Gaussian ``d`` is rescaled filter by filter,

.. math::
    d_{i,j} \leftarrow \frac{d_{i,j}}{\|d_{i,j}\|}\,\|w_{i,j}\|,

where ``(i, j)`` is filter ``j`` (output row / output channel) of layer ``i``; then
``a = 1`` moves every filter by its own norm, which makes plots of differently scaled
networks comparable. Biases and other one-dimensional parameters (normalisation
scales) get ``d = 0`` by default, as in Li et al.

Under ``torch.distributed``, ``data`` is this rank's shard and the batch-weighted sums
are all-reduced by the data loop, so every rank gets the full-data landscape.

The model is never modified: every point is evaluated with
``torch.func.functional_call`` on the perturbed flat vector, in eval mode, and each
submodule's train/eval flag is restored afterwards. Points are evaluated in chunks
with ``torch.func.vmap`` over the perturbed parameter vectors (one pass over each
batch per chunk); models that ``vmap`` cannot handle fall back to one point at a time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from curvature.batches import as_batches, batch_size_of, model_args
from curvature.data_loop import DataLoop

__all__ = [
    "Landscape",
    "filter_normalized_direction",
    "flat_parameters",
    "loss_landscape_1d",
    "loss_landscape_2d",
    "quadratic_model",
    "random_direction",
    "symmetric_grid",
]


@dataclass(frozen=True, eq=False)
class Landscape:
    """Loss (and accuracy) on a grid of points ``w + a d_1 (+ b d_2)``.

    Attributes
    ----------
    coords : tuple of Tensor
        ``(alphas,)`` with ``alphas: Tensor[A]`` for a line, ``(alphas, betas)`` for a
        plane (float64, CPU), in units of the direction vectors.
    loss : Tensor
        ``Tensor[A]`` or ``Tensor[A, B]`` (float64, CPU): dataset loss at each point;
        ``loss[i, j]`` is at ``w + alphas[i] d_1 + betas[j] d_2``.
    accuracy : Tensor or None
        Same shape: fraction of examples whose ``argmax`` output equals the integer
        target (``None`` unless the targets are integer class indices).
    loss0 : float
        Loss at ``w`` itself.
    labels : tuple of str
        A name for each direction (e.g. ``"v1 (lambda=12.3)"``, ``"random 1"``).
    direction_norms : tuple of float
        Euclidean norms of the direction vectors.
    """

    coords: tuple[Tensor, ...]
    loss: Tensor
    accuracy: Tensor | None
    loss0: float
    labels: tuple[str, ...]
    direction_norms: tuple[float, ...]

    @property
    def ndim(self) -> int:
        """1 for a line, 2 for a plane."""
        return len(self.coords)


# ------------------------------------------------------------------ parameters


def _selected(model: nn.Module, params: Sequence[str] | None) -> list[str]:
    named = dict(model.named_parameters())
    if params is None:
        names = [k for k, p in named.items() if p.requires_grad]
    else:
        names = [p if isinstance(p, str) else _name_of(model, p) for p in params]
        for k in names:
            if k not in named:
                raise ValueError(f"{k!r} is not a parameter name of the model")
    if not names:
        raise ValueError("no parameters selected (none with requires_grad)")
    return names


def _name_of(model: nn.Module, p: Tensor) -> str:
    for k, q in model.named_parameters():
        if q is p:
            return k
    raise ValueError(f"a tensor of shape {list(p.shape)} is not a parameter of the model")


def flat_parameters(model: nn.Module, params: Sequence[str] | None = None) -> Tensor:
    """The selected parameters of ``model`` concatenated into ``Tensor[n]`` (a detached copy)."""
    named = dict(model.named_parameters())
    return torch.cat([named[k].detach().reshape(-1) for k in _selected(model, params)]).clone()


def random_direction(
    model: nn.Module,
    *,
    params: Sequence[str] | None = None,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A standard Gaussian direction ``Tensor[n]`` in the flat parameter layout."""
    w = flat_parameters(model, params)
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    d = torch.randn(w.numel(), generator=gen, dtype=torch.float64)
    return d.to(dtype=dtype or w.dtype, device=device or w.device)


def filter_normalized_direction(
    model: nn.Module,
    *,
    params: Sequence[str] | None = None,
    seed: int | None = None,
    include_1d: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""A filter-normalised random direction ``Tensor[n]`` (Li et al. 2018, Sec. 4).

    For every parameter with ``ndim >= 2`` (linear weights ``[out, in]``, conv kernels
    ``[out, in, *k]``, embeddings ...) each slice along the first dimension (a filter or
    a neuron's incoming weights) of a Gaussian direction is rescaled to the norm of the
    same slice of the weights. One-dimensional parameters (biases, normalisation
    scales) get zeros, or with ``include_1d=True`` a direction of the parameter's own
    norm. Zero filters stay zero.

    Args:
        model: the network (read only).
        params: parameter names to include (default: all with ``requires_grad``), in
            the flat layout of :class:`curvature.HessianOperator`.
        seed: seeds the Gaussian draw (a private generator; the global RNG is untouched).
        include_1d: perturb one-dimensional parameters too.
        dtype, device: of the result (default: those of the parameters).

    Returns:
        ``Tensor[n]``; with ``a = 1`` each filter moves by exactly its own norm.
    """
    named = dict(model.named_parameters())
    names = _selected(model, params)
    d = random_direction(model, params=params, seed=seed, dtype=torch.float64, device="cpu")
    out = []
    offset = 0
    for k in names:
        w = named[k].detach().to("cpu", torch.float64)
        part = d[offset : offset + w.numel()].view(w.shape)
        offset += w.numel()
        if w.ndim >= 2:
            rows_w = w.reshape(w.shape[0], -1).norm(dim=1, keepdim=True)
            rows_d = part.reshape(w.shape[0], -1).norm(dim=1, keepdim=True)
            part = (part.reshape(w.shape[0], -1) * rows_w / rows_d.clamp_min(1e-300)).reshape(w.shape)
        elif include_1d:
            part = part * (w.norm() / part.norm().clamp_min(1e-300))
        else:
            part = torch.zeros_like(part)
        out.append(part.reshape(-1))
    ref = named[names[0]]
    return torch.cat(out).to(dtype=dtype or ref.dtype, device=device or ref.device)


# ------------------------------------------------------------------ evaluation


class _Evaluator:
    """Dataset loss and accuracy at flat parameter vectors, without touching the model."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        data: Any,
        params: Sequence[str] | None,
        dtype: torch.dtype | None,
        device: torch.device | str | None,
    ) -> None:
        self.names = _selected(model, params)
        named = dict(model.named_parameters())
        ref = named[self.names[0]]
        self.dtype = dtype or ref.dtype
        self.device = torch.device(device) if device is not None else ref.device
        self.model = model
        self.loss_fn = loss_fn
        self.shapes = [named[k].shape for k in self.names]
        self.numels = [named[k].numel() for k in self.names]
        self.w0 = torch.cat([named[k].detach().reshape(-1) for k in self.names]).to(
            self.device, self.dtype
        )
        chosen = set(self.names)

        def cast(t: Tensor) -> Tensor:
            t = t.detach().to(self.device)
            return t.to(self.dtype) if t.is_floating_point() else t

        self.fixed = {k: cast(v) for k, v in named.items() if k not in chosen}
        self.fixed.update({k: cast(b) for k, b in model.named_buffers()})
        self.data = as_batches(data)
        self.vmap_ok = True

    def _unflatten(self, w: Tensor) -> dict[str, Tensor]:
        return {k: t.view(s) for k, t, s in zip(self.names, torch.split(w, self.numels), self.shapes)}

    def _call(self, w: Tensor, x: Any) -> Any:
        # functional_call needs the module's own tensors for dtype/device-compatible
        # calls; the copy of buffers in ``fixed`` already has the right dtype/device.
        return functional_call(self.model, {**self.fixed, **self._unflatten(w)}, model_args(x))

    def _point_stats(self, W: Tensor, x: Any, y: Any) -> tuple[Tensor, Tensor | None]:
        """Mean loss ``[c]`` and number of correct predictions ``[c]`` of one batch."""
        classify = isinstance(y, Tensor) and not y.is_floating_point()

        def one(w: Tensor) -> tuple[Tensor, Tensor]:
            out = self._call(w, x)
            loss = self.loss_fn(out, y)
            if not classify:
                correct = loss.new_zeros(())
            elif isinstance(out, Tensor):
                correct = (out.argmax(-1) == y).sum()
            else:  # outputs that are not a tensor of logits: no accuracy
                correct = loss.new_full((), math.nan)
            return loss, correct

        if self.vmap_ok:
            try:
                loss, correct = vmap(one)(W)
                return loss, (correct if classify else None)
            except Exception:  # noqa: BLE001 - anything vmap cannot batch: go point by point
                self.vmap_ok = False
        pairs = [one(w) for w in W]
        loss = torch.stack([p[0] for p in pairs])
        correct = torch.stack([p[1].to(loss.dtype) for p in pairs])
        return loss, (correct if classify else None)

    def evaluate(self, W: Tensor, chunk: int, progress: bool, desc: str) -> tuple[Tensor, Tensor | None]:
        """Loss and accuracy at each row of ``W: Tensor[P, n]`` (float64 CPU ``[P]``).

        One :meth:`~curvature.data_loop.DataLoop.accumulate` per chunk of points: the
        batch-size weighted mean of the batch losses (and of the batch accuracies),
        all-reduced over ranks; a non-finite loss names its batch and point.
        """
        P = W.shape[0]
        # the batches are read once (a one-shot iterable too) and moved once
        loop = DataLoop(list(self.data), device=self.device, dtype=self.dtype, model=self.model)
        loss = torch.empty(P, dtype=torch.float64)
        accuracy = torch.empty(P, dtype=torch.float64)
        classify = True
        bar = tqdm(total=P, desc=desc, disable=not progress, leave=False)
        with torch.no_grad():
            for start in range(0, P, chunk):
                Wc = W[start : start + chunk].to(self.device, self.dtype)
                c = len(Wc)

                def step(_: int, batch: Any, Wc: Tensor = Wc, c: int = c) -> tuple[Tensor, Tensor]:
                    nonlocal classify
                    batch_loss, correct = self._point_stats(Wc, *batch)
                    if correct is None:
                        classify = False
                        correct = torch.zeros_like(batch_loss)
                    rate = correct.double() / batch_size_of(batch)
                    return torch.cat([batch_loss.double(), rate]), batch_loss

                total = torch.zeros(2 * c, dtype=torch.float64, device=self.device)
                sums = loop.accumulate(step, total, first_point=start).cpu()
                loss[start : start + c], accuracy[start : start + c] = sums[:c], sums[c:]
                bar.update(c)
        bar.close()
        return loss, (accuracy if classify else None)


def _grid(values: Sequence[float] | Tensor | np.ndarray, what: str) -> Tensor:
    t = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1)
    if t.numel() < 1 or not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} must be a non-empty sequence of finite numbers")
    return t


def _direction(d: Tensor, n: int, what: str) -> Tensor:
    if not isinstance(d, Tensor) or d.shape != (n,):
        shape = list(d.shape) if isinstance(d, Tensor) else type(d).__name__
        raise ValueError(f"{what} must be a Tensor[{n}] in the flat parameter layout, got {shape}")
    if not bool(torch.isfinite(d).all()):
        raise ValueError(f"{what} has non-finite entries")
    return d


def loss_landscape_1d(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    data: Any,
    direction: Tensor,
    alphas: Sequence[float] | Tensor | np.ndarray,
    *,
    params: Sequence[str] | None = None,
    label: str = "d",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    chunk_size: int = 16,
    progress: bool = False,
) -> Landscape:
    """Dataset loss ``L(w + a d)`` for every ``a`` in ``alphas``.

    Args:
        model: the network at ``w`` (never modified; evaluated in eval mode).
        loss_fn: ``loss_fn(outputs, targets)``, the mean loss of a batch.
        data: one ``(inputs, targets)`` batch or an iterable of batches.
        direction: ``Tensor[n]`` in the flat layout of ``params``.
        alphas: step sizes ``[A]`` along ``direction`` (in units of ``direction``).
        params: parameter names (default: all with ``requires_grad``).
        label: a name for the direction in plots and tables.
        dtype, device: where to compute (default: the parameters').
        chunk_size: points evaluated together by ``vmap`` (memory ~ ``chunk_size``
            forward passes of one batch).
        progress: show a tqdm bar.

    Returns:
        :class:`Landscape` with ``loss: Tensor[A]``.
    """
    ev = _Evaluator(model, loss_fn, data, params, dtype, device)
    a = _grid(alphas, "alphas")
    d = _direction(direction, ev.w0.numel(), "direction").to(ev.device, ev.dtype)
    W = ev.w0[None, :] + a.to(ev.device, ev.dtype)[:, None] * d[None, :]
    W = torch.cat([ev.w0[None, :], W])
    plain = re.sub(r"[$\\{}]", "", label)  # a plot label may be LaTeX; a bar label is plain
    loss, acc = ev.evaluate(W, max(1, int(chunk_size)), progress, f"landscape 1-D ({plain})")
    return Landscape(
        coords=(a,),
        loss=loss[1:],
        accuracy=None if acc is None else acc[1:],
        loss0=float(loss[0]),
        labels=(label,),
        direction_norms=(float(d.double().norm()),),
    )


def loss_landscape_2d(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    data: Any,
    directions: tuple[Tensor, Tensor],
    alphas: Sequence[float] | Tensor | np.ndarray,
    betas: Sequence[float] | Tensor | np.ndarray | None = None,
    *,
    params: Sequence[str] | None = None,
    labels: tuple[str, str] = ("d1", "d2"),
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    chunk_size: int = 16,
    progress: bool = False,
) -> Landscape:
    """Dataset loss ``L(w + a d_1 + b d_2)`` on the grid ``alphas x betas``.

    Same arguments as :func:`loss_landscape_1d`, with two directions; ``betas``
    defaults to ``alphas``. Returns :class:`Landscape` with ``loss: Tensor[A, B]``.
    """
    ev = _Evaluator(model, loss_fn, data, params, dtype, device)
    if len(directions) != 2:
        raise ValueError(f"directions must be a pair of Tensor[n], got {len(directions)}")
    a = _grid(alphas, "alphas")
    b = a.clone() if betas is None else _grid(betas, "betas")
    n = ev.w0.numel()
    d1 = _direction(directions[0], n, "directions[0]").to(ev.device, ev.dtype)
    d2 = _direction(directions[1], n, "directions[1]").to(ev.device, ev.dtype)
    A, B = torch.meshgrid(a, b, indexing="ij")
    coef = torch.stack([A.reshape(-1), B.reshape(-1)], 1).to(ev.device, ev.dtype)  # [A*B, 2]
    W = ev.w0[None, :] + coef @ torch.stack([d1, d2])  # one matrix product for the grid
    W = torch.cat([ev.w0[None, :], W])
    loss, acc = ev.evaluate(W, max(1, int(chunk_size)), progress, "landscape 2-D")
    shape = (a.numel(), b.numel())
    return Landscape(
        coords=(a, b),
        loss=loss[1:].reshape(shape),
        accuracy=None if acc is None else acc[1:].reshape(shape),
        loss0=float(loss[0]),
        labels=tuple(labels),
        direction_norms=(float(d1.double().norm()), float(d2.double().norm())),
    )


def quadratic_model(
    loss0: float, slope: float, curvature: float, alphas: Tensor | np.ndarray
) -> np.ndarray:
    """Second-order Taylor model ``L0 + g a + (1/2) c a^2`` along a direction, for plots
    (``g = grad L . d``, ``c = d^T H d``; for a unit eigenvector ``c = lambda``)."""
    a = np.asarray(alphas, dtype=np.float64)
    return loss0 + slope * a + 0.5 * curvature * a * a


def symmetric_grid(radius: float, num: int) -> np.ndarray:
    """``num`` evenly spaced points on ``[-radius, radius]`` (``num`` made odd so 0 is on it)."""
    if not (radius > 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")
    num = max(3, int(num) | 1)
    return np.linspace(-radius, radius, num)
