r"""Adaptive (scale-invariant) sharpness of a trained model.

For weights ``w`` (all trainable parameters, flattened, ``P`` entries), a loss ``L`` on a
fixed batch and the elementwise scale ``c = |w| + eta`` (``eta >= 0``, default 0), the
adaptive sharpness of Kwon et al. (2021, ASAM) and Andriushchenko et al. (2023, "A modern
look at the relationship between sharpness and generalization") is measured in the
ellipsoid ``{delta = c * u : ||u||_2 <= rho}``, whose axes scale with the weights, so that
rescaling a ReLU layer by ``a`` and the next by ``1/a`` leaves the value unchanged:

- worst case:  ``S_max(w) = max_{||u||_2 <= rho} L(w + c * u) - L(w)``,
- average case: ``S_avg(w) = E_{u ~ N(0, rho^2 I_P)} L(w + c * u) - L(w)``.

Both are in units of the loss. For a quadratic ``L(w) = 1/2 (w - w*)^T A (w - w*)`` at its
minimum ``w = w*`` they have closed forms: with ``C = diag(c)``,
``S_max = rho^2 / 2 * lambda_max(C A C)`` (if ``lambda_max > 0``) and
``S_avg = rho^2 / 2 * tr(C A C) = rho^2 / 2 * sum_i c_i^2 A_ii``.

The worst case is a maximisation: :func:`adaptive_sharpness` runs ``steps`` of projected
normalised gradient ascent on ``u`` (gradient ``c * grad L(w + c * u)``, step of length
``rho``, projection onto the ``rho``-ball), from a random start of radius ``rho / 10``,
and keeps the best point seen. On a quadratic at its minimum, once on the sphere, this is
the power iteration of ``I + B / lambda`` (``B = C A C``), converging at the rate
``(1 + lambda_2 / lambda_1) / 2`` per step. The result is a lower bound of the true
maximum (an ascent can stop short of it), never an over-estimate. The average case is a
Monte-Carlo mean over ``samples`` draws, reported with its standard error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["SharpnessResult", "adaptive_sharpness"]


@dataclass(frozen=True)
class SharpnessResult:
    """Adaptive sharpness of one model on one batch.

    Attributes:
        kind: ``"worst"`` or ``"average"``.
        value: the sharpness (loss units): best ascent gain for ``"worst"`` (a lower
            bound of the maximum), Monte-Carlo mean gain for ``"average"``.
        stderr: standard error of the Monte-Carlo mean (``"average"``; 0 for ``"worst"``).
        base_loss: ``L(w)`` on the batch.
        rho: radius of the ball in the scaled coordinates ``u``.
        eta: offset of the scale ``c = |w| + eta``.
        evaluations: loss evaluations spent (forward passes on the batch).
    """

    kind: str
    value: float
    stderr: float
    base_loss: float
    rho: float
    eta: float
    evaluations: int


def adaptive_sharpness(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batch: tuple[Tensor, Tensor],
    *,
    rho: float,
    kind: str = "worst",
    steps: int = 10,
    samples: int = 20,
    eta: float = 0.0,
    seed: int = 0,
) -> SharpnessResult:
    """Adaptive worst-case or average-case sharpness of ``model`` on ``batch``.

    Args:
        model: the network; its weights are perturbed in place and restored bit for bit
            (also on error); it is evaluated in eval mode, its train flags restored.
        loss_fn: ``loss_fn(model(x), y)``, a scalar (mean over the batch).
        batch: ``(x, y)``, e.g. up to a thousand training examples.
        rho: radius (``> 0``) of the ball ``||u||_2 <= rho``; ``delta = (|w| + eta) * u``.
        kind: ``"worst"`` (projected gradient ascent) or ``"average"`` (Gaussian).
        steps: ascent steps of the worst case (``>= 1``).
        samples: Gaussian draws of the average case (``>= 2``).
        eta: offset of the elementwise scale (``>= 0``; ASAM uses 0.01, Andriushchenko
            et al. 0).
        seed: seeds the random start / the Gaussian draws (own generator).

    Returns:
        :class:`SharpnessResult`.

    Raises:
        ValueError: bad ``rho``/``kind``/``steps``/``samples``/``eta``, a model without
            trainable parameters, or a non-finite loss at ``w``.
    """
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a positive finite number, got {rho!r}")
    if kind not in ("worst", "average"):
        raise ValueError(f"kind must be 'worst' or 'average', got {kind!r}")
    if int(steps) < 1 or int(samples) < 2:
        raise ValueError(f"steps must be >= 1 and samples >= 2, got {steps!r}, {samples!r}")
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    x, y = batch
    saved = [p.detach().clone() for p in params]
    flags = {m: m.training for m in model.modules()}
    gen = torch.Generator().manual_seed(int(seed))
    scale = [(s.abs() + eta) for s in saved]
    model.eval()
    try:
        with torch.no_grad():
            base = float(loss_fn(model(x), y))
        if not math.isfinite(base):
            raise ValueError(f"the loss at w is {base}; sharpness is undefined")
        if kind == "average":
            return _average(model, loss_fn, x, y, params, saved, scale, rho, int(samples),
                            gen, base, eta)
        return _worst(model, loss_fn, x, y, params, saved, scale, rho, int(steps), gen,
                      base, eta)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
            for p in params:
                p.grad = None
        for m, t in flags.items():
            m.train(t)


def _set(params: list[Tensor], saved: list[Tensor], scale: list[Tensor],
         u: list[Tensor]) -> None:
    with torch.no_grad():
        for p, s, c, ui in zip(params, saved, scale, u):
            p.copy_(s + c * ui)


def _norm(u: list[Tensor]) -> float:
    return math.sqrt(sum(float((ui * ui).sum()) for ui in u))


def _average(model, loss_fn, x, y, params, saved, scale, rho, samples, gen, base, eta):
    gains = []
    for _ in range(samples):
        u = [rho * torch.randn(s.shape, generator=gen, dtype=s.dtype) for s in saved]
        _set(params, saved, scale, u)
        with torch.no_grad():
            gains.append(float(loss_fn(model(x), y)) - base)
    g = torch.tensor(gains, dtype=torch.float64)
    return SharpnessResult("average", float(g.mean()), float(g.std() / math.sqrt(samples)),
                           base, float(rho), float(eta), samples + 1)


def _worst(model, loss_fn, x, y, params, saved, scale, rho, steps, gen, base, eta):
    u = [torch.randn(s.shape, generator=gen, dtype=s.dtype) for s in saved]
    n0 = _norm(u)
    u = [ui * (rho / 10 / n0) for ui in u]
    step = rho
    best = 0.0  # u = 0 is in the ball: the maximum gain is >= 0
    evals = 1
    for i in range(steps + 1):
        _set(params, saved, scale, u)
        for p in params:
            p.grad = None
        loss = loss_fn(model(x), y)
        evals += 1
        best = max(best, float(loss.detach()) - base)
        if i == steps:
            break
        grads = torch.autograd.grad(loss, params)
        g = [c * gi for c, gi in zip(scale, grads)]  # d L(w + c u) / d u
        gn = _norm(g)
        if gn == 0.0 or not math.isfinite(gn):
            break
        u = [ui + (step / gn) * gi for ui, gi in zip(u, g)]
        un = _norm(u)
        if un > rho:
            u = [ui * (rho / un) for ui in u]
    return SharpnessResult("worst", best, 0.0, base, float(rho), float(eta), evals)
