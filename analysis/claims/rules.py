"""The verdict rules of the claims ledger, shared by the reports that write ledger rows.

A ledger row states its expectation at the end of its ``comparison`` text:
``(expect less)``, ``(expect greater)`` (a paired log ratio or difference ``a - b``),
``(expect negative)``, ``(expect positive)`` (a correlation) or ``(expect equivalent
within Rx)`` (a ratio inside ``[1/R, R]``). From the row's ``effect``, 95% interval and
Benjamini-Hochberg adjusted p-value:

- directional claims (:func:`analysis.harness.stats.paired_verdict`'s rule):
  ``holds`` when ``p_adjusted <= 0.05`` and the interval lies on the expected side of 0,
  ``does not hold`` when ``p_adjusted <= 0.05`` and it lies on the other side,
  ``inconclusive`` otherwise;
- equivalence claims: ``holds`` when the interval of the log ratio lies inside
  ``[-log R, log R]``, ``does not hold`` when it lies wholly outside, ``inconclusive``
  otherwise (the p-value, of the difference, does not decide);
- a row whose verdict is ``not testable at this scale`` keeps it (no p-value).

A row without ``(expect ...)`` was decided by its own report's rule (which may not be a
directional test, e.g. an equivalence margin or a count): it keeps that verdict, except
that a ``holds``/``does not hold`` resting on a significant directional effect (finite
p-value, interval excluding 0) whose ledger-adjusted p-value exceeds 0.05 becomes
``inconclusive``. A row with no p-value keeps its verdict.
"""

from __future__ import annotations

import math
import re
from typing import Any

from analysis.harness.stats import PairedComparison, paired_verdict

__all__ = ["ALPHA", "VERDICTS", "equivalence_verdict", "expectation", "ledger_verdict",
           "verdict_from"]

ALPHA = 0.05
VERDICTS = ("holds", "does not hold", "inconclusive", "not testable at this scale")
_EXPECT = re.compile(
    r"\(expect (less|greater|negative|positive|equivalent within ([\d.]+)x)\)")


def equivalence_verdict(ci_low: float, ci_high: float, margin: float) -> str:
    """``holds`` if ``[ci_low, ci_high]`` lies inside ``[-margin, margin]``, ``does not
    hold`` if wholly outside it, ``inconclusive`` otherwise (or on NaN)."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive"
    if -margin <= ci_low and ci_high <= margin:
        return "holds"
    if ci_low > margin or ci_high < -margin:
        return "does not hold"
    return "inconclusive"


def verdict_from(effect: float, ci_low: float, ci_high: float, p_adjusted: float,
                 expected: str) -> str:
    """:func:`paired_verdict` on a row's numbers; ``expected`` is ``less``/``greater``
    (``negative``/``positive`` read as the same for correlations)."""
    exp = {"negative": "less", "positive": "greater"}.get(expected, expected)
    res = PairedComparison(n=2, n_dropped=0, log=True, effect=effect, ci_low=ci_low,
                           ci_high=ci_high, ci_method="t", level=0.95, p_ttest=p_adjusted,
                           p_wilcoxon=math.nan)
    return paired_verdict(res, expected=exp, alpha=ALPHA, p_value=p_adjusted)


def expectation(comparison: str) -> tuple[str, float] | None:
    """``(direction, margin)`` parsed from ``"(expect ...)"``; margin ``log R`` for an
    equivalence, NaN otherwise; ``None`` without an expectation."""
    m = _EXPECT.search(str(comparison))
    if m is None:
        return None
    if m.group(2):
        return ("equivalent", math.log(float(m.group(2))))
    return (m.group(1), math.nan)


def ledger_verdict(row: Any, p_adjusted: float) -> str:
    """The verdict of a ledger row (attributes ``comparison``, ``effect``, ``ci_low``,
    ``ci_high``, ``p_value``, ``verdict``) given its adjusted p-value; see the module
    docstring."""
    given = str(getattr(row, "verdict", ""))
    if given == "not testable at this scale":
        return given
    effect, lo, hi = float(row.effect), float(row.ci_low), float(row.ci_high)
    if expectation(row.comparison) is None and not math.isfinite(float(row.p_value)):
        return given or "inconclusive"  # decided by its report without a test (a count)
    if not (math.isfinite(effect) and math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    exp = expectation(row.comparison)
    if exp is None:
        old = str(getattr(row, "verdict", "")) or "inconclusive"
        directional = math.isfinite(float(row.p_value)) and (lo > 0 or hi < 0)
        if old in ("holds", "does not hold") and directional and not p_adjusted <= ALPHA:
            return "inconclusive"
        return old
    if exp[0] == "equivalent":
        return equivalence_verdict(lo, hi, exp[1])
    return verdict_from(effect, lo, hi, p_adjusted, exp[0])
