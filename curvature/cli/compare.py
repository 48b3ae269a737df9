"""``curvature compare``: overlay the spectra and tabulate the metrics of several
analysis folders."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from curvature.cli.arguments import HelpFormatter
from curvature.cli.environment import check_out, messenger

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``compare`` subcommand to the subparsers ``sub``."""
    cmp_ = sub.add_parser("compare", help="overlay and tabulate several analysis folders",
                          formatter_class=HelpFormatter)
    cmp_.add_argument("folders", nargs="+", metavar="DIR", help="folders written by analyze")
    cmp_.add_argument("--labels", default=None,
                      help="comma-separated run labels (default: each folder's name and optimizer)")
    cmp_.add_argument("--split", choices=("train", "test"), default="train",
                      help="which split's spectra to overlay (default train)")
    cmp_.add_argument("--out", default="curvature-compare",
                      help="output folder (default ./curvature-compare)")
    cmp_.add_argument("--quiet", "-q", action="store_true", help="no messages")
    cmp_.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``curvature compare``; returns the exit status."""
    from curvature.pipeline import compare

    check_out(args.out)
    labels = [t.strip() for t in args.labels.split(",")] if args.labels else None
    table = compare(args.folders, args.out, labels=labels, split=args.split)
    say = messenger(args)
    for _, r in table.iterrows():
        say(f"{r['run']}: lambda_max = {r['lambda_max']}, trace = {r['trace']}, loss = {r['loss']}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
