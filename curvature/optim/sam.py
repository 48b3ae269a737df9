r"""Sharpness-aware minimisation: SAM / ASAM (Foret et al. 2021; Kwon et al. 2021) and alpha-SAM.

Seeds: ``sam-introduction.md`` and ``alpha-sam.md``.  One step at ``w`` with gradient
``g = grad L(w)``:

.. math::

    e = \rho\, T \phi_p(T g),\qquad g_\rho = \nabla L(w + e),\qquad
    g_{\alpha,\rho} = g + \alpha (g_\rho - g),

and the base optimizer (e.g. SGD) steps with ``g_{alpha,rho}`` in place of the
gradient.  ``alpha = 1`` is SAM, ``alpha = 0`` the base optimizer, ``alpha < 0`` AntiSAM;
``rho`` may be negative (the first step goes downhill; ``rho < 0, alpha = -1`` is SAM to
first order in ``rho``, alpha-sam.md "Negative rho").

**p-norm ascent** (``p``; sam-introduction.md "A closed-form solution" and Foret et al.,
Eq. 2): the linearised inner problem ``max_{||e||_p <= rho} e . g`` is a dual-norm
problem, solved by ``e = rho phi_p(g)`` with
``phi_p(x)_i = sign(x_i) (|x_i| / ||x||_q)^(q-1)``, ``1/p + 1/q = 1`` (``||phi||_p = 1``):
``p = 2`` (default) is ``g/||g||``, ``p = inf`` is the sign ascent ``rho sign(g)``.
``p`` must exceed 1 (``p -> 1`` puts all of ``rho`` on the largest coordinate) and is one
value for all groups (the norm is global).

**ASAM** (``adaptive=True``, Kwon et al. 2021, Eq. 10 and Sec. 3): the same problem in
the normalised coordinates ``T^{-1} e`` with ``T_w = diag(|w|) + eta I`` (``eta = 0.01``
by default, as in the paper and the authors' code), so ``e = rho T phi_p(T g)``
(``rho T^2 g / ||T g||`` for ``p = 2``).  ``eta > 0`` gives parameters at exactly zero
(zero-initialised biases, shifts) an ascent of ``rho eta``-scale instead of none.
Biases are not normalised (``T = 1``), as in the authors' code, which applies ``T_w`` to
the parameters whose name contains ``"weight"``.  Names come from
``params=model.named_parameters()`` or from ``model=``; without names every parameter
is treated as a weight (``T = |w| + eta``).  ``T = I`` for SAM.

Curvature read off the two gradients at no extra cost (``u = e/||e||_2``, so
``u = g/||g||`` for SAM with ``rho > 0`` and ``p = 2``):

* ``hvp = (g_rho - g) / ||e||_2``  ~ ``H u`` (exact on a quadratic),
* ``hvp_direction = u``,
* ``lambda_max = ||hvp|| = ||H u||``: an *unsigned* lower bound on the largest
  |eigenvalue| (``||H u||^2 = sum_i lambda_i^2 (v_i . u)^2``), equal to it only when
  ``u`` is a top eigenvector; along a gradient it is typically well below
  (``reports/estimates-vs-truth``).  For SAM it is ``||(g_adv - g)/rho||``.

A zero ascent (zero gradient, or ``rho = 0``) gives all estimates exactly 0: the
gradient difference is then noise only (dropout, a changed batch), not curvature.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from curvature.optim._common import (
    Closure,
    WrapsBaseOptimizer,
    disable_running_stats,
    flat,
    global_norm,
    safe_div,
)

__all__ = ["SAM", "AlphaSAM"]


def dual_direction(x: list[Tensor], p: float) -> list[Tensor]:
    """The unit-p-norm maximiser ``phi`` of ``phi . x`` (Hoelder's equality case).

    ``phi_i = sign(x_i) (|x_i| / ||x||_q)^(q-1)`` with ``1/p + 1/q = 1``, so ``||phi||_p = 1``
    and ``phi . x = ||x||_q``: ``x/||x||_2`` for ``p = 2`` and ``sign(x)`` for ``p = inf``.
    The norm is global over the list; ``x = 0`` gives ``phi = 0``.
    """
    if p == 2.0:
        norm = global_norm(x)
        inv = safe_div(torch.ones((), dtype=norm.dtype, device=norm.device), norm)
        return torch._foreach_mul(x, inv)
    if math.isinf(p):
        return [t.sign() for t in x]
    q = p / (p - 1.0)
    absx = torch._foreach_abs(x)
    norm_q = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(a, q) for a in absx]), q)
    out = []
    for t, a in zip(x, absx):
        out.append(safe_div(a, norm_q).pow_(q - 1.0).mul_(t.sign()))
    return out


def sam_perturbation(groups: list[dict[str, Any]], grads: list[list[Tensor]],
                     weight_flags: list[list[bool]]) -> list[list[Tensor]]:
    """The (A)SAM ascent ``e = rho T phi_p(T g)`` per group, per parameter.

    ``grads[i]`` are the gradients of ``groups[i]["params"]``; ``weight_flags[i][j]`` says
    whether ASAM normalises parameter ``j`` of group ``i`` (``T = |w| + eta``; else
    ``T = 1``).  ``phi_p`` is :func:`dual_direction` over all groups; ``rho``,
    ``adaptive`` and ``eta`` are per group, ``p`` is global.
    """
    p_norm = groups[0]["p"]
    scales: list[list[Tensor | None]] = []  # T per parameter (None: identity)
    tg: list[Tensor] = []
    for group, gs, flags in zip(groups, grads, weight_flags):
        ts: list[Tensor | None] = []
        for w, g, is_weight in zip(group["params"], gs, flags):
            if group["adaptive"] and is_weight:
                t = w.detach().abs().add_(group["eta"])
                ts.append(t)
                tg.append(t * g)
            else:
                ts.append(None)
                tg.append(g)
        scales.append(ts)
    phi = dual_direction(tg, p_norm)
    out, i = [], 0
    for group, ts in zip(groups, scales):
        e = []
        for t in ts:
            e.append(phi[i] * group["rho"] if t is None else phi[i] * t * group["rho"])
            i += 1
        out.append(e)
    return out


class AlphaSAM(WrapsBaseOptimizer):
    r"""alpha-SAM: ``g + alpha (g_rho - g)`` fed to a base optimizer (alpha-sam.md).

    Args:
        params: parameters, named parameters (``model.named_parameters()``) or groups.
        base_optimizer: a ``torch.optim.Optimizer`` class, e.g. ``torch.optim.SGD``;
            it receives the same parameter groups and ``**kwargs`` (``lr``, ``momentum``,
            ``weight_decay`` ...).  Weight decay is the base optimizer's: it acts on the
            update only, never on the ascent step or the curvature estimates.
        rho: ascent radius (any sign; 0 gives estimates 0 and the base optimizer).
        alpha: interpolation: 1 = SAM, 0 = base optimizer, < 0 = AntiSAM.
        adaptive: ASAM's scale-invariant ascent ``T_w = |w| + eta`` (biases: ``T = 1``).
        p: norm of the ascent ball, in ``(1, inf]``: 2 (default) or ``float("inf")``
            (sign ascent) or any ``p > 1``; see the module docstring.
        eta: ASAM's offset in ``T_w = |w| + eta`` (>= 0; default 0.01, Kwon et al.);
            ignored unless ``adaptive``.
        model: if given, the closure at the perturbed point runs inside
            :func:`disable_running_stats` so BatchNorm running statistics are only
            updated by the pass at ``w``; its parameter names tell ASAM the biases.

    ``step(closure)`` calls the closure twice (at ``w`` and ``w + e``) and returns the
    loss at ``w``; both calls must use the same batch (with dropout the two masks
    differ, and ``hvp`` then carries that difference too).  Parameters without a
    gradient are skipped (no ascent, no update).  Estimates: ``hvp``,
    ``hvp_direction`` (flat), ``lambda_max`` (float, ``||H u||``, see the module docstring).
    """

    def __init__(self, params: Any, base_optimizer: type[Optimizer], rho: float = 0.05,
                 alpha: float = 1.0, adaptive: bool = False, *, p: float = 2.0,
                 eta: float = 0.01, model: nn.Module | None = None, **kwargs: Any) -> None:
        rho, alpha, p, eta = float(rho), float(alpha), float(p), float(eta)
        self._check_hyper("rho", rho)
        self._check_hyper("alpha", alpha)
        self._check_hyper("eta", eta, low=0.0)
        if math.isnan(p) or p <= 1.0:
            raise ValueError(f"invalid p={p!r}: the ascent norm must lie in (1, inf]")
        self.model = model
        self._names = ({id(q): n for n, q in model.named_parameters()}
                       if model is not None else {})
        super().__init__(params, base_optimizer,
                         {"rho": rho, "alpha": alpha, "adaptive": bool(adaptive), "p": p,
                          "eta": eta}, kwargs)
        if len({g["p"] for g in self.param_groups}) > 1:
            raise ValueError(f"{type(self).__name__}: all parameter groups must share p "
                             "(the ascent norm is global)")

    def _weight_flags(self, group: dict[str, Any]) -> list[bool]:
        """Which parameters of ``group`` ASAM normalises: names with "weight", or all."""
        names = group.get("param_names")
        if names is None:
            names = [self._names.get(id(q)) for q in group["params"]]
        return [n is None or "weight" in n for n in names]

    def _combine(self, group: dict[str, Any], g: list[Tensor], g_adv: list[Tensor]) -> list[Tensor]:
        alpha = group["alpha"]
        if alpha == 1.0:
            return g_adv
        # g + alpha (g_adv - g)
        return torch._foreach_add(g, torch._foreach_sub(g_adv, g), alpha=alpha)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        closure = self._require_closure(closure, type(self).__name__)
        with torch.enable_grad():
            loss = closure()
        self._record_point()
        groups = self.param_groups
        params = [list(g["params"]) for g in groups]
        had_grad = [[q.grad is not None for q in ps] for ps in params]
        g0 = [self._grads(ps, clone=True) for ps in params]
        e = sam_perturbation(groups, g0, [self._weight_flags(g) for g in groups])
        saved = [[q.detach().clone() for q in ps] for ps in params]
        for ps, es in zip(params, e):
            torch._foreach_add_(ps, es)
        with torch.enable_grad(), disable_running_stats(self.model):
            closure()
        g_adv = [self._grads(ps, clone=True) for ps in params]
        for ps, ss in zip(params, saved):
            torch._foreach_copy_(ps, ss)  # exact restore of w
        for group, ps, hg, g, ga in zip(groups, params, had_grad, g0, g_adv):
            combined = self._combine(group, g, ga)
            for q, h, c in zip(ps, hg, combined):
                q.grad = c if h else None  # torch.optim skips parameters without a gradient
        self.base_optimizer.step()
        self._set_estimates(flat([t for es in e for t in es]), flat([t for gs in g0 for t in gs]),
                            flat([t for gs in g_adv for t in gs]))
        return loss

    def _set_estimates(self, e: Tensor, g: Tensor, g_adv: Tensor) -> None:
        self.estimates = pair_estimates(e, g, g_adv)


def pair_estimates(e: Tensor, g: Tensor, g_adv: Tensor) -> dict[str, float | Tensor]:
    """``hvp = (g_adv - g)/||e||``, ``hvp_direction = e/||e||``, ``lambda_max = ||hvp||``.

    All three are exactly 0 when ``e = 0`` (zero gradient or ``rho = 0``): the gradient
    difference then holds no curvature, only noise (dropout masks), which a division by
    ``||e|| = 0`` would blow up to ``inf``.
    """
    e_norm = torch.linalg.vector_norm(e)
    if not bool(e_norm > 0):
        z = torch.zeros_like(e)
        return {"hvp": z, "hvp_direction": z.clone(), "lambda_max": 0.0}
    hvp = (g_adv - g) / e_norm
    return {"hvp": hvp, "hvp_direction": e / e_norm,
            "lambda_max": float(torch.linalg.vector_norm(hvp))}


class SAM(AlphaSAM):
    r"""Sharpness-aware minimisation (Foret et al. 2021); ``adaptive=True`` is ASAM.

    ``w <- base_step(w, grad L(w + e))`` with ``e = rho phi_p(g)`` (SAM; ``rho g/||g||``
    for ``p = 2``, ``rho sign(g)`` for ``p = inf``) or ``e = rho T phi_p(T g)`` with
    ``T_w = |w| + eta`` (ASAM, Kwon et al. 2021).  Same arguments, closure protocol and
    estimates as :class:`AlphaSAM` with ``alpha = 1``.

    Example::

        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9,
                  model=model)
        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss
        loss = opt.step(closure)
        opt.estimates["lambda_max"]   # ||(g_adv - g)/rho|| = ||H u|| <= max |eigenvalue|
    """

    def __init__(self, params: Any, base_optimizer: type[Optimizer], rho: float = 0.05,
                 adaptive: bool = False, *, p: float = 2.0, eta: float = 0.01,
                 model: nn.Module | None = None, **kwargs: Any) -> None:
        if "alpha" in kwargs:
            raise TypeError("SAM has no alpha; use AlphaSAM")
        super().__init__(params, base_optimizer, rho=rho, alpha=1.0, adaptive=adaptive, p=p,
                         eta=eta, model=model, **kwargs)
