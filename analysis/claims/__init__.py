"""The claims ledger: every seed claim an experiment here tested, with its verdict.

Collects each report's ``claims_rows.csv`` (columns ``claim, seed_file, workload, metric,
comparison, effect, ci_low, ci_high, p_value, p_adjusted, n_seeds, verdict``), adjusts the
p-values of all rows together with Benjamini-Hochberg, decides each verdict
(:mod:`analysis.claims.rules`) and writes ``reports/claims/claims.csv`` and ``report.md``.

    python -m analysis.claims                       # reports/*/claims_rows.csv -> reports/claims/
    python -m analysis.claims --reports DIR --out DIR
"""
