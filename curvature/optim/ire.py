r"""IRE: Implicit Regularization Enhancement (Wang, Wang, He, Wang, Huang, Xiong, Li, E, Wu; NeurIPS 2024).

Seed: ``sam-hessian-sgdhess.md``.  IRE speeds up the motion along *flat*
directions, where the implicit regularisation of SGD/SAM acts slowly, and leaves
the sharp directions (which limit stability) alone:

.. math::

    w_{t+1} = w_t + (I + k P_t)\,\Delta_t,

where ``Delta_t`` is the base optimizer's update (``-eta g_t`` for SGD, giving the
seed's ``w - eta (g + k P g)``) and ``P_t = diag(mask)`` selects the
``flat_fraction`` of coordinates with the smallest ``|h_i|``, ``h`` an exponential
moving average (factor ``beta``, bias-corrected) of a diagonal-Hessian estimate:

* ``diag="hutchinson"`` (default): ``z * (H z)`` with Rademacher ``z``, unbiased for
  diag(H); the closure must call ``loss.backward(create_graph=True)`` (as for
  :class:`~curvature.optim.AdaHessian`).
* ``diag="fisher"``: ``g * g``, the empirical-Fisher diagonal used by the authors'
  SGD code (one plain backward; a Gauss-Newton proxy, not the Hessian).

The mask is recomputed every ``update_each`` steps, together with the estimate.
Because ``P_t`` multiplies the base update, it works with any base optimizer
(SGD, momentum, Adam(W)); momentum and weight decay live in ``Delta_t``.

Estimate: ``hessian_diag`` = the bias-corrected EMA ``h`` that defines the mask (flat).
With ``diag="fisher"`` this is an EMA of *squared gradients* ``g * g`` exposed under the
name ``hessian_diag``: an empirical-Fisher proxy (always >= 0, units of squared
gradient, of the size of the gradient noise), not an estimate of diag(H); compare it
with diag(H) for its direction only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import Optimizer

from curvature.optim._common import (
    Closure,
    WrapsBaseOptimizer,
    flat,
    hutchinson_diagonal,
    step_generator,
)

__all__ = ["IRE"]


class IRE(WrapsBaseOptimizer):
    """Wrap a base optimizer and multiply its update on the flattest coordinates by ``1 + k``.

    Args:
        params: parameters or parameter groups.
        base_optimizer: a ``torch.optim.Optimizer`` class; ``**kwargs`` go to it.
        k: acceleration of the flat coordinates (>= 0; 0 is the base optimizer).
        flat_fraction: fraction of coordinates (over all parameters) treated as flat.
        diag: ``"hutchinson"`` or ``"fisher"`` (see the module docstring).
        beta: EMA factor of the diagonal estimate over its updates.
        update_each: refresh the estimate and the mask every this many steps.
        num_samples: Rademacher probes per Hutchinson estimate.
        seed: seed of the probe stream (``None``: global torch generator).

    Example::

        opt = IRE(model.parameters(), torch.optim.SGD, k=2.0, lr=0.1, momentum=0.9)
        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward(create_graph=True)   # not needed with diag="fisher"
            return loss
        loss = opt.step(closure)
    """

    def __init__(self, params: Any, base_optimizer: type[Optimizer], k: float = 2.0,
                 flat_fraction: float = 0.7, diag: str = "hutchinson", beta: float = 0.9,
                 update_each: int = 1, num_samples: int = 1, seed: int | None = None,
                 **kwargs: Any) -> None:
        self._check_hyper("k", k, low=0.0)
        self._check_hyper("flat_fraction", flat_fraction, low=0.0, high=1.0)
        self._check_hyper("beta", beta, low=0.0, high=1.0)
        if beta == 1.0:
            raise ValueError("invalid beta=1.0: must lie in [0, 1)")
        if diag not in ("hutchinson", "fisher"):
            raise ValueError(f"invalid diag={diag!r}: choose 'hutchinson' or 'fisher'")
        if int(update_each) < 1 or int(num_samples) < 1:
            raise ValueError(f"update_each={update_each!r} and num_samples={num_samples!r} "
                             "must be positive integers")
        self.k = float(k)
        self.flat_fraction = float(flat_fraction)
        self.diag = diag
        self.beta = float(beta)
        self.update_each = int(update_each)
        self.num_samples = int(num_samples)
        self.seed = seed
        super().__init__(params, base_optimizer, {}, kwargs)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        loss = self._evaluate_and_record(closure)
        params = self._params()
        head = self.state[params[0]]
        t = head.get("ire_step", 0) + 1
        head["ire_step"] = t
        if (t - 1) % self.update_each == 0:
            self._update_mask(params, t)
        else:
            for p in params:
                if p.grad is not None:
                    p.grad = p.grad.detach()
        before = [p.detach().clone() for p in params]
        self.base_optimizer.step()
        if self.k != 0:
            delta = torch._foreach_sub(params, before)
            masks = [self.state[p]["ire_mask"] for p in params]
            torch._foreach_mul_(delta, masks)
            torch._foreach_add_(params, delta, alpha=self.k)
        n_upd = head["ire_updates"]
        corr = 1.0 - self.beta**n_upd
        self.estimates = {"hessian_diag": flat([self.state[p]["ire_diag"] for p in params]) / corr}
        return loss

    def _update_mask(self, params: list, t: int) -> None:
        if self.diag == "hutchinson":
            gen = step_generator(self.seed, t, params[0].device)
            sample = hutchinson_diagonal(params, self.num_samples, gen, "IRE(diag='hutchinson')")
        else:
            g = self._grads(params)
            sample = torch._foreach_mul(g, g)
            for p in params:
                if p.grad is not None:
                    p.grad = p.grad.detach()
        for p in params:
            if "ire_diag" not in self.state[p]:
                self.state[p]["ire_diag"] = torch.zeros_like(p)
        h = [self.state[p]["ire_diag"] for p in params]
        torch._foreach_lerp_(h, sample, 1.0 - self.beta)
        head = self.state[params[0]]
        head["ire_updates"] = head.get("ire_updates", 0) + 1
        mag = flat(h).abs()
        n_flat = math.floor(self.flat_fraction * mag.numel())
        if n_flat == 0:
            mask = torch.zeros_like(mag)
        else:
            threshold = torch.kthvalue(mag, n_flat).values
            mask = (mag <= threshold).to(mag.dtype)
        for p, m in zip(params, mask.split([p.numel() for p in params])):
            self.state[p]["ire_mask"] = m.view_as(p).to(p.dtype)
