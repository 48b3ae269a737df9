r"""SAM with an adaptive learning rate from its own curvature estimate.

Seed: ``accelerated-sam-adaptive-lr.md``.  The SAM gradient pair doubles as a
finite-difference Hessian-vector product, averaged into ``h_t``; the step size is
``lr / ||h_t||`` (``lr = 1`` is the seed's ``eta_opt = 1/lambda_max``):

.. math::

    g_t = \nabla L(w_t),\quad e_t = \rho\, g_t/\|g_t\|,\quad
    g_{t+1/2} = \nabla L(w_t + e_t),\\
    h_t = \beta h_{t-1} + (1-\beta)\,(g_{t+1/2} - g_t)/\rho,\qquad
    \hat h_t = h_t / (1 - \beta^t)\ \text{(if bias\_correction)},\\
    w_{t+1} = w_t - \frac{\mathrm{lr}}{\max(\|\hat h_t\|, \mathrm{eps})}
        \,(g_{t+1/2} + \mathrm{wd}\, w_t).

With ``bias_correction=False`` and ``momentum=0`` this is exactly the seed (``h_0 = 0``).
The seed leaves ``h_0`` open; with ``h_0 = 0`` the first steps are ``1/(1-beta^t)``
times too long, hence the Adam-style correction by default.  ``momentum > 0`` applies
heavy-ball momentum (torch.optim.SGD convention) to ``g_{t+1/2} + wd w``.

Estimates: ``lambda_max = ||h_hat_t||`` (float), and for the current step's pair
``hvp = (g_{t+1/2} - g_t)/rho``, ``hvp_direction = g_t/||g_t||`` (flat).  Each pair is
``H u_t`` along the gradient direction ``u_t``, so ``||hvp||`` is an unsigned lower
bound on the largest |eigenvalue| (equal only when ``u_t`` is a top eigenvector), and
``||h_t||``, the norm of an *average of vectors along changing directions*, is lower
still: ``lambda_max`` here is the norm of the averaged SAM pair, not the top eigenvalue,
and the step ``lr/||h_t||`` is correspondingly longer than ``lr/lambda_max``
(``reports/estimates-vs-truth``).  Parameters without a gradient are skipped.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from curvature.optim._common import (
    Closure,
    CurvatureOptimizer,
    disable_running_stats,
    flat,
    global_norm,
    groups_with_grads,
    safe_div,
    with_weight_decay,
)

__all__ = ["AcceleratedSAM"]


class AcceleratedSAM(CurvatureOptimizer):
    """SAM whose step is ``lr / ||h_t||`` with ``h_t`` an EMA of ``(g_adv - g)/rho``.

    Args:
        params: parameters or parameter groups.
        lr: dimensionless step factor; the step is ``lr / ||h_t||`` (``lr=1``: the
            seed's ``1/lambda_max``; ``< 2`` for stability on a quadratic).
        rho: ascent radius (> 0).
        beta: EMA factor of ``h_t`` in [0, 1).
        momentum: heavy-ball momentum on the SAM gradient (0 = seed).
        weight_decay: L2 coefficient added to the descent gradient (not to the
            ascent or the estimate).
        bias_correction: divide ``h_t`` by ``1 - beta^t`` (default) or use the seed's
            raw EMA started at 0.
        eps: floor of ``||h_t||`` (a zero gradient gives a zero step, no NaN).
        model: see :class:`curvature.optim.SAM` (BatchNorm statistics at the ascent point).

    ``lr``, ``momentum``, ``weight_decay`` and ``eps`` may differ per group; ``rho``,
    ``beta`` and ``bias_correction`` must not (``h_t`` is one global estimate).
    """

    def __init__(self, params: Any, lr: float = 0.5, rho: float = 0.05, beta: float = 0.9,
                 momentum: float = 0.0, weight_decay: float = 0.0, bias_correction: bool = True,
                 eps: float = 1e-8, *, model: nn.Module | None = None) -> None:
        self._check_hyper("lr", lr, low=0.0, low_open=True)
        self._check_hyper("rho", rho, low=0.0, low_open=True)
        self._check_hyper("beta", beta, low=0.0, high=1.0)
        if beta == 1.0:
            raise ValueError("invalid beta=1.0: must lie in [0, 1)")
        self._check_hyper("momentum", momentum, low=0.0)
        self._check_hyper("weight_decay", weight_decay, low=0.0)
        self._check_hyper("eps", eps, low=0.0, low_open=True)
        self.model = model
        super().__init__(params, {"lr": lr, "rho": rho, "beta": beta, "momentum": momentum,
                                  "weight_decay": weight_decay,
                                  "bias_correction": bias_correction, "eps": eps})
        for key in ("rho", "beta", "bias_correction"):
            if len({g[key] for g in self.param_groups}) > 1:
                raise ValueError(f"AcceleratedSAM keeps one global curvature estimate: all "
                                 f"parameter groups must share {key}")

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        closure = self._require_closure(closure, "AcceleratedSAM")
        g0_group = self.param_groups[0]
        rho, beta = g0_group["rho"], g0_group["beta"]
        params = self._params()
        with torch.enable_grad():
            loss = closure()
        self._record_point()
        has_grad = [q.grad is not None for q in params]
        g = self._grads(params, clone=True)
        scale = safe_div(torch.ones_like(global_norm(g)), global_norm(g)) * rho
        e = torch._foreach_mul(g, scale)
        saved = [p.detach().clone() for p in params]
        torch._foreach_add_(params, e)
        with torch.enable_grad(), disable_running_stats(self.model):
            closure()
        g_adv = self._grads(params, clone=True)
        torch._foreach_copy_(params, saved)

        first = params[0]
        st = self.state[first]
        t = st.get("step", 0) + 1
        st["step"] = t
        for p in params:
            if "h" not in self.state[p]:
                self.state[p]["h"] = torch.zeros_like(p)
        h = [self.state[p]["h"] for p in params]
        fd = torch._foreach_sub(g_adv, g)
        torch._foreach_div_(fd, rho)
        torch._foreach_lerp_(h, fd, 1.0 - beta)  # h = beta h + (1 - beta) fd
        h_norm = global_norm(h)
        if g0_group["bias_correction"]:
            h_norm = h_norm / (1.0 - beta**t)

        for group, keep in groups_with_grads(self.param_groups, has_grad):
            ps = [params[j] for j in keep]
            d = with_weight_decay([g_adv[j] for j in keep], ps, group["weight_decay"])
            if group["momentum"] != 0:
                d = self._heavy_ball(ps, d, group["momentum"])
            step = -group["lr"] / h_norm.clamp_min(group["eps"])
            torch._foreach_add_(ps, torch._foreach_mul(d, step))

        self.estimates = {
            "hvp": flat(fd),
            "hvp_direction": safe_div(flat(g), global_norm(g)),
            "lambda_max": float(h_norm),
        }
        return loss

    @property
    def step_size(self) -> float:
        """The last effective step ``lr / ||h_hat_t||`` of the first group (nan before a step)."""
        lam = self.estimates.get("lambda_max")
        if lam is None:
            return math.nan
        g = self.param_groups[0]
        return g["lr"] / max(float(lam), g["eps"])
