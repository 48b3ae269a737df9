r"""Saddam: ForwardSAM's one-gradient correction on top of any base optimizer (``alpha-sam.md``).

The seed ends on "Perhaps there is a version of this that still works with Adam. That
would be interesting, a combination of SAM and Adam. Saddam?".  SAM feeds its base
optimizer the gradient at the ascent point, ``g(w + rho g/||g||) ~ g + rho H g/||g||``.
:class:`~curvature.optim.ForwardSAM` reads a Hessian-vector product off two consecutive
gradients for free; Saddam feeds the base optimizer (Adam, SGD, ...) the same SAM-like
gradient built from it:

.. math::

    g_t = \nabla L(w_t),\qquad d_{t-1} = w_t - w_{t-1},\qquad
    \mathrm{hvp}_t = \frac{g_t - g_{t-1}}{\|d_{t-1}\|} \approx H u_{t-1},\quad
    u_{t-1} = \frac{d_{t-1}}{\|d_{t-1}\|},\\
    \tilde g_t = g_t - \rho\, \mathrm{hvp}_t,\qquad w_{t+1} = \mathrm{base\_step}(w_t, \tilde g_t).

For a descent step ``u_{t-1} ~ -g/||g||``, so ``g_t - rho hvp_t ~ g + rho H g/||g||``: SAM's
gradient with radius ``rho``, one gradient per step.  The first step (no previous
gradient) is the base optimizer's.

Choices where the seed is open:

* **Where the correction enters.** Into the *gradient* the base optimizer sees, as
  SAM with Adam does (the SAM gradient goes through Adam's moments and
  preconditioner).  With ``base_optimizer=torch.optim.SGD`` (any momentum, L2 weight
  decay) and ``rho = alpha / lr`` this is exactly :class:`ForwardSAM` with ``alpha``:
  ForwardSAM's correction, written as a radius.
* **Direction of the secant.** The *actual* displacement ``d_{t-1}`` (for Adam, the
  preconditioned step), so ``hvp`` is an exact ``H u`` on a quadratic; the correction
  descends the slope along the last step (``||g||`` for plain steps, as in ForwardSAM).
* **Stochastic gradients.** ``same_batch_pairs=True`` corrects only odd steps with the
  difference inside each (even, odd) pair fed the same batch, as ForwardSAM.
* Weight decay is the base optimizer's (e.g. AdamW's decoupled decay); it does not
  enter the secant.

Estimates (corrected steps only; ``{}`` otherwise): ``hvp``, ``hvp_direction = u_{t-1}``
(flat) and ``lambda_max = ||hvp|| = ||H u||`` (an unsigned lower bound on the largest
|eigenvalue|, see :mod:`curvature.optim.sam`).  Parameters without a gradient are
skipped (the base optimizer sees ``grad = None``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from curvature.optim._common import Closure, WrapsBaseOptimizer
from curvature.optim.forward_sam import forward_secant

__all__ = ["Saddam"]


class Saddam(WrapsBaseOptimizer):
    """Wrap a base optimizer (Adam, SGD, ...) and feed it ``g_t - rho * hvp_t``.

    Args:
        params: parameters or parameter groups.
        base_optimizer: a ``torch.optim.Optimizer`` class; ``**kwargs`` go to it.
        rho: SAM-equivalent radius of the correction (any real; 0 is the base
            optimizer, < 0 seeks sharpness).  ``rho = alpha / lr`` with SGD is ForwardSAM.
        same_batch_pairs: correct only odd steps, within (even, odd) pairs of steps fed
            the same batch (see :class:`~curvature.optim.ForwardSAM`).

    One closure call per step.

    Example::

        opt = Saddam(model.parameters(), torch.optim.Adam, rho=0.05, lr=1e-3)
        loss = opt.step(closure)               # closure: zero_grad, loss, backward
    """

    def __init__(self, params: Any, base_optimizer: type[Optimizer], rho: float = 0.05,
                 same_batch_pairs: bool = False, **kwargs: Any) -> None:
        rho = float(rho)
        self._check_hyper("rho", rho)
        super().__init__(params, base_optimizer,
                         {"rho": rho, "same_batch_pairs": bool(same_batch_pairs)}, kwargs)
        if len({g["same_batch_pairs"] for g in self.param_groups}) > 1:
            raise ValueError("Saddam: all parameter groups must share same_batch_pairs")

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        closure = self._require_closure(closure, "Saddam")
        loss = self._evaluate_and_record(closure)
        params = self._params()
        g = self._grads(params, clone=True)
        fd = forward_secant(self, params, g, self.param_groups[0]["same_batch_pairs"])
        if fd is not None:
            i = 0
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None and group["rho"] != 0:
                        p.grad = g[i].sub(fd[i], alpha=group["rho"])
                    i += 1
        self.base_optimizer.step()
        return loss
