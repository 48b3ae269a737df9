"""Finite-difference Hessian-vector products with a step and an error estimate per column.

For a unit direction ``v`` and a step ``s`` (a distance in parameter space) the
difference quotients of the dataset gradient ``g`` are

* forward: ``D(s) = (g(w + s v) - g(w)) / s = H v + c_1 s + c_2 s^2 + ...``
* central: ``D(s) = (g(w + s v) - g(w - s v)) / (2 s) = H v + c_2 s^2 + c_4 s^4 + ...``

Every column is evaluated at two steps ``s`` and ``s/2`` and the pair is combined
by Richardson extrapolation, which cancels the leading truncation term:

* forward: ``R = 2 D(s/2) - D(s)`` (error ``O(s^2)``), 2 gradients per column,
* central: ``R = (4 D(s/2) - D(s)) / 3`` (error ``O(s^4)``), 4 gradients per column.

The same pair estimates the error of ``R`` (in eigenvalue units, ``||R - H v||``):

``err = 3 ||D(s) - D(s/2)|| + 2 * noise(R) + u ||R||``

``||D(s) - D(s/2)||`` measures the truncation error: for a smooth loss it is 3x
(central) or 1x (forward) the error of ``D(s/2)``, itself above ``R``'s. The factor 3
keeps the estimate above ``R``'s error also when the gradient jumps within the step
(a ReLU or max-pool kink crossed inside ``[0, s/2]`` makes ``R``'s error 7/3
(central) or 3 (forward) times the difference); measured on smooth models the
estimate is then 2-9x the true error. Kinks make float32 products poor: 70% to 8x
relative error measured on a small ReLU/max-pool CNN, and an estimate that says so.

``noise(R)`` is the roundoff the quotients amplify: ``sigma`` (the measured roundoff
of one computed dataset gradient, see :func:`gradient_noise`) times the norm of ``R``'s weights on the gradients,
``sqrt(16*2 + 2/4)/3 / s = 1.9 sigma / s`` (central) and ``sqrt(16 + 1 + 9) / s
= 5.1 sigma / s`` (forward, ``g(w)`` shared); the factor 2 covers the spread of
the noise estimate. The roundoff of a gradient summed over many terms is not a
fixed multiple of ``u ||g||`` (measured 2.9x on a small float32 GPT-2; it grows with
the number and size of the cancelling terms), which is why it is measured (a
difference-table estimate in the spirit of More & Wild, SIAM J. Sci. Comput. 2011).

The step balances the two parts of ``err = a s^p + b / s`` (``p = 2`` central,
``1`` forward; ``a`` from the part of ``||D(s) - D(s/2)||`` above twice its expected
noise, ``b`` from ``sigma``): the first pass uses the step the previous product
settled on (at first the classical ``u^(1/3) (1 + ||w||)`` / ``u^(1/2) (1 + ||w||)``,
which is also the largest step ever used); a column whose step is more than a
factor 2 from the minimiser ``s* = (b / (p a))^(1 / (p + 1))`` implied by its own
pair is redone at ``s*`` (at most two more passes; never below ``10 u (1 + ||w||)``,
where rounding ``w + s v`` would distort the step by 10%). A pair whose truncation
is lost in the noise is kept and lets the next product try a 1.25x longer step.
A product therefore costs 2 (forward) or 4 (central) gradients per column, up to 3
times that for columns whose step had to be adapted, plus, once per operator, 4
gradients for ``sigma`` (and ``g(w)`` for forward). Measured over a Lanczos run on a
small GPT-2: 2.5 and 5.6 gradients per product in float32, 2.8 and 4.8 in float64
(the single-step scheme this replaces cost 1 and 2, with no error estimate).

Directions are first projected off the padding rows of embeddings
(:func:`padding_mask`): autograd's gradient ignores those rows, so differences
along them would add a term that exact products omit and no step pair reveals.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import Tensor, nn

from curvature.risk import EmpiricalRisk

__all__ = ["FiniteDifferences", "MAX_PASSES", "start_step"]

MAX_PASSES = 3
"""Passes over the data at most per product (the first plus two step corrections)."""

_JUMP = 3.0
"""``||R - H v|| <= 3 ||D(s) - D(s/2)||`` also when the gradient jumps (a kink) within the step."""

_NOISE_GAIN = {True: math.sqrt(32.5) / 3, False: math.sqrt(26.0)}
"""``noise(R) * s / sigma`` for central (``True``) and forward (``False``) pairs."""

_DIFF_GAIN = {True: math.sqrt(2.5), False: math.sqrt(6.0)}
"""``noise(D(s) - D(s/2)) * s / sigma`` for central and forward pairs."""


def start_step(risk: EmpiricalRisk, central: bool) -> float:
    """Classical step along a unit vector: ``c (1 + ||w||)``, ``c = u^(1/3)`` or ``u^(1/2)``.

    Also the largest step the adaptive scheme takes (``u`` = ``finfo(dtype).eps``).
    """
    u = torch.finfo(risk.dtype).eps
    c = u ** (1 / 3) if central else math.sqrt(u)
    return c * (1.0 + float(torch.linalg.vector_norm(risk.w0)))


def padding_mask(risk: EmpiricalRisk) -> Tensor | None:
    """``Tensor[n]`` of ones with zeros on the padding rows of embeddings, or ``None``.

    Autograd reports a zero gradient for the ``padding_idx`` row of an ``nn.Embedding``
    (or ``nn.EmbeddingBag``) although the loss depends on it when the padding token
    occurs in the data: the computed gradient is ``P grad L`` (``P`` zeroes those rows),
    whose Jacobian ``P H`` is not symmetric, while double backward returns ``P H P``.
    Differences of gradients along ``P v`` instead of ``v`` give ``P H P v``, the
    symmetric operator of the exact products (padding rows act as frozen parameters);
    along ``v`` they differ from it by ``P H (I - P) v`` at any step, an error no step
    pair can see (5.7e-4 relative on a random direction of a small BERT whose data hold
    the pad token). Weights tied to other modules (a masked-LM decoder) are left as
    they are: there the gradient drops only the embedding's share of the padding row,
    and no direction makes differences match double backward (8% relative measured on a
    tied small BERT masked LM, float64). Padding tokens only at attention-masked
    positions whose loss is ignored do not reach the loss: no difference either way.
    """
    owners: dict[int, int] = {}
    for mod in risk.model.modules():
        for t in mod.parameters(recurse=False):
            owners[id(t)] = owners.get(id(t), 0) + 1
    params = dict(risk.model.named_parameters())
    offsets = dict(zip(risk.names, [0, *itertools.accumulate(risk.numels)]))
    mask = None
    for mod in risk.model.modules():
        pad = getattr(mod, "padding_idx", None)
        if not isinstance(mod, (nn.Embedding, nn.EmbeddingBag)) or pad is None:
            continue
        name = next((k for k, t in params.items() if t is mod.weight), None)
        if name not in offsets or owners.get(id(mod.weight), 0) != 1:
            continue
        if mask is None:
            mask = torch.ones(risk.num_params, dtype=risk.dtype, device=risk.device)
        dim = mod.weight.shape[1]
        start = offsets[name] + (pad % mod.weight.shape[0]) * dim
        mask[start : start + dim] = 0
    return mask


class FiniteDifferences:
    """Finite-difference ``H V`` of ``risk`` from gradients only (see the module doc).

    Keeps, per operator, the measured gradient roundoff (:meth:`gradient_noise`) and
    the step the last forward / central product settled on (:attr:`steps`).
    """

    def __init__(self, risk: EmpiricalRisk) -> None:
        self.risk = risk
        self.steps: dict[str, float] = {}
        """Step (on a unit vector) the last product settled on, per ``"forward"``/``"central"``."""
        self._noise: float | None = None

    @functools.cached_property
    def mask(self) -> Tensor | None:
        """``Tensor[n]`` zeroing embeddings' padding rows in every direction, or ``None``
        (:func:`padding_mask`; built on the first product, not for exact operators)."""
        return padding_mask(self.risk)

    def default_eps(self, V: Tensor, central: bool) -> Tensor:
        """Largest (and first) step per column of ``V``, on ``v``: ``c (1 + ||w||) / ||v||``,
        ``c = u^(1/3)`` (central) or ``u^(1/2)`` (forward); the step used is adapted."""
        scale = start_step(self.risk, central)
        norms = torch.linalg.vector_norm(V, dim=0)
        return torch.where(norms > 0, scale / norms, torch.ones_like(norms))

    def gradient_noise(self) -> float:
        """Roundoff ``sigma`` of one computed dataset gradient (a vector norm), measured once.

        The fourth difference ``g_-2 - 4 g_-1 + 6 g_0 - 4 g_1 + g_2`` of gradients at
        ``w + j delta z`` (``z`` a fixed random unit vector, ``delta = 1e3 u (1 + ||w||)``,
        enough to change every parameter by many units in the last place) has a smooth
        part of order ``delta^4`` and a noise part of variance ``70 sigma^2`` per
        coordinate: ``sigma = ||fourth difference|| / sqrt(70)``. The rounding of the
        points ``w + j delta z`` themselves is part of it, as in the products.
        Costs 4 gradients (``g_0`` is the cached ``g(w)``).
        """
        if self._noise is None:
            risk = self.risk
            gen = torch.Generator(device=risk.device).manual_seed(0)
            z = torch.randn(risk.num_params, generator=gen, dtype=risk.dtype, device=risk.device)
            z /= torch.linalg.vector_norm(z)
            u = torch.finfo(risk.dtype).eps
            delta = 1e3 * u * (1.0 + float(torch.linalg.vector_norm(risk.w0)))
            W = torch.stack([risk.w0 + j * delta * z for j in (-2, -1, 1, 2)], dim=1)
            G = risk.gradients_at(W, desc="fd-hvp").double()
            g0 = risk.gradient().double()
            d4 = G[:, 0] - 4 * G[:, 1] + 6 * g0 - 4 * G[:, 2] + G[:, 3]
            self._noise = float(torch.linalg.vector_norm(d4)) / math.sqrt(70.0)
        return self._noise

    def _pairs(
        self, U: Tensor, s: Tensor, central: bool, progress: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Quotients ``D(s)``, ``D(s/2)`` and Richardson ``R`` for unit columns ``U`` (steps ``s``)."""
        risk = self.risk
        w0 = risk.w0.unsqueeze(1)
        k = U.shape[1]
        if central:
            offsets = torch.cat([U * s, -U * s, U * (s / 2), -U * (s / 2)], dim=1)
            G = risk.gradients_at(w0 + offsets, progress, desc="fd-hvp")
            gp, gm, gp2, gm2 = G[:, :k], G[:, k : 2 * k], G[:, 2 * k : 3 * k], G[:, 3 * k :]
            d1 = (gp - gm) / (2 * s)
            d2 = (gp2 - gm2) / s
            return d1, d2, (4 * d2 - d1) / 3
        g0 = risk.gradient().unsqueeze(1)
        G = risk.gradients_at(w0 + torch.cat([U * s, U * (s / 2)], dim=1), progress, desc="fd-hvp")
        d1 = (G[:, :k] - g0) / s
        d2 = (G[:, k:] - g0) / (s / 2)
        return d1, d2, 2 * d2 - d1

    def products(
        self,
        V: Tensor,
        eps: float | None,
        central: bool,
        progress: bool = False,
        max_bytes: float = 2**28,
    ) -> tuple[Tensor, Tensor]:
        """``H V`` by extrapolated finite differences and each column's error estimate.

        ``V: Tensor[n, k]``. Returns the products ``Tensor[n, k]`` and ``Tensor[k]``
        (float64, CPU): the estimated ``||(H V)_j - H v_j|| / ||v_j||`` (eigenvalue
        units; 0 for a zero column). Padding rows of embeddings are left out of ``V``
        (:func:`padding_mask`), as in exact products. ``eps`` fixes the step on ``v`` (the points are
        ``w +- eps v`` and ``w +- eps v / 2``) and skips the adaptation. Columns go
        through the data in groups whose evaluation points and gradients (about three
        ``n``-vectors per point) fit in ``max_bytes``.
        """
        k = V.shape[1]
        full = torch.linalg.vector_norm(V, dim=0)
        if self.mask is not None:
            V = V * self.mask.unsqueeze(1)
        norms = torch.linalg.vector_norm(V, dim=0)
        out = torch.zeros_like(V)
        err = torch.zeros(k, dtype=torch.float64)
        cols = (norms > 0).nonzero().squeeze(1)
        per_column = 3 * (4 if central else 2) * V.shape[0] * V.element_size()
        group = max(1, int(max_bytes // per_column))
        for first in range(0, len(cols), group):
            c = cols[first : first + group]
            hv, e = self._block(V[:, c] / norms[c], eps, central, progress, norms[c])
            out[:, c] = hv * norms[c]
            err[c.cpu()] = e * (norms[c] / full[c]).double().cpu()
        return out, err

    def _block(
        self, U: Tensor, eps: float | None, central: bool, progress: bool, norms: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Extrapolated ``H u`` and error estimates for unit columns ``U`` (see module doc)."""
        m = U.shape[1]
        cap = start_step(self.risk, central)
        u = torch.finfo(self.risk.dtype).eps
        # below this step the rounding of w + s v (about u ||w||) is over 10% of s v
        floor = 10 * u * (1.0 + float(torch.linalg.vector_norm(self.risk.w0)))
        key = "central" if central else "forward"
        memory = self.steps
        if eps is not None:
            s = float(eps) * norms.to(torch.float64).cpu()
        else:
            s = torch.full((m,), min(memory.get(key, cap), cap), dtype=torch.float64)
        sigma = max(self.gradient_noise(), u * float(torch.linalg.vector_norm(self.risk.gradient())))
        gain = 2 * _NOISE_GAIN[central] * sigma
        # the reported error is ~ a s^p + b / s: b collects every noise term it contains
        b = (_JUMP * _DIFF_GAIN[central] + 2 * _NOISE_GAIN[central]) * sigma
        p = 2 if central else 1
        out = torch.empty_like(U)
        err = torch.empty(m, dtype=torch.float64)
        best = torch.empty(m, dtype=torch.float64)
        pending = torch.arange(m)
        for attempt in range(MAX_PASSES):
            sp = s[pending]
            d1, d2, R = self._pairs(U[:, pending], sp.to(self.risk.dtype).to(U.device), central, progress)
            diff = torch.linalg.vector_norm((d1 - d2).double(), dim=0).cpu()
            size = torch.linalg.vector_norm(R.double(), dim=0).cpu()
            e = _JUMP * diff + gain / sp + u * size
            # truncation seen above twice the noise of the difference; none seen: the
            # step may grow (1.25x for the next product)
            seen = (diff - 2 * _DIFF_GAIN[central] * sigma / sp).clamp_min(0)
            a = _JUMP * seen / sp**p
            s_opt = torch.where(
                a > 0, (b / (p * a.clamp_min(1e-300))) ** (1 / (p + 1)), 1.25 * sp
            ).clamp(min=floor, max=cap)
            ok = (sp <= 2 * s_opt) & ((sp >= s_opt / 2) | (sp >= cap))
            if eps is not None or attempt == MAX_PASSES - 1:
                ok = torch.ones_like(ok)
            done = pending[ok]
            out[:, done.to(U.device)] = R[:, ok.to(U.device)]
            err[done] = e[ok]
            best[pending] = s_opt
            s[pending] = s_opt
            pending = pending[~ok]
            if len(pending) == 0:
                break
        if eps is None:
            memory[key] = float(best.median())
        return out, err
