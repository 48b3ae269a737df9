r"""AdaHessian (Yao, Gholami, Shen, Mustafa, Keutzer, Mahoney; AAAI 2021).

Adam with the squared gradient replaced by the squared Hutchinson estimate of the
Hessian diagonal (seed: ``sam-hessian-sgdhess.md``, "AdaHessian"):

.. math::

    D_t &= \tfrac{1}{S}\textstyle\sum_{s} z_s \odot (H z_s),\quad z_s \sim \text{Rademacher}
        \qquad (\mathbb E[D_t] = \operatorname{diag} H)\\
    D^{(s)}_t &= \text{spatial average of } D_t \text{ over each convolution kernel}\\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t,\qquad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) D^{(s)}_t \odot D^{(s)}_t\\
    w_{t+1} &= w_t - \eta\Big(\frac{m_t/(1-\beta_1^t)}
        {\big(\sqrt{v_t/(1-\beta_2^t)}\big)^{k} + \epsilon} + \mathrm{wd}\,w_t\Big)

with Hessian power ``k`` (``hessian_power``) and decoupled weight decay.  Spatial
averaging (Yao et al., Sec. 3.3): for a parameter with ``ndim >= 3`` (a conv kernel
``[out, in, *kernel]``), ``D`` is replaced by its mean over the kernel dimensions
(the signed mean, as in the paper; its square enters ``v``).

**Closure protocol.** The closure must call ``loss.backward(create_graph=True)`` so
that the gradients carry their graph; ``step`` differentiates them once more
(``num_samples`` Hessian-vector products) and then detaches ``p.grad``, which frees
the graph.  A closure without ``create_graph=True`` raises a ``RuntimeError``
saying so.  ``update_each = k`` recomputes ``D`` only every ``k`` steps and, as in
the reference implementation (Yao et al.'s code), the kept ``D`` enters ``v_t`` on
*every* step, so ``v_t`` and its bias correction ``1 - beta_2^t`` count the same
steps and ``sqrt(v_hat_t) = |D|`` for a constant ``D`` (an earlier version updated
``v`` only on refresh steps, which made the steps up to ``sqrt(k)`` too long).
Parameters without a gradient are skipped (no decay, no moments), as in torch.optim;
``t`` counts each parameter's own updates.

Randomness: ``seed=None`` draws the probes from the global torch generator (one
``randint`` per parameter, in order); an integer ``seed`` derives the stream from
``(seed, step)``, so runs are reproducible across ``state_dict`` round trips.

Estimate: ``hessian_diag = D^{(s)}_t`` (flat), the (spatially averaged) diagonal that
enters ``v_t``; unbiased for diag(H) on parameters with ``ndim <= 2``.  Kept from
the last Hessian update on steps that skip it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from curvature.optim._common import (
    Closure,
    CurvatureOptimizer,
    flat,
    scheduled_diagonal,
)

__all__ = ["AdaHessian"]


def spatial_average(d: Tensor) -> Tensor:
    """Mean of a conv kernel's diagonal over its kernel dims (``ndim >= 3``), broadcast back."""
    if d.ndim < 3:
        return d
    dims = tuple(range(2, d.ndim))
    return d.mean(dim=dims, keepdim=True).expand_as(d).clone()


class AdaHessian(CurvatureOptimizer):
    """Adam-type optimizer preconditioned by a Hutchinson Hessian diagonal.

    Args:
        params: parameters or parameter groups.
        lr: step size.
        betas: EMA factors of the gradient and of the squared Hessian diagonal.
        eps: added to the denominator.
        weight_decay: decoupled (AdamW-style) weight decay.
        hessian_power: exponent ``k`` in (0, 1] of the RMS Hessian diagonal.
        update_each: recompute the Hessian diagonal every this many steps.
        num_samples: Rademacher probes per Hessian estimate.
        seed: seed of the probe stream (``None``: global torch generator).

    Example::

        opt = AdaHessian(model.parameters(), lr=0.15, seed=0)
        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward(create_graph=True)   # AdaHessian differentiates the gradient
            return loss
        loss = opt.step(closure)
        opt.estimates["hessian_diag"]          # Tensor[n], E = diag(H)
    """

    def __init__(self, params: Any, lr: float = 0.15, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-4, weight_decay: float = 0.0, hessian_power: float = 1.0,
                 update_each: int = 1, num_samples: int = 1, seed: int | None = None) -> None:
        self._check_hyper("lr", lr, low=0.0, low_open=True)
        self._check_hyper("eps", eps, low=0.0)
        self._check_hyper("weight_decay", weight_decay, low=0.0)
        self._check_hyper("hessian_power", hessian_power, low=0.0, high=1.0, low_open=True)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid betas={betas!r}: need two values in [0, 1)")
        if int(update_each) < 1 or int(num_samples) < 1:
            raise ValueError(f"update_each={update_each!r} and num_samples={num_samples!r} "
                             "must be positive integers")
        self.update_each = int(update_each)
        self.num_samples = int(num_samples)
        self.seed = seed
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps,
                                  "weight_decay": weight_decay, "hessian_power": hessian_power})

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        loss = self._evaluate_and_record(closure)
        params = self._params()
        diag = scheduled_diagonal(self, params, "AdaHessian")
        if diag is not None:
            for p, d in zip(params, diag):
                if p.grad is not None or "hessian_diag" not in self.state[p]:
                    self.state[p]["hessian_diag"] = spatial_average(d)
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]  # as torch.optim
            if not ps:
                continue
            g = self._grads(ps)
            for p in ps:
                s = self.state[p]
                if "exp_avg" not in s:
                    s["step"] = 0
                    s["exp_avg"] = torch.zeros_like(p)
                    s["exp_hessian_diag_sq"] = torch.zeros_like(p)
                s["step"] += 1
            m = [self.state[p]["exp_avg"] for p in ps]
            v = [self.state[p]["exp_hessian_diag_sq"] for p in ps]
            d = [self.state[p]["hessian_diag"] for p in ps]
            b1, b2 = group["betas"]
            torch._foreach_lerp_(m, g, 1.0 - b1)
            # the kept diagonal enters v on every step, so 1 - beta_2^t matches v
            torch._foreach_mul_(v, b2)
            torch._foreach_addcmul_(v, d, d, value=1.0 - b2)
            steps = [self.state[p]["step"] for p in ps]
            bc1 = [1.0 - b1**t for t in steps]
            denom = torch._foreach_div(v, [1.0 - b2**t for t in steps])
            torch._foreach_pow_(denom, group["hessian_power"] / 2.0)
            torch._foreach_add_(denom, group["eps"])
            if group["weight_decay"] != 0:
                torch._foreach_mul_(ps, 1.0 - group["lr"] * group["weight_decay"])
            torch._foreach_mul_(denom, bc1)  # m_hat / denom = m / (bc1 denom)
            torch._foreach_addcdiv_(ps, m, denom, value=-group["lr"])
        self.estimates = {"hessian_diag": flat([self.state[p]["hessian_diag"] for p in params])}
        return loss
