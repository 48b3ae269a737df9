r"""ForwardSAM: a one-gradient SAM from consecutive gradients (end of ``alpha-sam.md``).

The seed observes that after a plain step ``theta_1 = theta_0 - eta g_0``

.. math::

    g(\theta_1) - g(\theta_0) \approx -\eta H g_0 = -\eta\|g_0\|\,\nabla\|g(\theta_0)\|,

so a free step ``theta_3 = theta_2 + alpha/(eta ||g_0||) (g_1 - g_0)`` descends the
gradient norm (SAM's implicit regulariser) by ``alpha``.  Written with the actual
displacement ``d_{t-1} = w_t - w_{t-1}`` (``||d_0|| = eta ||g_0||`` for a plain step),
one gradient per step:

.. math::

    g_t = \nabla L(w_t),\qquad
    \mathrm{hvp}_t = \frac{g_t - g_{t-1}}{\|d_{t-1}\|} \approx H \frac{d_{t-1}}{\|d_{t-1}\|},\\
    D_t = g_t + \mathrm{wd}\,w_t - \frac{\alpha}{\eta}\,\mathrm{hvp}_t,\qquad
    w_{t+1} = w_t - \eta D_t

(``D_t`` through heavy-ball momentum if ``momentum > 0``).  The first step (no
previous gradient) is plain.  With ``momentum = wd = 0``, steps 0 and 1 are exactly the
seed's three lines (``w_2 = theta_3``).

The two questions the seed leaves open, and the choices made here:

* **Momentum / non-vanilla steps.** The secant is always taken along the *actual*
  displacement, so ``hvp`` is an exact ``H u`` on a quadratic for any update rule.
  The correction ``+alpha H u_{t-1}`` descends the slope along the last step,
  ``s(w) = -g(w) . u_{t-1}``, which is ``||g||`` when the step was a plain gradient
  step (the seed's case) and the slope along the momentum direction otherwise.
* **Stochastic gradients.** ``g_t - g_{t-1}`` from two different minibatches
  contains the noise difference divided by ``||d|| ~ eta ||g||``, which dominates
  the curvature signal.  ``same_batch_pairs=True`` makes the correction use only
  pairs of consecutive steps taken on the *same* batch: steps 0, 2, 4, ... are plain
  and start a pair, steps 1, 3, 5, ... are corrected with the difference inside the
  pair (the caller feeds each minibatch to two consecutive steps).  This is the
  seed's schedule, one gradient per update.  The default (``False``) corrects on
  every step and suits full-batch training.

Estimates (only on corrected steps; ``{}`` otherwise): ``hvp`` and
``hvp_direction = d_{t-1}/||d_{t-1}||`` (flat), ``lambda_max = ||hvp|| = ||H u||`` (float;
an unsigned lower bound on the largest |eigenvalue|, equal only when ``u`` is a top
eigenvector).  Note ``u = d/||d|| ~ -g/||g||`` for plain steps: the sign is that of the
step.  With mini-batches and ``same_batch_pairs=False`` the secant mixes two batches
and is dominated by gradient noise (``reports/estimates-vs-truth``).  Parameters without
a gradient are skipped; a step that did not move the weights is not corrected.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from curvature.optim._common import (
    Closure,
    CurvatureOptimizer,
    flat,
    global_norm,
    groups_with_grads,
    with_weight_decay,
)

__all__ = ["ForwardSAM", "forward_secant"]


def forward_secant(opt: CurvatureOptimizer, params: list[Tensor], g: list[Tensor],
                   pairs: bool) -> list[Tensor] | None:
    """The secant ``(g_t - g_{t-1}) / ||w_t - w_{t-1}||`` per parameter, or ``None``.

    Keeps ``prev_grad`` / ``prev_param`` in ``opt.state`` and the step count in the
    state of ``params[0]``; sets ``opt.estimates`` (``{}`` on uncorrected steps).  No
    correction on the first step, on the even steps of ``pairs`` mode, and when the
    weights did not move (``||d|| = 0``: the difference would be gradient noise only).
    """
    head = opt.state[params[0]]
    t = head.get("step", 0)
    head["step"] = t + 1
    correct = "prev_grad" in head and (not pairs or t % 2 == 1)
    fd = None
    opt.estimates = {}
    if correct:
        d = torch._foreach_sub(params, [opt.state[p]["prev_param"] for p in params])
        d_norm = global_norm(d)
        if bool(d_norm > 0):
            fd = torch._foreach_sub(g, [opt.state[p]["prev_grad"] for p in params])
            inv = torch.ones_like(d_norm) / d_norm
            torch._foreach_mul_(fd, inv)
            opt.estimates = {
                "hvp": flat(fd),
                "hvp_direction": flat(d) * inv,
                "lambda_max": float(global_norm(fd)),
            }
    keep = not (pairs and correct)  # a pair is used once
    for p, gp in zip(params, g):
        s = opt.state[p]
        if keep:
            s["prev_grad"] = gp
            s["prev_param"] = p.detach().clone()
        else:
            s.pop("prev_grad", None)
            s.pop("prev_param", None)
    return fd


class ForwardSAM(CurvatureOptimizer):
    """One-gradient SAM: gradient-norm descent from consecutive gradients.

    Args:
        params: parameters or parameter groups.
        lr: step size ``eta`` (> 0).
        alpha: length of the gradient-norm descent step (seed's alpha; comparable to
            SAM's ``lr * rho``); 0 gives SGD, < 0 seeks sharpness.
        momentum: heavy-ball momentum (torch.optim.SGD convention) on ``D_t``.
        weight_decay: L2 coefficient added to the gradient in ``D_t``.
        same_batch_pairs: correct only on odd steps, with the difference inside each
            (even, odd) pair of steps; see the module docstring.
    """

    def __init__(self, params: Any, lr: float = 0.1, alpha: float = 0.005, momentum: float = 0.0,
                 weight_decay: float = 0.0, same_batch_pairs: bool = False) -> None:
        self._check_hyper("lr", lr, low=0.0, low_open=True)
        self._check_hyper("momentum", momentum, low=0.0)
        self._check_hyper("weight_decay", weight_decay, low=0.0)
        self._check_hyper("alpha", float(alpha))
        super().__init__(params, {"lr": lr, "alpha": float(alpha), "momentum": momentum,
                                  "weight_decay": weight_decay,
                                  "same_batch_pairs": bool(same_batch_pairs)})

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        closure = self._require_closure(closure, "ForwardSAM")
        with torch.enable_grad():
            loss = closure()
        self._record_point()
        params = self._params()
        has_grad = [q.grad is not None for q in params]
        g = self._grads(params, clone=True)
        fd = forward_secant(self, params, g, self.param_groups[0]["same_batch_pairs"])

        for group, keep in groups_with_grads(self.param_groups, has_grad):
            ps = [params[j] for j in keep]
            direction = with_weight_decay([g[j] for j in keep], ps, group["weight_decay"])
            if fd is not None and group["alpha"] != 0:
                direction = torch._foreach_add(direction, [fd[j] for j in keep],
                                               alpha=-group["alpha"] / group["lr"])
            if group["momentum"] != 0:
                direction = self._heavy_ball(ps, direction, group["momentum"])
            torch._foreach_add_(ps, direction, alpha=-group["lr"])
        return loss
