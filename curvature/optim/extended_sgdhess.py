r"""ExtendedSGDHess: SGD with a multiplicative gradient-noise preconditioner (``sam-hessian-sgdhess.md``).

The seed's "Extended version of SGDHESS" (named ``SGDHess`` in earlier versions of this
package; :class:`~curvature.optim.SGDHess` is now Tran & Cutkosky's method).

Motivation (seed, after "How SGD finds flat minima"): the covariance of SGD noise
aligns with the Gauss-Newton matrix, so a running estimate of the per-coordinate
noise variance is a cheap curvature proxy; SAM rescales the gradient by
``I + rho H``, and ExtendedSGDHess rescales it by ``I + rho v`` with ``v`` that estimate.
Per coordinate, with ``m_0 = eps_0 = v_0 = 0``:

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
    \hat\epsilon_t &= g_t - m_t \qquad\text{(noise extraction)}\\
    \epsilon_t &= \beta_1 \epsilon_{t-1} + (1-\beta_1)\hat\epsilon_t \\
    v_t &= \beta_2 v_{t-1} + (1-\beta_2)(\epsilon_t - \hat\epsilon_t)^2 \\
    w_{t+1} &= w_t - \eta\,\big(g_t \odot (1 + \rho\, v_t) + \mathrm{wd}\, w_t\big)

**Where the seed is ambiguous.** It writes ``v_t = beta_2 eps_{t-1} + (1 - beta_1)
(eps_t - eps_hat_t)^2``.  Read literally, ``v_t`` would add a *signed* noise mean to
a squared quantity (different units, and ``1 + rho v_t`` could turn negative and
reverse the step), it would not depend on ``v_{t-1}`` at all, and the weights
``beta_2`` and ``1 - beta_1`` of an exponential average would not sum to one.  All
three defects disappear with ``v_{t-1}`` for ``eps_{t-1}`` and ``1 - beta_2`` for
``1 - beta_1``, which makes ``v_t`` the EMA (with the seed's ``beta_2``) of the
squared deviation of the extracted noise from its running mean -- a variance, as
the name and the update ``I + rho v_t`` require.  That is the reading implemented.
``v_t >= 0`` keeps the update a descent direction.

Weight decay enters the update only, not the noise statistics.  Parameters without a
gradient are skipped (no decay, no statistics), as in torch.optim.

Estimate: ``noise_variance = v_t`` (flat; units of squared gradient), the raw EMA
*without* bias correction: it starts at ``v_0 = 0`` and with ``beta_2 = 0.999`` fills
only after ~1000 steps (about 0.07 sigma^2 at ``t = 100`` for i.i.d. gradient noise of
variance sigma^2; ``v_t / (1 - beta_2^t)`` removes the start, not the estimator's own
scale; ``reports/estimates-vs-truth``).  It is the ``v_t`` of the update, which uses it
uncorrected as the seed writes.
"""

from __future__ import annotations

from typing import Any

import torch

from curvature.optim._common import Closure, CurvatureOptimizer, flat

__all__ = ["ExtendedSGDHess"]


class ExtendedSGDHess(CurvatureOptimizer):
    """SGD whose gradient is scaled per coordinate by ``1 + rho * noise_variance``.

    Args:
        params: parameters or parameter groups.
        lr: step size (> 0).
        rho: strength of the multiplicative noise scaling (>= 0; 0 is SGD).
            ``rho * v`` is dimensionless, so ``rho`` scales like 1 / gradient^2; pick
            it from the scale of ``opt.estimates["noise_variance"]``.  The default
            1000 gives ``rho * v`` ~ 0.01 (median) to 0.1 (max) for a 64-32-10 MLP on
            standardised digits with batches of 64.
        betas: ``(beta_1, beta_2)`` of the mean / noise-mean and of the variance EMA.
        weight_decay: L2 coefficient added to the update.

    One closure call per step.
    """

    def __init__(self, params: Any, lr: float = 0.1, rho: float = 1000.0,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0) -> None:
        self._check_hyper("lr", lr, low=0.0, low_open=True)
        self._check_hyper("rho", rho, low=0.0)
        self._check_hyper("weight_decay", weight_decay, low=0.0)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid betas={betas!r}: need two values in [0, 1)")
        super().__init__(params, {"lr": lr, "rho": rho, "betas": tuple(betas),
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        loss = self._evaluate_and_record(closure)
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]  # as torch.optim
            if not ps:
                continue
            g = self._grads(ps)
            for p in ps:
                s = self.state[p]
                if "exp_avg" not in s:
                    s["exp_avg"] = torch.zeros_like(p)
                    s["noise_avg"] = torch.zeros_like(p)
                    s["noise_var"] = torch.zeros_like(p)
            m = [self.state[p]["exp_avg"] for p in ps]
            eps = [self.state[p]["noise_avg"] for p in ps]
            v = [self.state[p]["noise_var"] for p in ps]
            b1, b2 = group["betas"]
            torch._foreach_lerp_(m, g, 1.0 - b1)
            eps_hat = torch._foreach_sub(g, m)
            torch._foreach_lerp_(eps, eps_hat, 1.0 - b1)
            dev = torch._foreach_sub(eps, eps_hat)
            torch._foreach_mul_(v, b2)
            torch._foreach_addcmul_(v, dev, dev, value=1.0 - b2)
            # g * (1 + rho v) = g + rho g v
            d = torch._foreach_addcmul(g, g, v, value=group["rho"])
            if group["weight_decay"] != 0:
                torch._foreach_add_(d, ps, alpha=group["weight_decay"])
            torch._foreach_add_(ps, d, alpha=-group["lr"])
        self.estimates = {"noise_variance": flat([  # cat copies
            self.state[p]["noise_var"] if "noise_var" in self.state[p] else torch.zeros_like(p)
            for p in self._params()])}
        return loss
