"""Stopping rules for lambda_max by single-vector Lanczos, on designed spectra with known
eigenvalues: how many products each rule needs and how often it stops with an error
beyond its tolerance.

Run: ``python -m analysis.stopping_rules [--seeds 40] [--n 1000]``

Rules (``theta_i`` Ritz values, ``r_i`` their residuals, relative tolerance ``tol``):

* ``residual``: ``r_1 <= tol |theta_1|`` (curvature's rule; ``|lambda - theta| <= r``
  holds for *some* eigenvalue);
* ``kato-temple``: ``min(r_1, r_1^2 / delta) <= tol |theta_1|`` with the gap to the rest of
  the spectrum estimated from the Ritz values, ``delta = theta_1 - theta_2 - r_2`` (Kato-
  Temple; Saad, *Numerical Methods for Large Eigenvalue Problems*, Thm. 3.8 / Parlett
  ch. 11): an eigenvalue error bound, valid when ``delta`` is a true lower bound of the gap.

Every spectrum has ``lambda_max = 1`` and a bulk; the ``pair`` spectra add a second
eigenvalue ``1 - eps`` that a single start vector cannot separate from the first for many
steps. A stop counts as a failure when ``|lambda_max - theta_1| > tol``. Plain float64
Lanczos with full reorthogonalisation, independent of the package's implementation
(which uses the ``residual`` rule for ``k = 1``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np


def lanczos_history(lam: np.ndarray, rng: np.random.Generator,
                    steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(theta, r)`` after each step of Lanczos on ``diag(lam)`` from a Gaussian start,
    Ritz values descending with their residuals ``beta_j |s_ji|``."""
    n = len(lam)
    Q = np.zeros((n, steps + 1))
    q = rng.standard_normal(n)
    Q[:, 0] = q / np.linalg.norm(q)
    T = np.zeros((steps, steps))
    out = []
    for j in range(steps):
        w = lam * Q[:, j]
        for _ in range(2):  # classical Gram-Schmidt twice
            h = Q[:, : j + 1].T @ w
            w -= Q[:, : j + 1] @ h
            T[: j + 1, j] += h
        T[j, : j + 1] = T[: j + 1, j]
        beta = np.linalg.norm(w)
        theta, S = np.linalg.eigh(T[: j + 1, : j + 1])
        out.append((theta[::-1], (beta * np.abs(S[j, :]))[::-1]))
        if beta < 1e-14:
            break
        Q[:, j + 1] = w / beta
    return out


def error_bound(theta: np.ndarray, r: np.ndarray, rule: str) -> float:
    """The eigenvalue error bound of ``theta[0]`` that ``rule`` stops on."""
    if rule == "residual" or len(theta) < 2:
        return float(r[0])
    gap = theta[0] - theta[1] - r[1]
    return float(min(r[0], r[0] ** 2 / gap)) if gap > 0 else float(r[0])


def spectra(n: int, rng: np.random.Generator) -> dict[str, Callable[[float], np.ndarray]]:
    """Designed spectra (``lambda_max = 1``) by name, each a function of ``eps``."""
    return {
        "bulk [-0.2, 0.5]": lambda eps: np.r_[1.0, rng.uniform(-0.2, 0.5, n - 1)],
        "pair, bulk [-0.2, 0.5]": lambda eps: np.r_[1.0, 1 - eps, rng.uniform(-0.2, 0.5, n - 2)],
        "pair, bulk [-0.2, 0.9]": lambda eps: np.r_[1.0, 1 - eps, rng.uniform(-0.2, 0.9, n - 2)],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=40)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--tol", type=float, default=1e-3)
    args = p.parse_args(argv)
    rules = ("residual", "kato-temple")
    print(f"n = {args.n}, tol = {args.tol:g}, {args.seeds} seeds per row; "
          "per rule: mean products to stop, stops with error > tol")
    for name, make in spectra(args.n, np.random.default_rng(0)).items():
        for eps in (3e-3, 1e-2, 3e-2) if "pair" in name else (0.0,):
            cells = []
            for rule in rules:
                steps, fails = [], 0
                for seed in range(args.seeds):
                    lam = make(eps)
                    hist = lanczos_history(lam, np.random.default_rng(1000 + seed), 60)
                    for j, (theta, r) in enumerate(hist):
                        if error_bound(theta, r, rule) <= args.tol * abs(theta[0]):
                            steps.append(j + 1)
                            fails += abs(lam.max() - theta[0]) > args.tol * lam.max()
                            break
                cells.append(f"{rule}: {np.mean(steps):5.1f} products, {fails:2d} wrong")
            print(f"{name:24s} eps {eps:<6g} " + " | ".join(cells))


if __name__ == "__main__":
    main()
