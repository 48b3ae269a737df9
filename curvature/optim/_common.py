"""Shared machinery of the curvature-exposing optimizers.

Conventions used by every optimizer in :mod:`curvature.optim`:

* ``opt.estimates`` is replaced after each ``step`` by a ``dict[str, float | Tensor]``.
  Scalars are python floats (read back with one host synchronisation per step);
  vectors are *flat* tensors of length ``n`` (detached, on the parameters' device)
  laid out as ``torch.cat([p.reshape(-1) for g in opt.param_groups for p in
  g["params"]])``, so they line up with a :class:`curvature.HessianOperator` built on
  the same parameter list.  A parameter without a gradient contributes zeros.
* ``opt.estimate_params`` is the flat parameter vector ``w_t`` at which the step's
  estimates were taken (the iterate *before* the update; same layout), so a monitor
  can evaluate the exact Hessian at that point.
* All parameters of one optimizer live on one device (checked at construction).
* ``step(closure)`` follows torch.optim: the closure zeroes the gradients, computes
  the loss, calls ``backward`` and returns the loss; ``step`` returns the loss at the
  current iterate.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["CurvatureOptimizer", "disable_running_stats"]

Closure = Callable[[], Any]


@contextlib.contextmanager
def disable_running_stats(model: nn.Module | None) -> Iterator[None]:
    """Freeze the running statistics of every normalisation layer of ``model``.

    Inside the block, BatchNorm (and InstanceNorm with ``track_running_stats``)
    layers still normalise training batches with the *batch* statistics, but their
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` buffers are restored
    bit for bit on exit (a snapshot, so this holds for any ``momentum``, including
    ``None``).  SAM-type optimizers wrap the closure evaluated at the perturbed point
    in this context when constructed with ``model=...``, so that the ascent step
    does not move the running statistics.  ``model=None`` is a no-op.
    """
    if model is None:
        yield
        return
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            buffers = [
                b
                for b in (module.running_mean, module.running_var, module.num_batches_tracked)
                if b is not None
            ]
            saved.append((buffers, [b.detach().clone() for b in buffers]))
    try:
        yield
    finally:
        with torch.no_grad():
            for buffers, copies in saved:
                for b, c in zip(buffers, copies):
                    b.copy_(c)


def flat(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate ``tensors`` into one flat vector (param_groups order)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of the concatenation of ``tensors`` (0-d tensor, no host sync)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with ``den`` clamped to the smallest normal number.

    Used where ``den`` is a norm that vanishes only together with ``num`` (a zero
    gradient at an exact minimum), so the result is 0 instead of NaN.
    """
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


class CurvatureOptimizer(Optimizer):
    """Base class: flat-vector helpers and the ``estimates`` attribute.

    Subclasses implement ``step(closure)`` and fill ``self.estimates``.
    """

    estimates: dict[str, float | Tensor]
    estimate_params: Tensor | None

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self.estimates = {}
        self.estimate_params = None
        devices = {p.device for p in self._params()}
        if len(devices) > 1:
            raise ValueError(
                f"{type(self).__name__} needs all parameters on one device (its curvature "
                f"estimates are flat vectors), got {sorted(str(d) for d in devices)}"
            )

    # ------------------------------------------------------------------ helpers
    def _record_point(self) -> None:
        """Keep the flat iterate ``w_t`` at which this step's estimates are taken."""
        self.estimate_params = flat([p.detach() for p in self._params()])

    def _heavy_ball(self, params: Sequence[Tensor], directions: list[Tensor],
                    momentum: float) -> list[Tensor]:
        """Heavy-ball buffers ``b = momentum b + d`` (``b_0 = d``, torch.optim.SGD's rule).

        Returns the updated buffers, which replace ``directions`` as the step.
        """
        bufs = []
        for p, dp in zip(params, directions):
            s = self.state[p]
            if "momentum_buffer" not in s:
                s["momentum_buffer"] = dp.clone()
            else:
                s["momentum_buffer"].mul_(momentum).add_(dp)
            bufs.append(s["momentum_buffer"])
        return bufs

    def _evaluate_and_record(self, closure: Any) -> Any:
        """Call ``closure`` (if any) with gradients on, record ``w_t``, return the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._record_point()
        return loss

    def _params(self) -> list[Tensor]:
        """All parameters, in param_groups order (the layout of flat estimates)."""
        return [p for group in self.param_groups for p in group["params"]]

    @staticmethod
    def _grads(params: Sequence[Tensor], *, clone: bool = False) -> list[Tensor]:
        """Gradients of ``params``, zeros where ``p.grad is None``.

        ``clone=True`` returns copies that later closures cannot overwrite.
        """
        out = []
        for p in params:
            if p.grad is None:
                out.append(torch.zeros_like(p))
            else:
                g = p.grad.detach()
                if g.is_sparse:
                    raise RuntimeError("curvature.optim optimizers do not support sparse gradients")
                out.append(g.clone() if clone else g)
        return out

    @staticmethod
    def _require_closure(closure: Closure | None, name: str) -> Closure:
        if closure is None:
            raise ValueError(
                f"{name}.step needs a closure that zeroes the gradients, computes the loss, "
                "calls backward and returns the loss: loss = opt.step(closure)"
            )
        return closure

    @staticmethod
    def _check_hyper(name: str, value: float, *, low: float | None = None,
                     high: float | None = None, low_open: bool = False) -> None:
        bad = not math.isfinite(value) or (
            (low is not None and (value <= low if low_open else value < low))
            or (high is not None and value > high)
        )
        if bad:
            lo = "-inf" if low is None else f"{low}"
            hi = "inf" if high is None else f"{high}"
            bracket = "(" if low_open else "["
            raise ValueError(f"invalid {name}={value!r}: must be finite and lie in "
                             f"{bracket}{lo}, {hi}]")


class WrapsBaseOptimizer(CurvatureOptimizer):
    """A curvature optimizer that delegates the parameter update to a torch optimizer.

    ``base_optimizer`` is a class (e.g. ``torch.optim.SGD``) instantiated on the same
    ``param_groups`` (shared dict objects, so LR schedulers see one set of groups).
    ``state_dict()`` carries the base optimizer's state under ``"base_optimizer"``.
    """

    def __init__(self, params: Any, base_optimizer: type[Optimizer],
                 defaults: dict[str, Any], base_kwargs: dict[str, Any]) -> None:
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer)):
            raise TypeError(
                "base_optimizer must be a torch.optim.Optimizer subclass (the class, e.g. "
                f"torch.optim.SGD, not an instance), got {base_optimizer!r}"
            )
        super().__init__(params, {**defaults, **base_kwargs})
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["base_optimizer"] = self.base_optimizer.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        base = state_dict.pop("base_optimizer", None)
        if base is None:
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: the state dict has no 'base_optimizer' "
                "entry (it was not written by this class)"
            )
        super().load_state_dict(state_dict)
        self.base_optimizer.load_state_dict(base)
        # load_state_dict replaced our group dicts: share them again
        self.base_optimizer.param_groups = self.param_groups


def scheduled_diagonal(opt: Optimizer, params: list[Tensor], name: str) -> list[Tensor] | None:
    """A Hutchinson sample of diag(H) on the steps that refresh it, else ``None``.

    ``opt`` has ``update_each``, ``num_samples`` and ``seed``; the refresh counter is
    ``"hessian_step"`` in the first parameter's state (step ``t`` refreshes when
    ``(t - 1) % update_each == 0``, with the probe generator of that step). On the other
    steps the gradients' graphs are dropped (``create_graph=True`` kept them).
    """
    head = opt.state[params[0]]
    t = head.get("hessian_step", 0) + 1
    head["hessian_step"] = t
    if (t - 1) % opt.update_each == 0:
        gen = step_generator(opt.seed, t, params[0].device)
        return hutchinson_diagonal(params, opt.num_samples, gen, name)
    for p in params:
        if p.grad is not None:
            p.grad = p.grad.detach()
    return None


def groups_with_grads(
    param_groups: Sequence[dict], has_grad: Sequence[bool]
) -> Iterator[tuple[dict, list[int]]]:
    """``(group, indices)`` for each param group, ``indices`` the positions (in the flat
    list of every group's parameters, in order) of its parameters that have a gradient;
    groups without any are skipped, as ``torch.optim`` skips parameters whose grad is None."""
    i = 0
    for group in param_groups:
        n = len(group["params"])
        keep = [j for j in range(i, i + n) if has_grad[j]]
        i += n
        if keep:
            yield group, keep


def with_weight_decay(d: list[Tensor], params: list[Tensor], weight_decay: float) -> list[Tensor]:
    """``d + weight_decay * params`` (coupled L2 decay), or ``d`` itself when it is 0."""
    if weight_decay == 0:
        return d
    return torch._foreach_add(d, params, alpha=weight_decay)


def rademacher_like(params: Sequence[Tensor], generator: torch.Generator | None) -> list[Tensor]:
    """Independent +-1 vectors shaped like ``params`` (one draw per parameter, in order).

    ``generator=None`` draws from the global torch generator.
    """
    return [
        torch.randint(0, 2, p.shape, generator=generator, device=p.device, dtype=p.dtype)
        .mul_(2)
        .sub_(1)
        for p in params
    ]


def step_generator(seed: int | None, step: int, device: torch.device) -> torch.Generator | None:
    """A generator seeded from ``(seed, step)``; ``None`` (global RNG) when ``seed`` is None.

    Deriving the stream from the step count makes a run reproducible after a
    ``state_dict`` round trip without saving generator states.
    """
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))
    return gen


def hutchinson_diagonal(params: Sequence[Tensor], num_samples: int,
                        generator: torch.Generator | None, name: str) -> list[Tensor]:
    """Hutchinson estimate ``mean_s z_s * (H z_s)`` of diag(H) from graph-carrying grads.

    Requires that ``p.grad`` was produced by ``loss.backward(create_graph=True)``.
    Returns one tensor per parameter (zeros for parameters without a gradient);
    the gradients are detached afterwards, which frees the graph.
    """
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return [torch.zeros_like(p) for p in params]
    if not any(p.grad.requires_grad for p in with_grad):
        raise RuntimeError(
            f"{name} needs gradients that carry their graph: call "
            "loss.backward(create_graph=True) inside the closure"
        )
    # a gradient that carries no graph is constant: its Hessian row (and column) is 0
    outs = [p.grad for p in with_grad if p.grad.requires_grad]
    acc = [torch.zeros_like(p) for p in with_grad]
    for s in range(num_samples):
        zs = rademacher_like(with_grad, generator)
        z_out = [z for p, z in zip(with_grad, zs) if p.grad.requires_grad]
        with torch.enable_grad():
            hzs = torch.autograd.grad(
                outs, with_grad, grad_outputs=z_out, retain_graph=s < num_samples - 1,
                allow_unused=True,
            )
        hzs = [torch.zeros_like(p) if h is None else h for h, p in zip(hzs, with_grad)]
        torch._foreach_addcmul_(acc, hzs, zs, value=1.0 / num_samples)
    for p in with_grad:
        p.grad = p.grad.detach()
    by_id = {id(p): a for p, a in zip(with_grad, acc)}
    return [by_id[id(p)] if id(p) in by_id else torch.zeros_like(p) for p in params]
