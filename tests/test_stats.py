"""The shared statistics module ``analysis.harness.stats``: paired comparisons against
``scipy.stats`` and closed forms (the Wilcoxon p-value against a brute-force enumeration
of sign flips, ties and zeros included), Benjamini-Hochberg against
``scipy.stats.false_discovery_control`` and a hand-computed case, and the verdict rule."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from analysis.harness.stats import (
    VERDICTS,
    benjamini_hochberg,
    paired_comparison,
    paired_verdict,
)

# five seeds of two configurations, e.g. lambda_max of SAM (a) and SGD (b)
A = np.array([12.0, 9.5, 14.1, 11.2, 10.3])
B = np.array([15.2, 13.0, 14.8, 16.1, 12.9])


def signed_rank_p(d: np.ndarray) -> float:
    """Two-sided exact p-value of the Wilcoxon signed-rank test by enumerating all
    2^n sign patterns of the midranks of |d| (zeros dropped, ties share ranks)."""
    d = d[d != 0]
    ranks = stats.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    mean = ranks.sum() / 2
    count = total = 0
    for signs in itertools.product((0, 1), repeat=len(d)):
        total += 1
        count += abs(np.dot(signs, ranks) - mean) >= abs(observed - mean) - 1e-12
    return count / total


def test_paired_comparison_matches_scipy_and_closed_forms():
    r = paired_comparison(A, B)
    d = np.log(A) - np.log(B)
    assert r.n == 5 and r.n_dropped == 0 and r.log and r.ci_method == "t"
    assert r.effect == pytest.approx(d.mean(), rel=1e-12)
    assert r.ratio == pytest.approx(stats.gmean(A / B), rel=1e-12)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    assert r.p_ttest == pytest.approx(2 * stats.t.sf(abs(t), 4), rel=1e-10)
    assert r.p_ttest == pytest.approx(stats.ttest_rel(np.log(A), np.log(B)).pvalue, rel=1e-12)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert (r.ci_low, r.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-12)
    ci = stats.ttest_rel(np.log(A), np.log(B)).confidence_interval(0.95)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert r.ratio_ci == pytest.approx((math.exp(ci.low), math.exp(ci.high)), rel=1e-10)
    assert r.p_wilcoxon == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    assert r.p_wilcoxon == pytest.approx(signed_rank_p(d), rel=1e-12)
    # all five differences negative: the smallest two-sided exact p with n = 5
    assert r.p_wilcoxon == pytest.approx(2 / 32)


@pytest.mark.parametrize("d", [
    np.array([1.0, 1.0, 2.0, -3.0, 4.0]),        # tied |d|
    np.array([0.0, 1.0, 2.0, -3.0, 4.0]),        # a zero difference (dropped)
    np.array([0.5, -0.5, 0.5, 1.5, 2.0, -0.25]),  # ties across signs
])
def test_wilcoxon_with_ties_and_zeros_matches_enumeration(d):
    r = paired_comparison(d, np.zeros_like(d), log=False)
    assert r.p_wilcoxon == pytest.approx(signed_rank_p(d), rel=1e-12)
    assert r.p_wilcoxon == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    assert r.effect == pytest.approx(d.mean()) and math.isnan(r.ratio)
    assert r.p_ttest == pytest.approx(stats.ttest_rel(d, np.zeros_like(d)).pvalue, rel=1e-12)


def test_constant_and_zero_differences():
    r = paired_comparison(2 * B, B)  # every ratio is 2: no spread
    assert r.ratio == pytest.approx(2.0) and r.ci_low == r.ci_high == pytest.approx(math.log(2))
    assert r.p_ttest == 0.0 and r.p_wilcoxon == pytest.approx(2 / 32)
    same = paired_comparison(B, B)  # nothing to test: NaN, not a made-up p-value
    assert same.effect == 0.0 and math.isnan(same.p_ttest) and math.isnan(same.p_wilcoxon)
    assert paired_verdict(same, expected="less") == "inconclusive"


def test_bootstrap_interval_is_seeded_and_agrees_with_t_for_many_pairs():
    r1 = paired_comparison(A, B, ci="bootstrap", seed=3)
    r2 = paired_comparison(A, B, ci="bootstrap", seed=3)
    r3 = paired_comparison(A, B, ci="bootstrap", seed=4)
    assert (r1.ci_low, r1.ci_high) == (r2.ci_low, r2.ci_high) != (r3.ci_low, r3.ci_high)
    assert r1.ci_low <= r1.effect <= r1.ci_high and r1.ci_method == "bootstrap"
    # the bootstrap means lie within the range of the differences
    d = np.log(A) - np.log(B)
    assert d.min() <= r1.ci_low and r1.ci_high <= d.max()
    rng = np.random.default_rng(0)
    a = np.exp(rng.normal(0.1, 0.3, 400))
    b = np.exp(rng.normal(0.0, 0.3, 400))
    t, boot = paired_comparison(a, b), paired_comparison(a, b, ci="bootstrap", n_bootstrap=4000)
    width = t.ci_high - t.ci_low
    assert abs(boot.ci_low - t.ci_low) < 0.1 * width
    assert abs(boot.ci_high - t.ci_high) < 0.1 * width


def test_non_finite_pairs_are_dropped_and_bad_input_is_named():
    a = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    b = np.array([1.5, 2.5, 3.0, np.inf, 5.5, 6.2])
    r = paired_comparison(a, b)
    assert r.n == 4 and r.n_dropped == 2
    assert r.effect == pytest.approx(np.mean(np.log(a[[0, 1, 4, 5]] / b[[0, 1, 4, 5]])))
    with pytest.raises(ValueError, match="same length"):
        paired_comparison([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2 finite pairs"):
        paired_comparison([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive values"):
        paired_comparison([1.0, -2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="ci must be"):
        paired_comparison(A, B, ci="bca")
    with pytest.raises(ValueError, match="level"):
        paired_comparison(A, B, level=95)


def test_benjamini_hochberg_by_hand_and_against_scipy():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    # sorted 0.01, 0.03, 0.04, 0.2 -> 0.04, 0.06, 0.0533, 0.2 -> step-up minimum
    expected = np.array([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    np.testing.assert_allclose(benjamini_hochberg(p), expected, rtol=1e-12)
    rng = np.random.default_rng(1)
    for m in (1, 5, 37):
        q = np.concatenate([rng.uniform(0, 0.05, m // 2), rng.uniform(0, 1, m - m // 2)])
        q[: m // 3] = q[0]  # ties
        adj = benjamini_hochberg(q)
        np.testing.assert_allclose(adj, stats.false_discovery_control(q), rtol=1e-12)
        order = np.argsort(q)
        assert np.all(np.diff(adj[order]) >= 0) and np.all(adj >= q) and np.all(adj <= 1)
    np.testing.assert_allclose(benjamini_hochberg([0.9, 0.95, 0.99]), [0.99] * 3)
    assert benjamini_hochberg([0.5, 0.8])[1] == 0.8 and benjamini_hochberg([1.0])[0] == 1.0


def test_benjamini_hochberg_nan_and_range():
    adj = benjamini_hochberg([0.01, np.nan, 0.04])
    assert math.isnan(adj[1])
    np.testing.assert_allclose(adj[[0, 2]], benjamini_hochberg([0.01, 0.04]))
    assert benjamini_hochberg([]).shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        benjamini_hochberg([0.2, 1.5])


def test_paired_verdict_rule():
    r = paired_comparison(A, B)  # a < b on every seed, p_t ~ 0.02
    assert r.p_ttest < 0.05 and r.ci_high < 0
    assert paired_verdict(r, expected="less") == "holds"
    assert paired_verdict(r, expected="greater") == "does not hold"
    # not significant after adjustment, or at a stricter alpha: inconclusive
    assert paired_verdict(r, expected="less", p_value=0.2) == "inconclusive"
    assert paired_verdict(r, expected="less", alpha=r.p_ttest / 2) == "inconclusive"
    # Wilcoxon with 5 pairs cannot reach 0.05
    assert paired_verdict(r, expected="less", test="wilcoxon") == "inconclusive"
    assert paired_verdict(r, expected="less", test="wilcoxon", alpha=0.1) == "holds"
    noisy = paired_comparison([1.0, 2.0, 1.1, 0.9, 1.5], [1.2, 1.0, 1.0, 1.3, 1.4])
    assert paired_verdict(noisy, expected="greater") == "inconclusive"
    assert set(VERDICTS) == {"holds", "does not hold", "inconclusive"}
    with pytest.raises(ValueError, match="expected"):
        paired_verdict(r, expected="smaller")
    with pytest.raises(ValueError, match="test must be"):
        paired_verdict(r, expected="less", test="sign")
