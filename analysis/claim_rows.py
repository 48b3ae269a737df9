"""Per-report claim rows for the claims ledger (``reports/claims/``).

Every driver that tests a seed's claims writes ``claims_rows.csv`` in its report folder
with the columns of :data:`COLUMNS`. ``p_adjusted`` is left empty there (the ledger
adjusts over every report with Benjamini-Hochberg); ``verdict`` comes from a
Benjamini-Hochberg adjustment over the rows of this one report
(:func:`finish_rows`), so a report's verdicts stand on their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.harness.stats import PairedComparison, benjamini_hochberg, paired_verdict

__all__ = ["COLUMNS", "VERDICT_WORDS", "claim_row", "finish_rows", "write_rows"]

COLUMNS = ["claim", "seed_file", "workload", "metric", "comparison", "effect", "ci_low",
           "ci_high", "p_value", "p_adjusted", "n_seeds", "verdict"]
VERDICT_WORDS = ("holds", "does not hold", "inconclusive", "not testable at this scale")


def claim_row(claim: str, seed_file: str, workload: str, metric: str, comparison: str,
              result: PairedComparison | None, expected: str | None,
              *, fixed_verdict: str | None = None, note: str = "") -> dict[str, Any]:
    """One row: the paired comparison ``result`` (its ``effect`` is a mean log ratio when
    ``result.log``, else a mean difference) of a claim that ``a`` is ``expected``
    (``"less"``/``"greater"``) than ``b``; ``fixed_verdict`` overrides the statistical
    verdict (e.g. ``"not testable at this scale"``, then ``result`` may be ``None``).
    ``note`` is kept in an extra column the ledger may ignore."""
    if fixed_verdict is not None and fixed_verdict not in VERDICT_WORDS:
        raise ValueError(f"verdict must be one of {VERDICT_WORDS}, got {fixed_verdict!r}")
    nan = math.nan
    return {
        "claim": claim, "seed_file": seed_file, "workload": workload, "metric": metric,
        "comparison": comparison,
        "effect": result.effect if result else nan,
        "ci_low": result.ci_low if result else nan,
        "ci_high": result.ci_high if result else nan,
        "p_value": result.p_ttest if result else nan,
        "p_adjusted": nan, "n_seeds": result.n if result else 0,
        "verdict": fixed_verdict or "", "_expected": expected or "", "_result": result,
        "note": note,
    }


def finish_rows(rows: Sequence[dict[str, Any]], alpha: float = 0.05) -> pd.DataFrame:
    """Benjamini-Hochberg over the rows' ``p_value`` (within this report) and the verdict of
    each row from :func:`analysis.harness.stats.paired_verdict` at the adjusted p; returns
    the table with the ledger's columns plus ``p_bh_report`` and ``note``."""
    p = np.array([r["p_value"] for r in rows], dtype=float)
    adj = benjamini_hochberg(p) if len(rows) else np.array([])
    out = []
    for r, q in zip(rows, adj):
        r = dict(r)
        res, exp = r.pop("_result"), r.pop("_expected")
        if not r["verdict"]:
            r["verdict"] = (paired_verdict(res, expected=exp, alpha=alpha, p_value=q)
                            if res is not None and exp else "inconclusive")
        r["p_bh_report"] = q
        out.append(r)
    return pd.DataFrame(out, columns=COLUMNS + ["p_bh_report", "note"])


def write_rows(out: Path, table: pd.DataFrame) -> Path:
    """``out/claims_rows.csv`` with exactly the ledger's columns (``p_adjusted`` empty)."""
    path = Path(out) / "claims_rows.csv"
    t = table[COLUMNS].copy()
    t["p_adjusted"] = ""
    t.to_csv(path, index=False)
    return path
