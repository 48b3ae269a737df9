r"""Smoothness-adaptive SGD and SAM (Naganuma, Kim, Kyrillidis, Mitliagkas; ``sa-sam-poster.md``).

The step size is Malitsky & Mishchenko's (2020) local-smoothness rule, and SA-SAM
ties the ascent radius to it (``rho_t = sqrt(eta_t)``, after Andriushchenko &
Flammarion 2022).  With ``theta_0 = +inf`` and ``eta_0 = lr``:

.. math::

    L_t = \frac{\|\nabla L(w_t;\xi_t) - \nabla L(w_{t-1};\xi_t)\|}{\|w_t - w_{t-1}\|},\qquad
    \eta_t = \min\Big\{\frac{1}{2 L_t},\ \sqrt{1+\theta_{t-1}}\,\eta_{t-1}\Big\},\qquad
    \theta_t = \eta_t/\eta_{t-1},

    \text{SA-SGD: } w_{t+1} = w_t - \eta_t \nabla L(w_t;\xi_t),\qquad
    \text{SA-SAM: } w_{t+1} = w_t - \eta_t \nabla L\Big(w_t + \sqrt{\eta_t}
        \frac{\nabla L(w_t;\xi_t)}{\|\nabla L(w_t;\xi_t)\|};\xi_t\Big)

(poster, Algorithm lines 2 and 5-8; step 0 uses ``eta_0``, and at step 1 the cap
``sqrt(1 + theta_0) eta_0`` is infinite).  If ``L_t = 0`` (no change of gradient)
the first bound is infinite; if both bounds are infinite ``eta_t = eta_{t-1}``.

``same_batch_secant=True`` (default, the poster's line 5) evaluates
``grad L(w_{t-1}; xi_t)`` with one extra closure call at the previous iterate (the
closure must then use the same batch for all its calls within one ``step``);
``False`` reuses the stored ``grad L(w_{t-1}; xi_{t-1})``: one gradient fewer,
identical for full-batch training, noisy with minibatches.

Weight decay ``wd`` is added to the descent gradient only; ``L_t`` is the secant of
the loss itself, so it is comparable with the loss Hessian.

Estimates (from step 1 on): ``smoothness = L_t`` (float) and
``smoothness_direction = w_t - w_{t-1}`` (flat ``dw``; the exact secant is
``||H dw|| / ||dw||``, a lower bound on the largest |eigenvalue|, not an estimate of
it).  SA-SAM also gives the SAM-pair estimates ``hvp``, ``hvp_direction`` and
``lambda_max = ||H u||`` (an unsigned lower bound on the largest |eigenvalue|, see
:mod:`curvature.optim.sam`) on every step.  Parameters without a gradient are skipped.
The adaptive step is ``opt.step_size``.  ``eta_t`` and ``theta_t`` stay on the
device (0-d tensors in the state of the first parameter, as torch.optim.LBFGS keeps
its global state); the scalar estimates are read back with one host sync per step.
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
from curvature.optim.sam import pair_estimates

__all__ = ["SASGD", "SASAM"]


class _SmoothnessAdaptive(CurvatureOptimizer):
    _sam = False

    def __init__(self, params: Any, lr: float = 0.01, weight_decay: float = 0.0,
                 same_batch_secant: bool = True, *, model: nn.Module | None = None) -> None:
        self._check_hyper("lr", lr, low=0.0, low_open=True)
        self._check_hyper("weight_decay", weight_decay, low=0.0)
        self.model = model
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay,
                                  "same_batch_secant": bool(same_batch_secant)})
        if len({g["lr"] for g in self.param_groups}) > 1:
            raise ValueError(f"{type(self).__name__} adapts one global step size: all parameter "
                             "groups must share lr (the initial step eta_0)")

    @property
    def step_size(self) -> float:
        """The step size ``eta_t`` of the last step (``lr`` before the first)."""
        head = self.state[self._params()[0]]
        return float(head["eta"]) if "eta" in head else float(self.param_groups[0]["lr"])

    def _eval_at(self, params: list, points: list, closure: Closure) -> list:
        """Gradient at ``points`` (params are restored exactly afterwards)."""
        saved = [p.detach().clone() for p in params]
        torch._foreach_copy_(params, points)
        with torch.enable_grad(), disable_running_stats(self.model):
            closure()
        g = self._grads(params, clone=True)
        torch._foreach_copy_(params, saved)
        return g

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        closure = self._require_closure(closure, type(self).__name__)
        params = self._params()
        with torch.enable_grad():
            loss = closure()
        self._record_point()
        has_grad = [q.grad is not None for q in params]
        g = self._grads(params, clone=True)
        head = self.state[params[0]]
        estimates: dict[str, Any] = {}
        scalars: dict[str, torch.Tensor] = {}  # read back together: one host sync per step
        ref = params[0]
        if "eta" not in head:  # step 0: eta_0 = lr, theta_0 = +inf
            eta = torch.tensor(float(self.param_groups[0]["lr"]), dtype=ref.dtype,
                               device=ref.device)
            theta = torch.full_like(eta, math.inf)
        else:
            prev_w = [self.state[p]["prev_param"] for p in params]
            if self.param_groups[0]["same_batch_secant"]:
                g_prev = self._eval_at(params, prev_w, closure)
            else:
                g_prev = [self.state[p]["prev_grad"] for p in params]
            dw = torch._foreach_sub(params, prev_w)
            dg = torch._foreach_sub(g, g_prev)
            smooth = safe_div(global_norm(dg), global_norm(dw))  # 0 if dw = 0 (then dg = 0)
            eta_prev, theta_prev = head["eta"], head["theta"]
            bound1 = torch.where(smooth > 0, 0.5 / smooth, math.inf)
            bound2 = torch.sqrt(1.0 + theta_prev) * eta_prev
            eta = torch.minimum(bound1, bound2)
            eta = torch.where(torch.isinf(eta), eta_prev, eta)  # both bounds infinite
            theta = eta / eta_prev
            scalars["smoothness"] = smooth
            estimates["smoothness_direction"] = flat(dw)

        descent = g
        if self._sam:
            gn = global_norm(g)
            e = torch._foreach_mul(g, safe_div(torch.sqrt(eta), gn))  # rho_t = sqrt(eta_t)
            g_adv = self._eval_at(params, torch._foreach_add(params, e), closure)
            pair = pair_estimates(flat(e), flat(g), flat(g_adv))
            estimates["hvp"] = pair["hvp"]
            estimates["hvp_direction"] = pair["hvp_direction"]
            estimates["lambda_max"] = pair["lambda_max"]
            descent = g_adv

        for p, gp in zip(params, g):
            s = self.state[p]
            s["prev_param"] = p.detach().clone()
            s["prev_grad"] = gp
        head["eta"], head["theta"] = eta, theta
        head["step"] = head.get("step", 0) + 1

        for group, keep in groups_with_grads(self.param_groups, has_grad):
            ps = [params[j] for j in keep]
            d = with_weight_decay([descent[j] for j in keep], ps, group["weight_decay"])
            torch._foreach_add_(ps, torch._foreach_mul(d, -eta))
        if scalars:
            estimates.update(zip(scalars, torch.stack(list(scalars.values())).tolist()))
        self.estimates = estimates
        return loss


class SASGD(_SmoothnessAdaptive):
    """Smoothness-adaptive SGD: Malitsky-Mishchenko step ``eta_t`` (sa-sam-poster.md).

    Args:
        params: parameters or parameter groups (all with the same ``lr``).
        lr: the initial step ``eta_0`` (> 0); later steps adapt.
        weight_decay: L2 coefficient added to the descent gradient.
        same_batch_secant: take the secant on the current batch (one extra
            gradient at ``w_{t-1}``), or reuse the previous step's gradient.
        model: BatchNorm statistics are frozen for the extra evaluation at ``w_{t-1}``.

    Calls the closure 2 times per step (1 with ``same_batch_secant=False``; 1 at step 0).
    Estimates: ``smoothness``, ``smoothness_direction``.
    """

    _sam = False


class SASAM(_SmoothnessAdaptive):
    """Smoothness-adaptive SAM: ``eta_t`` as SA-SGD and ``rho_t = sqrt(eta_t)`` (sa-sam-poster.md).

    Same arguments as :class:`SASGD`.  Calls the closure 3 times per step (2 with
    ``same_batch_secant=False``; 2 at step 0).  Estimates: ``smoothness``,
    ``smoothness_direction``, ``hvp``, ``hvp_direction``, ``lambda_max``.

    Measured caveat (reports/minima, reports/lr-wd-heatmap): with mini-batches the
    Malitsky-Mishchenko step ``eta_t`` is not capped by the seed and settled at a
    median of about 4 (up to about 600) on digits, so the ascent radius
    ``sqrt(eta_t)`` reached about 2 against SAM's 0.05; one seed in three diverged on
    a digits MLP and a digits CNN collapsed to chance. The update follows the seed
    as written.
    """

    _sam = True
