"""``curvature analyze`` (alias ``analyse``): the post-hoc curvature analysis of one
checkpoint, written as tables, figures and a report under ``--out``.

Also runs under ``torchrun``: every rank computes (the products are all-reduced), rank 0
writes. The defaults of the analysis options are those of
:class:`curvature.pipeline.AnalysisConfig`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from curvature.cli.arguments import HelpFormatter, add_common, duration, json_object, metrics
from curvature.cli.arguments import nonnegative_float as nonnegative
from curvature.cli.arguments import positive_float as number
from curvature.cli.arguments import positive_int as count
from curvature.cli.environment import (
    check_device,
    check_out,
    import_factory_module,
    init_distributed,
    messenger,
)
from curvature.cli.reference import data_reference, model_reference

__all__ = ["register", "run"]

_ZOO = ("zoo models (--model NAME names the model of a bare state dict; --model-kwargs "
        "'{\"key\": value}' sets its arguments) and their defaults:")

# (option, value type, help): each sets the AnalysisConfig field of its name, whose
# default is the option's default
_CONFIG_OPTIONS = (
    ("--metrics", metrics, "comma-separated subset of eigenvalues,trace,density,landscape,"
                           "sharpness (default all)"),
    ("--top-k", count, "eigenvalues at each end of the spectrum"),
    ("--tol", number, "Lanczos relative residual tolerance"),
    ("--max-matvecs", count, "Lanczos product budget per end of the spectrum "
                             "(default max(1000, 100 top-k))"),
    ("--trace-matvecs", count, "Hutch++ products for the trace"),
    ("--density-probes", count, "SLQ probe vectors"),
    ("--density-steps", count, "Lanczos steps per SLQ probe"),
    ("--landscape-points", count, "points on each 1-D landscape line"),
    ("--landscape-grid", count, "points per side of each 2-D landscape"),
    ("--landscape-radius", number, "half-width of eigenvector landscapes, in parameter distance"),
    ("--random-radius", number, "half-width of random landscapes, in filter norms"),
    ("--sharpness-rho", number, "radius rho of the adaptive sharpness: weights move by "
                                "(|w| + eta) * u with ||u||_2 <= rho (training split)"),
    ("--sharpness-eta", nonnegative, "offset eta of the adaptive sharpness scale |w| + eta "
                                     "(default 0, as Andriushchenko et al. 2023; ASAM uses 0.01)"),
    ("--sharpness-steps", count, "gradient-ascent steps of the worst-case sharpness"),
    ("--sharpness-samples", count, "Gaussian draws of the average-case sharpness"),
)


def _field(option: str) -> str:
    return option[2:].replace("-", "_")


def register(sub: Any) -> None:
    """Add the ``analyze`` subcommand to the subparsers ``sub``."""
    from curvature.pipeline import AnalysisConfig

    an = sub.add_parser("analyze", aliases=["analyse"], help="curvature analysis of a checkpoint",
                        formatter_class=HelpFormatter,
                        epilog=model_reference(_ZOO) + "\n\n" + data_reference())
    an.add_argument("checkpoint", metavar="CKPT", help="checkpoint (.pt, .pth, .safetensors)")
    an.add_argument("--model", default=None,
                    help="zoo model or factory package.module:function (required for a bare "
                         "state dict; default: the recorded factory)")
    an.add_argument("--model-kwargs", type=json_object, default=None,
                    help="JSON keyword arguments of the model factory (default: the recorded "
                         "ones, which these update)")
    an.add_argument("--data", default=None,
                    help="dataset spec (default: the one recorded in the checkpoint)")
    an.add_argument("--loss", choices=("ce", "mse"), default=None,
                    help="loss (default: recorded, else from the dataset's task)")
    an.add_argument("--out", required=True, help="output folder")
    g = an.add_argument_group("analysis")
    g.add_argument("--budget", type=duration, default=None,
                   help="wall-time budget of the analysis: 90s, 5m, 1h or seconds; the "
                        "settings below are the most each metric spends, lowered to fit "
                        "(what is cut is reported as not converged); a plan is printed "
                        "first (default: the time of every setting below, at most 10 "
                        "minutes, 15 with --per-layer)")
    defaults = AnalysisConfig()
    for option, kind, text in _CONFIG_OPTIONS:
        g.add_argument(option, type=kind, default=getattr(defaults, _field(option)), help=text)
    g.add_argument("--max-examples", type=count, default=None,
                   help="analyse a seeded random subset of this many examples per split "
                        "(default: all)")
    g.add_argument("--batch-size", type=count, default=1024,
                   help="examples per batch in Hessian products")
    g.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="computation dtype (default float64 on CPU, float32 on GPU)")
    g.add_argument("--hvp-method", choices=("exact", "fd", "fd-central"), default="exact",
                   help="Hessian products: exact double backward, or finite differences of "
                        "gradients for models without second derivatives (e.g. fused attention)")
    g.add_argument("--no-test", action="store_true", help="analyse the training split only")
    g.add_argument("--per-layer", action="store_true",
                   help="also the per-layer spectra of the training split (one block per "
                        "module with parameters: lambda_max, lambda_min, trace per block, all "
                        "blocks in one product per step): per_layer.csv and per_layer.png")
    add_common(an)
    an.set_defaults(run=run)


def _config(args: argparse.Namespace):
    from curvature.pipeline import AnalysisConfig

    return AnalysisConfig(
        **{_field(option): getattr(args, _field(option)) for option, _, _ in _CONFIG_OPTIONS},
        seed=args.seed, dtype=args.dtype, device=args.device, progress=not args.quiet,
        hvp_method=args.hvp_method, per_layer=args.per_layer, budget=args.budget,
    )


def _headline(s: dict[str, Any]) -> str:
    parts = [f"n = {s['num_params']}"]
    for key, fmt in (("loss", "{:.4g}"), ("lambda_max", "{:.5g}"), ("lambda_min", "{:.4g}")):
        if key in s:
            parts.append(f"{key} = " + fmt.format(s[key]))
    if "trace" in s:
        parts.append(f"trace = {s['trace']:.4g} ± {s['trace_stderr']:.2g}")
    if "sharpness_worst" in s:
        parts.append(f"adaptive sharpness worst >= {s['sharpness_worst']:.3g}, average = "
                     f"{s['sharpness_average']:.3g} ± {s['sharpness_average_stderr']:.2g} "
                     f"(rho {s['sharpness_rho']:g})")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Run ``curvature analyze``; returns the exit status."""
    from curvature.pipeline import analyze_checkpoint, write_analysis

    check_out(args.out)
    check_device(args.device)
    import_factory_module(args.model)
    rank = init_distributed(args.device)
    if rank != 0:  # every rank computes (the products are all-reduced); rank 0 writes
        args.quiet = True
    say = messenger(args)
    analysis = analyze_checkpoint(
        args.checkpoint, model=args.model, model_kwargs=args.model_kwargs, data=args.data,
        loss=args.loss, max_examples=args.max_examples, batch_size=args.batch_size,
        test=not args.no_test, config=_config(args), log=say,
    )
    if rank != 0:
        return 0
    out = write_analysis(analysis, args.out, title=f"Curvature analysis of {Path(args.checkpoint).name}")
    say(_headline(analysis.summary()))
    print(f"report: {out / 'report.md'}")
    return 0
