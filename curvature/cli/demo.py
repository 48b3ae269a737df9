"""``curvature demo``: train SGD and SAM on digits, analyse both and compare them
(:func:`curvature.demo.run_demo`)."""

from __future__ import annotations

import argparse
from typing import Any

from curvature.cli.arguments import HelpFormatter, add_common, positive_int
from curvature.cli.environment import check_device, check_out, messenger

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``demo`` subcommand to the subparsers ``sub``."""
    demo = sub.add_parser("demo", help="train SGD and SAM on digits, analyse and compare them",
                          formatter_class=HelpFormatter)
    demo.add_argument("--out", default="curvature-demo",
                      help="output folder (default ./curvature-demo)")
    demo.add_argument("--quick", action="store_true",
                      help="a much smaller run (seconds; for tests and CI)")
    demo.add_argument("--steps", type=positive_int, default=None,
                      help="training steps per optimizer (default 600, 60 with --quick)")
    add_common(demo)
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``curvature demo``; returns the exit status."""
    from curvature.demo import run_demo

    check_out(args.out)
    check_device(args.device)
    say = messenger(args)
    report = run_demo(args.out, quick=args.quick, steps=args.steps, seed=args.seed,
                      device=args.device, progress=not args.quiet, log=say)
    print(f"report: {report}")
    return 0
