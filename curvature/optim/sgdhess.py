r"""SGDHess: SGD with momentum corrected by a Hessian-vector product (Tran & Cutkosky 2022).

Reference: H. Tran and A. Cutkosky, "Better SGD using Second-order Momentum", NeurIPS
2022 (arXiv:2103.03265), the SGDHess algorithm.  Named in ``sam-hessian-sgdhess.md``,
whose "Extended version of SGDHESS" is :class:`~curvature.optim.ExtendedSGDHess`.

Momentum ``m`` is a stale average of past gradients; the paper removes the staleness
to first order by moving the old average along with the weights, with one
Hessian-vector product along the last step on the *current* batch:

.. math::

    g_t &= \nabla f(w_t;\xi_t) + \mathrm{wd}\, w_t,\qquad d_{t-1} = w_t - w_{t-1},\\
    m_1 &= g_1,\qquad
    m_t = (1-\alpha)\big(\bar m_{t-1} + \nabla^2 f(w_t;\xi_t)\, d_{t-1}
        + \mathrm{wd}\, d_{t-1}\big) + \alpha\, g_t,\\
    \bar m_t &= m_t \min\big(1, G/\|m_t\|\big),\qquad w_{t+1} = w_t - \eta\, \bar m_t,

with ``alpha = 1 - momentum``.  On a quadratic ``H d_{t-1} = g(w_t) - g(w_{t-1})``, so the
corrected momentum is an exact average of the gradients *at the current point* (with
full batches it equals ``g_t`` after the first step).

Choices where the paper leaves room (each documented, none hidden):

* ``clip = G``: the paper's analysis clips the momentum to norm ``G``;
  ``clip=None`` (default) switches clipping off, which is SGD with corrected
  momentum.  The norm is global over all parameters.
* Weight decay ``wd`` is L2 regularisation of the objective (``f + wd/2 ||w||^2``): it
  enters ``g_t`` and, through the Hessian of the penalty, the correction (``wd d``).
* ``d_{t-1}`` is the *actual* displacement of the weights since the last step (equal
  to ``-eta m_bar_{t-1}`` unless something else moved them).
* ``momentum`` (= ``1 - alpha``) is one value for all groups (one global correction);
  ``lr`` and ``weight_decay`` may differ per group.

Closure protocol: as :class:`~curvature.optim.AdaHessian`, the closure calls
``loss.backward(create_graph=True)``; ``step`` differentiates the gradients once more
along ``d_{t-1}`` (one Hessian-vector product) and detaches ``p.grad``.  Parameters
without a gradient are skipped, as in torch.optim.

Estimates (from the second step on; ``{}`` on the first): ``hvp = H u`` with
``hvp_direction = u = d_{t-1}/||d_{t-1}||`` (flat), the exact Hessian-vector product of
the loss (without the ``wd`` term) on the step's batch, computed by autograd.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from curvature.optim._common import Closure, CurvatureOptimizer, flat, global_norm

__all__ = ["SGDHess"]


def graph_hvp(params: list[Tensor], vectors: list[Tensor], name: str) -> list[Tensor]:
    """``H v`` from gradients that carry their graph (``backward(create_graph=True)``).

    ``params`` all have a gradient; a gradient without a graph is constant (its Hessian
    row is 0).  Raises ``RuntimeError`` when no gradient carries a graph.
    """
    if not any(p.grad.requires_grad for p in params):
        raise RuntimeError(f"{name} needs gradients that carry their graph: call "
                           "loss.backward(create_graph=True) inside the closure")
    outs = [p.grad for p in params if p.grad.requires_grad]
    vs = [v for p, v in zip(params, vectors) if p.grad.requires_grad]
    with torch.enable_grad():
        hv = torch.autograd.grad(outs, params, grad_outputs=vs, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, params)]


class SGDHess(CurvatureOptimizer):
    """SGD with Hessian-corrected momentum (Tran & Cutkosky 2022); see the module docstring.

    Args:
        params: parameters or parameter groups.
        lr: step size ``eta`` (> 0).
        momentum: ``1 - alpha`` in [0, 1): weight of the corrected old momentum.
        weight_decay: L2 coefficient (in the gradient and in the correction).
        clip: momentum norm bound ``G`` (> 0), or ``None`` for no clipping.

    One closure call per step (with ``create_graph=True``) and, from the second step on,
    one Hessian-vector product.

    Example::

        opt = SGDHess(model.parameters(), lr=0.1, momentum=0.9)
        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward(create_graph=True)   # SGDHess differentiates the gradient
            return loss
        loss = opt.step(closure)
        opt.estimates.get("hvp")               # H u along the last step (exact)
    """

    def __init__(self, params: Any, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 0.0, clip: float | None = None) -> None:
        self._check_hyper("lr", lr, low=0.0, low_open=True)
        self._check_hyper("momentum", momentum, low=0.0)
        if momentum >= 1.0:
            raise ValueError(f"invalid momentum={momentum!r}: must lie in [0, 1)")
        self._check_hyper("weight_decay", weight_decay, low=0.0)
        if clip is not None:
            self._check_hyper("clip", clip, low=0.0, low_open=True)
        super().__init__(params, {"lr": lr, "momentum": momentum,
                                  "weight_decay": weight_decay, "clip": clip})
        for key in ("momentum", "clip"):
            if len({g[key] for g in self.param_groups}) > 1:
                raise ValueError(f"SGDHess corrects one global momentum: all parameter "
                                 f"groups must share {key}")

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        closure = self._require_closure(closure, "SGDHess")
        loss = self._evaluate_and_record(closure)
        beta = self.param_groups[0]["momentum"]
        clip = self.param_groups[0]["clip"]
        ps, wds, lrs = [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:  # torch.optim skips parameters without a gradient
                    ps.append(p)
                    wds.append(group["weight_decay"])
                    lrs.append(group["lr"])
        self.estimates = {}
        if not ps:
            return loss
        old = [i for i, p in enumerate(ps) if "momentum" in self.state[p]]
        hv: list[Tensor] = []
        d: list[Tensor] = [torch.zeros_like(p) for p in ps]
        if old:
            for i in old:
                d[i] = ps[i] - self.state[ps[i]]["prev_param"]
            hv = graph_hvp(ps, d, "SGDHess")
            d_norm = global_norm(d)
            if bool(d_norm > 0):
                idx = {id(p): i for i, p in enumerate(ps)}
                every = self._params()
                self.estimates = {
                    "hvp": flat([hv[idx[id(p)]] if id(p) in idx else torch.zeros_like(p)
                                 for p in every]) / d_norm,
                    "hvp_direction": flat([d[idx[id(p)]] if id(p) in idx else torch.zeros_like(p)
                                           for p in every]) / d_norm,
                }
        for p in ps:
            p.grad = p.grad.detach()  # frees the graph
        for i, (p, wd) in enumerate(zip(ps, wds)):
            g = p.grad.add(p, alpha=wd) if wd != 0 else p.grad.clone()
            s = self.state[p]
            if "momentum" not in s:
                s["momentum"] = g  # m_1 = g_1
                continue
            corr = hv[i].add(d[i], alpha=wd) if wd != 0 else hv[i]
            # m_t = (1 - alpha)(m_bar_{t-1} + H d + wd d) + alpha g_t, beta = 1 - alpha
            s["momentum"] = (s["momentum"] + corr).mul_(beta).add_(g, alpha=1.0 - beta)
        m = [self.state[p]["momentum"] for p in ps]
        if clip is not None:
            norm = global_norm(m).clamp_min(torch.finfo(m[0].dtype).tiny)
            torch._foreach_mul_(m, torch.clamp(clip / norm, max=1.0))
        for p, mp, lr in zip(ps, m, lrs):
            self.state[p]["prev_param"] = p.detach().clone()
            p.add_(mp, alpha=-lr)
        return loss
