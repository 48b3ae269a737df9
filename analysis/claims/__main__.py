"""Driver: ``python -m analysis.claims [--reports DIR] [--out DIR] [--quick]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.claims import __doc__ as _package_doc
from analysis.claims.ledger import build
from analysis.harness.cli import REPO


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=_package_doc.split("\n")[0])
    p.add_argument("--reports", nargs="+", default=[str(REPO / "reports")],
                   help="folders whose */claims_rows.csv are collected (default: reports); "
                        "a report name in an earlier folder hides it in later ones")
    p.add_argument("--out", default=str(REPO / "reports" / "claims"),
                   help="ledger folder (default: reports/claims)")
    p.add_argument("--quick", action="store_true",
                   help="same as the default: the ledger only reads CSVs (seconds); "
                        "kept so every driver takes --quick")
    p.add_argument("--report-only", action="store_true",
                   help="same as the default: the ledger is always rebuilt from CSVs")
    args = p.parse_args(argv)
    ledger = build([Path(r) for r in args.reports], Path(args.out))
    counts = ledger.verdict.value_counts().to_dict()
    print(f"wrote {Path(args.out) / 'claims.csv'} ({len(ledger)} rows: {counts}) and report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
