"""Frozen result records of :func:`curvature.block_spectra`: one :class:`BlockSpectrum`
per block of the block-diagonal Hessian, gathered in a :class:`BlockSpectra` that
converts to a pandas DataFrame."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from curvature.results import SpectralDensity

__all__ = ["BlockSpectra", "BlockSpectrum"]


@dataclass(frozen=True, eq=False)
class BlockSpectrum:
    """Extreme eigenvalues, trace and (optionally) density of one diagonal block ``H_bb``.

    Attributes
    ----------
    name : str
        The block's name (module, layer, parameter or group name).
    params : tuple of str
        Its parameters (canonical names, flat-vector order).
    num_params : int
        ``n_b``, the block's dimension.
    top, bottom : np.ndarray[k], float64
        The ``k`` largest eigenvalues (descending) and the ``k`` smallest (ascending) of
        ``H_bb`` (Ritz values; fewer when ``n_b < k``).
    top_residuals, bottom_residuals : np.ndarray[k], float64
        ``||H_bb v - theta v||`` of each Ritz pair (eigenvalue units): an eigenvalue of
        ``H_bb`` lies within it of ``theta``.
    converged_max, converged_min : bool
        Every pair at that end met ``residual <= tol * max(|theta|, 1e-3 ||H_bb||_est)``.
    lanczos_steps : int
        Products of this block spent on its Lanczos run.
    stop_reason : str
        ``"converged"``, ``"invariant"`` (the Krylov space closed: exact) or ``"budget"``.
    trace, trace_stderr : float
        Hutchinson estimate of ``tr(H_bb)`` from ``trace_probes`` Rademacher probes of
        the block, and its standard error (0 for a one-parameter block, where every probe
        is exact; NaN for a single probe; both NaN without probes).
    trace_probes : int
    density : SpectralDensity or None
        Stochastic Lanczos quadrature of ``H_bb`` (``density=True``).
    """

    name: str
    params: tuple[str, ...]
    num_params: int
    top: np.ndarray
    bottom: np.ndarray
    top_residuals: np.ndarray
    bottom_residuals: np.ndarray
    converged_max: bool
    converged_min: bool
    lanczos_steps: int
    stop_reason: str
    trace: float
    trace_stderr: float
    trace_probes: int
    density: SpectralDensity | None = None

    @property
    def lambda_max(self) -> float:
        """Largest eigenvalue of ``H_bb``."""
        return float(self.top[0])

    @property
    def lambda_min(self) -> float:
        """Smallest eigenvalue of ``H_bb``."""
        return float(self.bottom[0])

    @property
    def converged(self) -> bool:
        return self.converged_max and self.converged_min


@dataclass(frozen=True, eq=False)
class BlockSpectra:
    """Per-block spectra of the block-diagonal Hessian (:func:`curvature.block_spectra`).

    Attributes
    ----------
    blocks : tuple of BlockSpectrum
        In partition order (``result["name"]`` finds one, iteration goes through them).
    num_passes : int
        Multi-column products made: each is one pass over the data for every block.
    num_matvecs : int
        Columns multiplied in all (a product of ``c`` columns counts ``c``).
    converged : bool
        Every block's extreme eigenvalues converged.
    tol : float
    message : str
        Which blocks did not converge, if any.
    product_error : float
        The operator's ``product_error`` (0.0 for exact products): with
        ``method="fd"``/``"fd-central"`` it is added to every residual, and an end
        counts as converged only if that bound meets its threshold.
    """

    blocks: tuple[BlockSpectrum, ...]
    num_passes: int
    num_matvecs: int
    converged: bool
    tol: float
    message: str = ""
    product_error: float = 0.0

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[BlockSpectrum]:
        return iter(self.blocks)

    def __getitem__(self, key: str | int) -> BlockSpectrum:
        if isinstance(key, int):
            return self.blocks[key]
        for b in self.blocks:
            if b.name == key:
                return b
        raise KeyError(f"no block named {key!r}; blocks: {self.names}")

    def to_dataframe(self):
        """A ``pandas.DataFrame``, one row per block: ``block``, ``num_params``,
        ``lambda_max``, ``lambda_max_residual``, ``lambda_max_converged``, ``lambda_min``,
        ``lambda_min_residual``, ``lambda_min_converged``, ``trace``, ``trace_stderr``,
        ``trace_probes``, ``lanczos_steps``, ``stop_reason``."""
        import pandas as pd

        rows = [{
            "block": b.name,
            "num_params": b.num_params,
            "lambda_max": b.lambda_max,
            "lambda_max_residual": float(b.top_residuals[0]),
            "lambda_max_converged": b.converged_max,
            "lambda_min": b.lambda_min,
            "lambda_min_residual": float(b.bottom_residuals[0]),
            "lambda_min_converged": b.converged_min,
            "trace": b.trace,
            "trace_stderr": b.trace_stderr,
            "trace_probes": b.trace_probes,
            "lanczos_steps": b.lanczos_steps,
            "stop_reason": b.stop_reason,
        } for b in self.blocks]
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return (
            f"BlockSpectra({len(self.blocks)} blocks, converged={self.converged}, "
            f"num_passes={self.num_passes}, num_matvecs={self.num_matvecs})"
        )
