"""analysis/minima/noise_alignment against per-example loops in float64."""

from __future__ import annotations

import torch
from torch import nn

from analysis.minima.noise_alignment import alignment


def test_alignment_matches_explicit_loops():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    res = alignment(net, x, y, seed=1)
    netd = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    netd.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    params = list(netd.parameters())
    grads, ggn = [], torch.zeros(sum(p.numel() for p in params), sum(p.numel() for p in params),
                                 dtype=torch.float64)
    for i in range(len(x)):
        xi = x[i:i + 1].double()
        out = netd(xi)
        loss = nn.functional.cross_entropy(out, y[i:i + 1])
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        rows = []
        for c in range(3):
            gc = torch.autograd.grad(netd(xi)[0, c], params)
            rows.append(torch.cat([g.reshape(-1) for g in gc]))
        jac = torch.stack(rows)
        p = torch.softmax(out[0], 0).detach()
        ggn += jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac
    g = torch.stack(grads)
    sigma = torch.cov(g.T, correction=0)
    ggn /= len(x)
    cos = float((sigma * ggn).sum() / (sigma.norm() * ggn.norm()))
    assert abs(res["cos_sigma_ggn"] - cos) < 1e-10
    eye = torch.eye(len(sigma), dtype=torch.float64)
    assert abs(res["cos_sigma_identity"] - float(sigma.trace() / (sigma.norm() * eye.norm()))) \
        < 1e-10
    assert -1 <= res["cos_sigma_rotated"] <= 1
    assert next(net.parameters()).dtype == torch.float32  # model restored to float32
