r"""DiagHessianSGD: the multiplicative Hessian variant of ``sam-hessian-sgdhess.md``.

The seed's research question asks "why AdaHessian cannot find flat minima while the
multiplicative version can".  Its "Intuition from Update Rule" shows that SAM's step
is, to first order, ``eta (I + rho H) g``: the gradient *multiplied* by ``I + rho H``,
which accelerates sharp directions, where AdaHessian *divides* by ``|diag H|``.  This
optimizer is that multiplicative form with the diagonal of ``H`` in place of ``H``
(the ``g (1 + rho v_t)`` shape of the seed's ExtendedSGDHess, with a Hessian
estimate for ``v_t``):

.. math::

    D_t &= \tfrac{1}{S}\textstyle\sum_s z_s \odot (H z_s),\quad z_s \sim\text{Rademacher}
        \qquad (\mathbb E[D_t] = \operatorname{diag} H)\\
    d_t &= \beta\, d_{t-1} + (1-\beta) D_t,\qquad \hat d_t = d_t / (1 - \beta^{n_t})\\
    w_{t+1} &= w_t - \eta\,\big(g_t \odot (1 + \rho\, \hat d_t) + \mathrm{wd}\, w_t\big)

(through heavy-ball momentum, torch.optim.SGD's convention, if ``momentum > 0``).

Choices where the seed is ambiguous:

* ``d_t`` is an EMA of the *signed* Hutchinson diagonal (AdaHessian averages its
  square), so ``1 + rho d_t`` is the diagonal of the seed's ``I + rho H`` (an EMA of
  ``D^2`` would lose the sign and the scale of ``H``).  Where ``rho d_t < -1``
  (negative curvature) the step on that coordinate reverses, as ``(I + rho H) g``
  does; small ``rho`` keeps ``1 + rho d_t > 0`` near a minimum (``diag H >= 0`` there).
* ``d_t`` is refreshed every ``update_each`` steps and ``n_t`` counts the refreshes, so
  the bias correction matches the average (``d_hat = D`` for a constant ``D``).
* No spatial averaging of convolution kernels (AdaHessian's Sec. 3.3): the seed's
  form is per coordinate.
* Weight decay (L2) enters the step but is not multiplied by ``1 + rho d_t``.

Closure protocol: the closure calls ``loss.backward(create_graph=True)`` (as for
:class:`~curvature.optim.AdaHessian`); ``step`` takes ``num_samples`` Hessian-vector
products and detaches ``p.grad``.  ``seed`` as in AdaHessian.  Parameters without a
gradient are skipped.

Estimate: ``hessian_diag = d_hat_t`` (flat), the bias-corrected EMA that scales the
step (an average over past weights and batches, unbiased for diag(H) only where the
weights stand still).
"""

from __future__ import annotations

from typing import Any

import torch

from curvature.optim._common import (
    Closure,
    CurvatureOptimizer,
    flat,
    scheduled_diagonal,
)

__all__ = ["DiagHessianSGD"]


class DiagHessianSGD(CurvatureOptimizer):
    """SGD with the gradient scaled per coordinate by ``1 + rho * diag(H)`` (Hutchinson EMA).

    Args:
        params: parameters or parameter groups.
        lr: step size (> 0).
        rho: strength of the multiplicative scaling (>= 0; 0 is SGD).  ``rho d`` is
            dimensionless: ``rho`` is a length of parameter-space time, like SAM's
            ``rho / ||g||``; keep ``rho * max diag(H)`` of order 1.
        beta: EMA factor of the Hessian diagonal over its refreshes, in [0, 1).
        momentum: heavy-ball momentum on the scaled direction (0: the seed's form).
        weight_decay: L2 coefficient added to the (unscaled) direction.
        update_each: refresh the diagonal every this many steps.
        num_samples: Rademacher probes per refresh.
        seed: seed of the probe stream (``None``: global torch generator).

    Example::

        opt = DiagHessianSGD(model.parameters(), lr=0.1, rho=0.1, seed=0)
        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward(create_graph=True)
            return loss
        loss = opt.step(closure)
        opt.estimates["hessian_diag"]          # Tensor[n], EMA of z * (H z)
    """

    def __init__(self, params: Any, lr: float = 0.1, rho: float = 0.1, beta: float = 0.99,
                 momentum: float = 0.0, weight_decay: float = 0.0, update_each: int = 1,
                 num_samples: int = 1, seed: int | None = None) -> None:
        self._check_hyper("lr", lr, low=0.0, low_open=True)
        self._check_hyper("rho", rho, low=0.0)
        self._check_hyper("beta", beta, low=0.0, high=1.0)
        if beta == 1.0:
            raise ValueError("invalid beta=1.0: must lie in [0, 1)")
        self._check_hyper("momentum", momentum, low=0.0)
        self._check_hyper("weight_decay", weight_decay, low=0.0)
        if int(update_each) < 1 or int(num_samples) < 1:
            raise ValueError(f"update_each={update_each!r} and num_samples={num_samples!r} "
                             "must be positive integers")
        self.update_each = int(update_each)
        self.num_samples = int(num_samples)
        self.seed = seed
        super().__init__(params, {"lr": lr, "rho": rho, "momentum": momentum,
                                  "weight_decay": weight_decay})
        self.beta = float(beta)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        loss = self._evaluate_and_record(closure)
        params = self._params()
        sample = scheduled_diagonal(self, params, "DiagHessianSGD")
        if sample is not None:
            for p, dp in zip(params, sample):
                if p.grad is None:
                    continue
                s = self.state[p]
                if "hessian_ema" not in s:
                    s["hessian_ema"] = torch.zeros_like(p)
                    s["hessian_updates"] = 0
                s["hessian_ema"].lerp_(dp, 1.0 - self.beta)
                s["hessian_updates"] += 1
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]  # as torch.optim
            if not ps:
                continue
            d_hat = [self._diag(p) for p in ps]
            g = self._grads(ps)
            # g (1 + rho d_hat) = g + rho g d_hat
            direction = torch._foreach_addcmul(g, g, d_hat, value=group["rho"])
            if group["weight_decay"] != 0:
                torch._foreach_add_(direction, ps, alpha=group["weight_decay"])
            if group["momentum"] != 0:
                direction = self._heavy_ball(ps, direction, group["momentum"])
            torch._foreach_add_(ps, direction, alpha=-group["lr"])
        self.estimates = {"hessian_diag": flat([self._diag(p) for p in params])}
        return loss

    def _diag(self, p: torch.Tensor) -> torch.Tensor:
        """The bias-corrected diagonal ``d_hat`` of ``p`` (zeros before its first refresh)."""
        s = self.state[p]
        if "hessian_ema" not in s:
            return torch.zeros_like(p)
        return s["hessian_ema"] / (1.0 - self.beta ** s["hessian_updates"])
