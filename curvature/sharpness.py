r"""Adaptive (scale-invariant) sharpness of a trained model.

For weights ``w`` (all trainable parameters, flattened, ``P`` entries), a loss ``L`` on
fixed data (one batch, or the batch-size weighted mean of the batch losses over several:
the dataset loss of :class:`curvature.HessianOperator`) and the elementwise scale
``c = |w| + eta`` (``eta >= 0``, default 0), the adaptive sharpness of Kwon et al. (2021, ASAM) and Andriushchenko et al. (2023, "A modern
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

The model is evaluated at ``w + c * u`` by a functional call on flat parameters
(:class:`curvature.risk.EmpiricalRisk`, one pass over the data per evaluation), so its
weights and buffers are never written; it runs in eval mode (batch norm uses its running
statistics), its train flags restored. :func:`curvature.pipeline.analyze` computes both
cases on the training split (metric ``"sharpness"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from curvature.errors import NonFiniteLossError

__all__ = ["SharpnessResult", "adaptive_sharpness", "risk_sharpness"]


@dataclass(frozen=True)
class SharpnessResult:
    """Adaptive sharpness of one model on one dataset.

    Attributes:
        kind: ``"worst"`` or ``"average"``.
        value: the sharpness (loss units): best ascent gain for ``"worst"`` (a lower
            bound of the maximum), Monte-Carlo mean gain for ``"average"``.
        stderr: standard error of the Monte-Carlo mean (``"average"``; 0 for ``"worst"``).
        base_loss: ``L(w)`` on the data.
        rho: radius of the ball in the scaled coordinates ``u``.
        eta: offset of the scale ``c = |w| + eta``.
        evaluations: loss evaluations spent (passes over the data; for ``"worst"``,
            ``steps`` of them with a gradient).
        steps: ascent steps (``"worst"``) or Gaussian draws (``"average"``).
    """

    kind: str
    value: float
    stderr: float
    base_loss: float
    rho: float
    eta: float
    evaluations: int
    steps: int = 0


def adaptive_sharpness(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batch: Any,
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
        model: the network, read only: it is evaluated at perturbed weights by a
            functional call (:class:`curvature.risk.EmpiricalRisk`), so its weights and
            buffers are never written; it runs in eval mode, its train flags restored.
        loss_fn: ``loss_fn(outputs, targets)``, a scalar (mean over the batch).
        batch: one ``(inputs, targets)`` batch, a list of batches or a re-iterable such
            as a DataLoader; inputs may be tensors, dicts (HF ``BatchEncoding``) or
            tuples of them (:mod:`curvature.batches`). Over several batches ``L`` is the
            batch-size weighted mean of the batch losses -- the dataset loss whose
            Hessian :class:`curvature.HessianOperator` takes; batches of different
            shapes (padded sequences of different lengths) are never concatenated.
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
            trainable parameters, or a non-finite loss at ``w`` or at a perturbed point
            (``rho`` too large for the model).
    """
    from curvature.risk import EmpiricalRisk

    check_settings(rho, kind, steps, samples, eta)
    risk = EmpiricalRisk(model, loss_fn, batch)
    return risk_sharpness(risk, rho=rho, kind=kind, steps=steps, samples=samples, eta=eta,
                          seed=seed)


def check_settings(rho: float, kind: str, steps: int, samples: int, eta: float) -> None:
    """Raise ``ValueError`` naming the first bad argument of :func:`adaptive_sharpness`."""
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a positive finite number, got {rho!r}")
    if kind not in ("worst", "average"):
        raise ValueError(f"kind must be 'worst' or 'average', got {kind!r}")
    if int(steps) < 1 or int(samples) < 2:
        raise ValueError(f"steps must be >= 1 and samples >= 2, got {steps!r}, {samples!r}")
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")


def risk_sharpness(risk: Any, *, rho: float, kind: str = "worst", steps: int = 10,
                   samples: int = 20, eta: float = 0.0, seed: int = 0) -> SharpnessResult:
    """:func:`adaptive_sharpness` of an :class:`curvature.risk.EmpiricalRisk` (its
    parameters ``w0``, data and loss), e.g. the one a :class:`curvature.HessianOperator`
    already holds (``op.risk``), so its moved or kept batches are reused."""
    check_settings(rho, kind, steps, samples, eta)
    w0 = risk.w0
    scale = w0.abs() + eta
    gen = torch.Generator().manual_seed(int(seed))
    try:
        base = float(loss_at(risk, w0))
    except NonFiniteLossError as e:
        raise ValueError(f"the loss at w is non-finite ({e}); sharpness is undefined") from None
    try:
        if kind == "average":
            return _average(risk, w0, scale, float(rho), int(samples), gen, base, float(eta))
        return _worst(risk, w0, scale, float(rho), int(steps), gen, base, float(eta))
    except NonFiniteLossError as e:
        raise ValueError(
            f"the loss at a perturbed point is non-finite ({e}): rho = {rho:g} is too large "
            "for this model; use a smaller rho") from None


def _draw(risk: Any, gen: torch.Generator) -> Tensor:
    """A standard Gaussian ``Tensor[n]``, drawn per parameter tensor on the CPU in the
    risk's dtype (the same numbers as a per-tensor draw of the model's parameters)."""
    parts = [torch.randn(s, generator=gen, dtype=risk.dtype) for s in risk.shapes]
    return torch.cat([p.reshape(-1) for p in parts]).to(risk.device)


def loss_at(risk: Any, w: Tensor) -> Tensor:
    """Dataset loss at flat ``w`` (one pass over the data, no graph)."""

    def step(_: int, batch: Any) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            loss = risk.batch_loss(w, batch)
        return loss.detach().reshape(1), loss

    total = torch.zeros(1, dtype=risk.dtype, device=risk.device)
    return risk.data.accumulate(step, total)[0]


def _average(risk, w0, scale, rho, samples, gen, base, eta) -> SharpnessResult:
    gains = []
    for _ in range(samples):
        u = rho * _draw(risk, gen)
        gains.append(float(loss_at(risk, w0 + scale * u)) - base)
    g = torch.tensor(gains, dtype=torch.float64)
    return SharpnessResult("average", float(g.mean()), float(g.std() / math.sqrt(samples)),
                           base, rho, eta, samples + 1, samples)


def _worst(risk, w0, scale, rho, steps, gen, base, eta) -> SharpnessResult:
    u = _draw(risk, gen)
    u = u * (rho / 10 / float(u.norm()))
    best = 0.0  # u = 0 is in the ball: the maximum gain is >= 0
    evals = 1
    for i in range(steps + 1):
        w = w0 + scale * u
        if i == steps:
            best = max(best, float(loss_at(risk, w)) - base)
            evals += 1
            break
        loss, grad = risk.loss_and_gradient(w)
        evals += 1
        best = max(best, float(loss) - base)
        g = scale * grad  # d L(w + c u) / d u
        gn = float(g.norm())
        if gn == 0.0 or not math.isfinite(gn):
            break
        u = u + (rho / gn) * g
        un = float(u.norm())
        if un > rho:
            u = u * (rho / un)
    return SharpnessResult("worst", best, 0.0, base, rho, eta, evals, steps)
