r"""Sharpness-aware minimisation: SAM / ASAM (Foret et al. 2021; Kwon et al. 2021) and alpha-SAM.

Seeds: ``sam-introduction.md`` and ``alpha-sam.md``.  One step at ``w`` with gradient
``g = grad L(w)``:

.. math::

    e = \rho \frac{T^2 g}{\|T g\|},\qquad g_\rho = \nabla L(w + e),\qquad
    g_{\alpha,\rho} = g + \alpha (g_\rho - g),

and the base optimizer (e.g. SGD) steps with ``g_{alpha,rho}`` in place of the
gradient. ``T = I`` for SAM and ``T = diag(|w|)`` for ASAM (``adaptive=True``).
``alpha = 1`` is SAM, ``alpha = 0`` the base optimizer, ``alpha < 0`` AntiSAM; ``rho``
may be negative (the first step goes downhill; ``rho < 0, alpha = -1`` is SAM to
first order in ``rho``, alpha-sam.md "Negative rho").

Curvature read off the two gradients at no extra cost (``u = e/||e||``, so
``u = g/||g||`` for SAM with ``rho > 0``):

* ``hvp = (g_rho - g) / ||e||``  ~ ``H u`` (exact on a quadratic),
* ``hvp_direction = u``,
* ``lambda_max = ||hvp||`` (``||H u|| <= lambda_max(|H|)``; for SAM ``||(g_adv - g)/rho||``).

A zero gradient gives ``e = 0`` and all estimates 0 (no NaN).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from curvature.optim._common import (
    Closure,
    WrapsBaseOptimizer,
    disable_running_stats,
    flat,
    global_norm,
    safe_div,
)

__all__ = ["SAM", "AlphaSAM"]


def sam_perturbation(groups: list[dict[str, Any]], grads: list[list[Tensor]]) -> list[list[Tensor]]:
    """The (A)SAM ascent vector ``e = rho T^2 g / ||T g||`` per group, per parameter.

    ``grads[i]`` are the gradients of ``groups[i]["params"]``.  The norm is global
    over all groups; ``rho`` and ``adaptive`` are per group.
    """
    scaled = []  # T g
    for group, gs in zip(groups, grads):
        if group["adaptive"]:
            scaled.extend(torch._foreach_mul(torch._foreach_abs(group["params"]), gs))
        else:
            scaled.extend(gs)
    norm = global_norm(scaled)
    out = []
    for group, gs in zip(groups, grads):
        if group["adaptive"]:
            w2 = torch._foreach_mul(group["params"], group["params"])
            e = torch._foreach_mul(w2, gs)
        else:
            e = [g.clone() for g in gs]
        torch._foreach_mul_(e, safe_div(torch.ones((), dtype=norm.dtype, device=norm.device), norm)
                            .mul(group["rho"]))
        out.append(e)
    return out


class AlphaSAM(WrapsBaseOptimizer):
    r"""alpha-SAM: ``g + alpha (g_rho - g)`` fed to a base optimizer (alpha-sam.md).

    Args:
        params: parameters or parameter groups.
        base_optimizer: a ``torch.optim.Optimizer`` class, e.g. ``torch.optim.SGD``;
            it receives the same parameter groups and ``**kwargs`` (``lr``, ``momentum``,
            ``weight_decay`` ...).  Weight decay is the base optimizer's: it acts on the
            update only, never on the ascent step or the curvature estimates.
        rho: ascent radius (any sign; 0 gives estimates 0 and the base optimizer).
        alpha: interpolation: 1 = SAM, 0 = base optimizer, < 0 = AntiSAM.
        adaptive: ASAM's scale-invariant ascent ``T = diag(|w|)``.
        model: if given, the closure at the perturbed point runs inside
            :func:`disable_running_stats` so BatchNorm running statistics are only
            updated by the pass at ``w``.

    ``step(closure)`` calls the closure twice (at ``w`` and ``w + e``) and returns the
    loss at ``w``; both calls must use the same batch (with dropout the two masks
    differ, and ``hvp`` then carries that difference too).  Estimates: ``hvp``,
    ``hvp_direction`` (flat), ``lambda_max`` (float).
    """

    def __init__(self, params: Any, base_optimizer: type[Optimizer], rho: float = 0.05,
                 alpha: float = 1.0, adaptive: bool = False, *, model: nn.Module | None = None,
                 **kwargs: Any) -> None:
        rho, alpha = float(rho), float(alpha)
        self._check_hyper("rho", rho)
        self._check_hyper("alpha", alpha)
        self.model = model
        super().__init__(params, base_optimizer,
                         {"rho": rho, "alpha": alpha, "adaptive": bool(adaptive)}, kwargs)

    def _combine(self, group: dict[str, Any], g: list[Tensor], g_adv: list[Tensor]) -> list[Tensor]:
        alpha = group["alpha"]
        if alpha == 1.0:
            return g_adv
        # g + alpha (g_adv - g)
        return torch._foreach_add(g, torch._foreach_sub(g_adv, g), alpha=alpha)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        closure = self._require_closure(closure, type(self).__name__)
        with torch.enable_grad():
            loss = closure()
        self._record_point()
        groups = self.param_groups
        params = [list(g["params"]) for g in groups]
        had_grad = [[p.grad is not None for p in ps] for ps in params]
        g0 = [self._grads(ps, clone=True) for ps in params]
        e = sam_perturbation(groups, g0)
        saved = [[p.detach().clone() for p in ps] for ps in params]
        for ps, es in zip(params, e):
            torch._foreach_add_(ps, es)
        with torch.enable_grad(), disable_running_stats(self.model):
            closure()
        g_adv = [self._grads(ps, clone=True) for ps in params]
        for ps, ss in zip(params, saved):
            torch._foreach_copy_(ps, ss)  # exact restore of w
        for group, ps, hg, g, ga in zip(groups, params, had_grad, g0, g_adv):
            combined = self._combine(group, g, ga)
            for p, h, c in zip(ps, hg, combined):
                p.grad = c if (h or p.grad is not None) else None
        self.base_optimizer.step()
        self._set_estimates(flat([t for es in e for t in es]), flat([t for gs in g0 for t in gs]),
                            flat([t for gs in g_adv for t in gs]))
        return loss

    def _set_estimates(self, e: Tensor, g: Tensor, g_adv: Tensor) -> None:
        e_norm = torch.linalg.vector_norm(e)
        hvp = safe_div(g_adv - g, e_norm)
        self.estimates = {
            "hvp": hvp,
            "hvp_direction": safe_div(e, e_norm),
            "lambda_max": float(torch.linalg.vector_norm(hvp)),
        }


class SAM(AlphaSAM):
    r"""Sharpness-aware minimisation (Foret et al. 2021); ``adaptive=True`` is ASAM.

    ``w <- base_step(w, grad L(w + e))`` with ``e = rho g/||g||`` (SAM) or
    ``e = rho |w|^2 g / || |w| g ||`` (ASAM, Kwon et al. 2021).  Same arguments,
    closure protocol and estimates as :class:`AlphaSAM` with ``alpha = 1``.

    Example::

        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9,
                  model=model)
        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss
        loss = opt.step(closure)
        opt.estimates["lambda_max"]   # ||(g_adv - g)/rho||
    """

    def __init__(self, params: Any, base_optimizer: type[Optimizer], rho: float = 0.05,
                 adaptive: bool = False, *, model: nn.Module | None = None,
                 **kwargs: Any) -> None:
        if "alpha" in kwargs:
            raise TypeError("SAM has no alpha; use AlphaSAM")
        super().__init__(params, base_optimizer, rho=rho, alpha=1.0, adaptive=adaptive,
                         model=model, **kwargs)
