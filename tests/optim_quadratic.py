"""The quadratic ``0.5 (w - c)^T A (w - c)`` the optimizer trajectory tests run on
(numpy float64 references against torch parameters split into two param groups)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def make_quadratic(n: int, seed: int = 0, *, diagonal: bool = False, indefinite: bool = False):
    """``A`` (n x n symmetric, eigenvalues spread over [0.3, 4], two made negative with
    ``indefinite``), the minimiser ``c`` and a start ``w0`` -- numpy float64."""
    rng = np.random.default_rng(seed)
    eig = np.linspace(0.3, 4.0, n)
    if indefinite:
        eig[:2] = [-0.5, -0.2]
    if diagonal:
        a = np.diag(rng.permutation(eig))
    else:
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        a = (q * eig) @ q.T
        a = (a + a.T) / 2
    return a, rng.standard_normal(n), rng.standard_normal(n)


class QuadraticProblem:
    """The quadratic on parameters of ``shapes``: the first two in one param group, the
    rest in another; ``calls`` counts closure evaluations."""

    def __init__(self, a, c, w0, shapes, *, graph: bool = False):
        self.a = torch.tensor(a)
        self.c = torch.tensor(c)
        chunks = torch.tensor(w0).split([math.prod(s) for s in shapes])
        self.params = [nn.Parameter(x.reshape(s).clone()) for x, s in zip(chunks, shapes)]
        self.graph = graph
        self.calls = 0

    @property
    def groups(self):
        return [{"params": self.params[:2]}, {"params": self.params[2:]}]

    def w(self) -> np.ndarray:
        return torch.cat([p.detach().reshape(-1) for p in self.params]).numpy().copy()

    def closure_for(self, opt):
        def closure():
            opt.zero_grad()
            self.calls += 1
            r = torch.cat([p.reshape(-1) for p in self.params]) - self.c
            loss = 0.5 * r @ (self.a @ r)
            loss.backward(create_graph=self.graph)
            return loss

        return closure

    def run(self, opt, steps: int):
        """``steps`` optimizer steps: the iterates ``[steps, n]`` and each step's estimates."""
        closure = self.closure_for(opt)
        ws, ests = [], []
        for _ in range(steps):
            opt.step(closure)
            ws.append(self.w())
            ests.append({k: (v if isinstance(v, float) else v.detach().numpy().copy())
                         for k, v in opt.estimates.items()})
        return np.array(ws), ests
