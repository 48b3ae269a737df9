"""Does SGD's gradient noise covariance align with the Gauss-Newton matrix?

``sam-hessian-sgdhess.md`` builds ExtendedSGDHess on the statement that "the noise variance
in SGD aligns well with matrix Gauss-Newton G". At an SGD solution ``w`` of a small
network with ``P`` parameters and ``N`` examples this computes, exactly:

- the per-example gradient covariance ``Sigma = (1/N) sum_i g_i g_i^T - gbar gbar^T``
  (``P x P``; the covariance of a one-example stochastic gradient);
- the Gauss-Newton matrix of the cross-entropy, ``G = (1/N) sum_i J_i^T A_i J_i`` with
  ``J_i`` the ``C x P`` Jacobian of the logits and ``A_i = diag(p_i) - p_i p_i^T``,
  formed as ``B^T B / N`` from ``B_i = S_i^T J_i``, ``S_i = diag(sqrt p_i) - p_i sqrt(p_i)^T``
  (``S_i S_i^T = A_i``);

and the alignment ``cos(Sigma, G) = <Sigma, G>_F / (||Sigma||_F ||G||_F)``. The reference
is the same matrix with its eigenvectors scrambled, ``Q G Q^T`` for a Haar-random
orthogonal ``Q`` (same spectrum, no relation to ``Sigma``'s directions): the claim is that
``cos(Sigma, G)`` is larger, paired by seed. The isotropic reference ``cos(Sigma, I)`` is
reported too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import curvature as cv
from analysis.minima.config import WORKLOADS
from analysis.minima.runs import train_run


def _flat_jacobians(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-example Jacobian of the logits, ``[N, C, P]`` (float64)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach().double() for n, p in model.named_parameters()}
    model = model.double()

    def f(prm, xi):
        return functional_call(model, prm, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x.double())
    model.float()
    return torch.cat([jac[n].reshape(x.shape[0], jac[n].shape[1], -1) for n in names], dim=2)


def alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              seed: int = 0) -> dict[str, Any]:
    """``cos(Sigma, G)``, ``cos(Sigma, Q G Q^T)`` and ``cos(Sigma, I)`` at the model's
    weights on ``(x, y)`` (see the module docstring); float64 throughout."""
    model.eval()
    jac = _flat_jacobians(model, x)  # [N, C, P]
    with torch.no_grad():
        logits = model.double()(x.double())
        model.float()
    p = torch.softmax(logits, dim=1)  # [N, C]
    resid = p - torch.nn.functional.one_hot(y, p.shape[1]).double()
    grads = torch.einsum("nc,ncp->np", resid, jac)  # per-example CE gradients
    n = grads.shape[0]
    gbar = grads.mean(0)
    sigma = grads.T @ grads / n - torch.outer(gbar, gbar)
    sq = p.sqrt()
    s = torch.diag_embed(sq) - p.unsqueeze(2) * sq.unsqueeze(1)  # S_i, S_i S_i^T = A_i
    b = torch.einsum("ncd,ncp->ndp", s, jac).reshape(-1, jac.shape[2])
    ggn = b.T @ b / n
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(ggn.shape, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # Haar
    rotated = q @ ggn @ q.T

    def cos(a, c):
        return float((a * c).sum() / (a.norm() * c.norm()))

    eye = torch.eye(ggn.shape[0], dtype=torch.float64)
    return {"cos_sigma_ggn": cos(sigma, ggn), "cos_sigma_rotated": cos(sigma, rotated),
            "cos_sigma_identity": cos(sigma, eye), "examples": n,
            "params": int(ggn.shape[0]), "train_loss_here": float(
                torch.nn.functional.cross_entropy(logits, y))}


def run(seeds: int, lr: float, examples: int, epochs_scale: float = 1.0) -> list[dict]:
    """SGD on digits-mlp (the minima study's budget, ``lr``), then :func:`alignment` on
    the first ``examples`` training examples; one row per seed."""
    wl = WORKLOADS["digits-mlp"]
    ds = cv.load_dataset(wl.data)
    rows = []
    for seed in range(seeds):
        model, info = train_run(wl, (ds.x_train, ds.y_train), "SGD", lr, seed,
                                wl.epochs * epochs_scale)
        row = {"workload": "digits-mlp", "optimizer": "SGD", "lr": lr, "seed": seed,
               "status": info["status"]}
        if info["status"] == "ok":
            row.update(alignment(model, ds.x_train[:examples], ds.y_train[:examples], seed))
        else:
            row.update(cos_sigma_ggn=math.nan, cos_sigma_rotated=math.nan)
        rows.append(row)
    return rows
