"""Statistics over seeds, shared by every report.

Means with Student-t confidence half-widths and their text (:func:`mean_ci`,
:func:`fmt_pm`); paired comparisons of two configurations by seed (:func:`paired_comparison`:
effect as a mean log ratio, t or bootstrap confidence interval, paired t and Wilcoxon
signed-rank p-values); Benjamini-Hochberg adjustment over every test of a report
(:func:`benjamini_hochberg`); and the words of a verdict (:func:`paired_verdict`, and
:func:`verdict` for the older hand-made rules).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "VERDICTS",
    "PairedComparison",
    "benjamini_hochberg",
    "fmt_pm",
    "mean_ci",
    "paired_comparison",
    "paired_verdict",
    "verdict",
]


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


# ------------------------------------------------------------------ paired comparisons

@dataclass(frozen=True)
class PairedComparison:
    """Paired comparison of ``a`` against ``b`` over seeds (see :func:`paired_comparison`).

    Attributes:
        n: number of pairs used (pairs with a non-finite value are dropped).
        n_dropped: pairs dropped for a non-finite value (diverged runs).
        log: whether differences are of natural logs (then ``effect`` is a log ratio).
        effect: mean paired difference ``mean(f(a_i) - f(b_i))``, ``f = log`` or identity.
        ci_low, ci_high: ``level`` confidence interval of ``effect``.
        ci_method: ``"t"`` (Student t) or ``"bootstrap"`` (percentile bootstrap).
        level: confidence level of the interval, e.g. 0.95.
        p_ttest: two-sided p-value of the paired t-test of the differences
            (``scipy.stats.ttest_rel``); NaN when undefined (all differences zero).
        p_wilcoxon: two-sided p-value of the Wilcoxon signed-rank test of the
            differences (``scipy.stats.wilcoxon``, zero differences dropped, exact
            distribution for small n as scipy chooses); NaN when every difference is 0.
    """

    n: int
    n_dropped: int
    log: bool
    effect: float
    ci_low: float
    ci_high: float
    ci_method: str
    level: float
    p_ttest: float
    p_wilcoxon: float

    @property
    def ratio(self) -> float:
        """``exp(effect)``: the geometric mean of ``a_i / b_i`` (NaN unless ``log``)."""
        return math.exp(self.effect) if self.log else math.nan

    @property
    def ratio_ci(self) -> tuple[float, float]:
        """The confidence interval of :attr:`ratio` (``exp`` of the interval's ends)."""
        if not self.log:
            return (math.nan, math.nan)
        return (math.exp(self.ci_low), math.exp(self.ci_high))

    def p_value(self, test: str = "t") -> float:
        """The p-value of ``test``: ``"t"`` (paired t) or ``"wilcoxon"``."""
        if test not in ("t", "wilcoxon"):
            raise ValueError(f"test must be 't' or 'wilcoxon', got {test!r}")
        return self.p_ttest if test == "t" else self.p_wilcoxon


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    log: bool = True,
    level: float = 0.95,
    ci: str = "t",
    n_bootstrap: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Compare ``a`` with ``b`` paired by position (seed ``i`` of both configurations).

    The differences are ``d_i = log(a_i) - log(b_i)`` (``log=True``: a ratio effect, the
    right scale for curvatures and losses spanning orders of magnitude) or
    ``d_i = a_i - b_i``. ``effect = mean(d)``; positive means ``a`` is larger.

    Confidence interval of ``effect``: ``ci="t"`` gives ``mean(d) +- t_{n-1} s / sqrt(n)``
    (``t_{n-1}`` the ``(1 + level) / 2`` quantile, ``s`` the sample std); ``ci="bootstrap"``
    the percentile interval of the mean over ``n_bootstrap`` resamples of the pairs with
    replacement, drawn from ``numpy.random.default_rng(seed)``.

    Raises:
        ValueError: different lengths, fewer than 2 finite pairs, non-positive values
            with ``log=True``, a bad ``level``/``ci``/``n_bootstrap``.
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired (same length), got {x.size} and {y.size}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if ci not in ("t", "bootstrap"):
        raise ValueError(f"ci must be 't' or 'bootstrap', got {ci!r}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 finite pairs, got {n}")
    if log:
        if (x <= 0).any() or (y <= 0).any():
            raise ValueError("log=True needs positive values; use log=False for signed data")
        x, y = np.log(x), np.log(y)
    d = x - y
    mean = float(d.mean())
    if ci == "t":
        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
        low, high = mean - half, mean + half
    else:
        if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
            raise ValueError(f"n_bootstrap must be a positive integer, got {n_bootstrap!r}")
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, n, size=(n_bootstrap, n))].mean(axis=1)
        low, high = (float(q) for q in np.quantile(means, [0.5 - level / 2, 0.5 + level / 2]))
    with warnings.catch_warnings():
        # constant differences: scipy warns about precision loss (t = +-inf, p = 0) or,
        # when every difference is zero, returns NaN (t-test) and 1 (Wilcoxon)
        warnings.simplefilter("ignore", RuntimeWarning)
        p_t = float(stats.ttest_rel(x, y).pvalue)
        p_w = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else math.nan
    return PairedComparison(n=n, n_dropped=int((~keep).sum()), log=log, effect=mean,
                            ci_low=float(low), ci_high=float(high), ci_method=ci,
                            level=level, p_ttest=p_t, p_wilcoxon=p_w)


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate; Benjamini & Hochberg
    1995), in the input order.

    With the ``m`` finite p-values sorted, ``p_(1) <= ... <= p_(m)``, the adjusted value
    of rank ``i`` is ``min_{j >= i} min(1, m p_(j) / j)``: monotone in ``p`` and at most 1.
    Rejecting where the adjusted value is ``<= q`` controls the FDR at ``q`` for
    independent (or positively dependent) tests. NaN entries (tests that could not be
    computed) stay NaN and do not count in ``m``.

    Raises:
        ValueError: a finite p-value outside ``[0, 1]``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    flat = p.reshape(-1)
    finite = np.flatnonzero(~np.isnan(flat))
    vals = flat[finite]
    if ((vals < 0) | (vals > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {vals[(vals < 0) | (vals > 1)]}")
    m = vals.size
    if m == 0:
        return out
    order = np.argsort(vals, kind="stable")
    scaled = vals[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    res = np.empty(m)
    res[order] = adjusted
    out.reshape(-1)[finite] = res
    return out


VERDICTS = ("holds", "does not hold", "inconclusive")
"""The words of :func:`paired_verdict`."""


def paired_verdict(result: PairedComparison, *, expected: str, alpha: float = 0.05,
                   p_value: float | None = None, test: str = "t") -> str:
    """The verdict on a claim that ``a`` is ``expected`` (``"greater"`` or ``"less"``)
    than ``b``, from a :class:`PairedComparison`.

    Rule: with ``p`` = ``p_value`` if given (e.g. the Benjamini-Hochberg adjusted value
    from :func:`benjamini_hochberg`), else ``result``'s p-value of ``test``:

    - ``"holds"``: ``p <= alpha`` and the whole confidence interval of the effect lies
      on the expected side of 0;
    - ``"does not hold"``: ``p <= alpha`` and the whole interval lies on the other side
      (a significant effect against the claim);
    - ``"inconclusive"``: otherwise -- not significant, an interval containing 0, or an
      undefined (NaN) p-value. Absence of evidence is not a verdict against the claim.

    Note that with 5 pairs the two-sided Wilcoxon signed-rank test cannot go below
    ``2 / 2**5 = 0.0625``, so it never rejects at ``alpha = 0.05``; the default is the
    paired t-test (on log ratios with ``log=True``).

    Raises:
        ValueError: ``expected`` not ``"greater"``/``"less"``, ``alpha`` not in (0, 1).
    """
    if expected not in ("greater", "less"):
        raise ValueError(f"expected must be 'greater' or 'less', got {expected!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    p = result.p_value(test) if p_value is None else float(p_value)
    if not p <= alpha:  # also NaN
        return "inconclusive"
    sign = 1.0 if expected == "greater" else -1.0
    low, high = sorted((sign * result.ci_low, sign * result.ci_high))
    if low > 0:
        return "holds"
    if high < 0:
        return "does not hold"
    return "inconclusive"
