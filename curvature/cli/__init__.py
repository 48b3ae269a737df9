"""The ``curvature`` command: ``train``, ``analyze``, ``compare`` and ``demo``.

::

    curvature demo [--out DIR] [--quick]
    curvature train --model mlp --data digits --optimizer sam --steps 500 --out run/
    curvature analyze run/final.pt --out run/analysis
    curvature compare sgd/analysis sam/analysis --out comparison

``curvature analyze`` also runs under ``torchrun --nproc-per-node N -m curvature.cli
analyze ...``: each rank takes every N-th example, the Hessian products, losses and
landscapes are all-reduced, and rank 0 writes the (single-process) report.

Exit status 0 on success; 2 with one line on stderr naming the problem on bad input
(missing or corrupt checkpoint, hostile pickle, mismatching state dict, unknown
factory, data that does not fit the model, bad options). Output folders are written
atomically: nothing appears under ``--out`` unless the command succeeds. Loading a
checkpoint never executes code from it (:func:`curvature.checkpoint.load_checkpoint`).

Rooms: one per subcommand (:mod:`~curvature.cli.train`, :mod:`~curvature.cli.analyze`,
:mod:`~curvature.cli.compare`, :mod:`~curvature.cli.demo`: its options and what it
runs), :mod:`~curvature.cli.arguments` (parser, help formatter, value types),
:mod:`~curvature.cli.environment` (output folder, device, factory module, process
group, messages), :mod:`~curvature.cli.reference` (models and datasets in ``--help``);
this module assembles the parser and maps errors to exit statuses.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence

from curvature.cli import analyze, compare, demo, train
from curvature.cli.arguments import HelpFormatter, Parser, UsageError
from curvature.cli.environment import one_line

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``curvature`` command."""
    parser = Parser(
        prog="curvature",
        description="Hessian curvature analysis of PyTorch models: train, analyse checkpoints, "
                    "compare minima.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for room in (demo, train, analyze, compare):
        room.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``curvature`` console script; returns the exit status."""
    from curvature.errors import (
        CheckpointError,
        DoubleBackwardError,
        InputError,
        ModelFactoryError,
    )

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        quiet = getattr(args, "quiet", False)
        if quiet:
            warnings.simplefilter("ignore")
            os.environ.setdefault("TQDM_DISABLE", "1")
        t0 = time.perf_counter()
        code = args.run(args)
        if not getattr(args, "quiet", False):
            print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return code
    except UsageError as e:
        msg = one_line(e)
        print(msg if msg.startswith("curvature") else f"curvature: error: {msg}", file=sys.stderr)
        return 2
    # bad checkpoints, factories, data, files, option values: the library's checks
    except (CheckpointError, ModelFactoryError, InputError, FileNotFoundError, ValueError) as e:
        print(f"curvature: error: {one_line(e)}", file=sys.stderr)
        return 2
    except DoubleBackwardError as e:  # a model the exact products cannot differentiate twice
        print(f"curvature: error: {one_line(e)} (command line: --hvp-method fd-central, or "
              "build the model without the fused kernel, e.g. HuggingFace "
              "attn_implementation='eager')", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"curvature: error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("curvature: interrupted", file=sys.stderr)
        return 130
