"""Statistics over seeds: means with Student-t confidence half-widths, and their text."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["mean_ci", "fmt_pm", "verdict"]


def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean, sample std, Student-t ``level`` confidence half-width, and ``n`` over the
    finite entries (NaN entries -- diverged runs -- are counted in ``n_failed``)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    n = finite.size
    out = {"n": n, "n_failed": int(v.size - n)}
    if n == 0:
        return {**out, "mean": math.nan, "std": math.nan, "ci": math.nan}
    std = float(finite.std(ddof=1)) if n > 1 else math.nan
    ci = float(stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    return {**out, "mean": float(finite.mean()), "std": std, "ci": ci}


def fmt_pm(mean: float, spread: float, digits: int = 3) -> str:
    """``"1.23 ± 0.04"`` with ``digits`` significant digits (``"n/a"`` for NaN)."""
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(spread):
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {spread:.2g}"


def verdict(held: bool, partly: bool) -> str:
    """The word for a claim's outcome: ``"held"`` when ``held``, else ``"held only partly"``
    when ``partly``, else ``"did not hold"``."""
    return "held" if held else "held only partly" if partly else "did not hold"
