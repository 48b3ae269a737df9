r"""SAM with an online power-iteration estimate of the top Hessian eigenvalue.

Seed: ``accelerated-sam-adaptive-lr.md`` (the LeCun-style procedure; LeCun, Simard &
Pearlmutter 1993, "Automatic learning rate maximization by on-line estimation of the
Hessian's eigenvectors").  SAM's own curvature read-out,

.. math::

    \frac{\|\nabla L(w + \rho\,\hat g) - \nabla L(w)\|}{\rho} \approx \|H \hat g\|,
    \qquad \hat g = g/\|g\|,

is ``(sum_i lambda_i^2 c_i^2)^{1/2}`` with ``c_i = v_i . g_hat``: it reaches
``lambda_max`` only when the gradient aligns with the top eigenvector ``v_1``, and in
practice (``|c_1|`` ~ 0.1) it falls well short.  The seed's procedure keeps a running
vector ``v`` and perturbs along *it* instead, with one extra gradient on the same
batch per step:

.. math::

    \hat v_t = v_{t-1}/\|v_{t-1}\|,\qquad
    y_t = \frac{\nabla L(w_t + \rho_v \hat v_t) - \nabla L(w_t)}{\rho_v} \approx H_t \hat v_t,\\
    m_t = (1-\beta)\, m_{t-1} + \beta\, y_t,\qquad v_t = m_t / (1 - (1-\beta)^t),

a damped power iteration whose fixed point is ``v = H v_hat``: ``v_hat`` the
eigenvector of the largest ``|lambda|`` and ``||v|| = |lambda|`` (the bias correction
``1/(1-(1-beta)^t)`` removes the start at ``m_0 = 0``; ``v_0`` is a seeded random unit
vector).  Averaged over mini-batches it converges to the top eigenvector of the mean
Hessian.  (The seed's step 3 literally perturbs along ``G_1/||G_1||``, which is SAM's
biased read-out; its step 1 -- "pick a normalized vector v at random" -- and
LeCun et al.'s paper perturb along ``v``.)

The weights follow SAM exactly (the extra gradient only updates ``v``), so a run of
this optimizer and a run of :class:`~curvature.optim.SAM` with the same seed, batches
and hyperparameters have the same trajectory up to floating-point roundoff, which
makes the two ``lambda_max`` estimates directly comparable.

Estimates: ``lambda_max = ||v_t||`` (float; or, with ``estimate="rayleigh"``, the
bias-corrected running average of ``v_hat_t . y_t``), ``hvp = y_t`` and
``hvp_direction = v_hat_t`` (flat).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from curvature.optim._common import Closure, disable_running_stats, flat, global_norm, safe_div
from curvature.optim.sam import SAM

__all__ = ["OnlineEigenSAM"]


class OnlineEigenSAM(SAM):
    """SAM plus a running top-eigenvector estimate (one extra gradient per step).

    Args:
        params, base_optimizer, rho, adaptive, model, **kwargs: as :class:`SAM`.
        beta: weight of the newest product in the running average, in (0, 1]
            (``1``: plain power iteration on each mini-batch Hessian).
        eig_rho: finite-difference radius along ``v_hat`` (> 0; default ``|rho|``, or
            0.05 when ``rho = 0``).
        estimate: ``"norm"``: ``lambda_max = ||v_t||``; ``"rayleigh"``: the same running
            average of the Rayleigh quotients ``v_hat_t . y_t`` (linear in the mini-batch
            Hessian, so batch noise averages out instead of adding to a norm).
        seed: seeds the random start vector ``v_0`` (its own generator; the global
            RNG is not touched).

    ``step(closure)`` calls the closure three times on the same batch (at ``w``,
    ``w + e`` and ``w + eig_rho v_hat``) and returns the loss at ``w``.
    """

    def __init__(self, params: Any, base_optimizer: type[Optimizer], rho: float = 0.05,
                 adaptive: bool = False, *, beta: float = 0.2, eig_rho: float | None = None,
                 estimate: str = "norm", seed: int = 0, model: nn.Module | None = None,
                 **kwargs: Any) -> None:
        if estimate not in ("norm", "rayleigh"):
            raise ValueError(f"invalid estimate={estimate!r}: choose 'norm' or 'rayleigh'")
        self.estimate = estimate
        beta = float(beta)
        self._check_hyper("beta", beta, low=0.0, high=1.0, low_open=True)
        if eig_rho is None:
            eig_rho = abs(float(rho)) or 0.05
        eig_rho = float(eig_rho)
        self._check_hyper("eig_rho", eig_rho, low=0.0, low_open=True)
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, model=model, **kwargs)
        self.beta = beta
        self.eig_rho = eig_rho
        self.seed = int(seed)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        closure = self._require_closure(closure, "OnlineEigenSAM")
        params = self._params()
        first: dict[str, Any] = {}

        def counted() -> Any:
            out = closure()
            if not first:  # the gradient at w_t: kept for the extra product
                first["g"] = flat(self._grads(params, clone=True))
            return out

        loss = super().step(counted)
        w_t = self.estimate_params  # SAM recorded w_t before its update
        g = first["g"]
        head = self.state[params[0]]
        t = head.get("eig_step", 0) + 1
        head["eig_step"] = t
        if "eig_m" not in head:
            gen = torch.Generator(device=g.device).manual_seed(self.seed)
            v0 = torch.randn(g.shape, generator=gen, device=g.device, dtype=g.dtype)
            head["eig_v"] = v0 / torch.linalg.vector_norm(v0)
            head["eig_m"] = torch.zeros_like(g)
            head["eig_r"] = torch.zeros((), dtype=g.dtype, device=g.device)
        v_hat = safe_div(head["eig_v"], torch.linalg.vector_norm(head["eig_v"]))
        # gradient at w_t + eig_rho v_hat on the same batch; w_{t+1} is restored after
        saved = [p.detach().clone() for p in params]
        point = w_t + self.eig_rho * v_hat
        chunks = torch.split(point, [p.numel() for p in params])
        torch._foreach_copy_(params, [c.view_as(p) for c, p in zip(chunks, params)])
        with torch.enable_grad(), disable_running_stats(self.model):
            closure()
        g_v = flat(self._grads(params, clone=True))
        torch._foreach_copy_(params, saved)
        y = (g_v - g) / self.eig_rho
        m = head["eig_m"]
        m.mul_(1.0 - self.beta).add_(y, alpha=self.beta)
        corr = 1.0 - (1.0 - self.beta) ** t
        v = m / corr
        head["eig_v"] = v
        r = head["eig_r"]
        r.mul_(1.0 - self.beta).add_(v_hat @ y, alpha=self.beta)
        lam = global_norm([v]) if self.estimate == "norm" else r / corr
        self.estimates = {
            "lambda_max": float(lam),
            "hvp": y,
            "hvp_direction": v_hat,
        }
        return loss
