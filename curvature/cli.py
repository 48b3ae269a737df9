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
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main", "build_parser"]


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _json_object(text: str) -> dict[str, Any]:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"hidden\": [32]}}', got {text!r}")
    return v


def _int_list(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated step numbers like 100,200, got {text!r}") from None
    if any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"step numbers must be positive, got {text!r}")
    return out


def _metrics(text: str) -> tuple[str, ...]:
    from curvature.pipeline import METRICS

    items = tuple(t for t in text.replace(" ", "").split(",") if t)
    bad = [t for t in items if t not in METRICS]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"unknown metrics {', '.join(bad) or text!r}; choose from {', '.join(METRICS)}")
    return items


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages")


def _analysis_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("analysis")
    g.add_argument("--metrics", type=_metrics, default=None,
                   help="comma-separated subset of eigenvalues,trace,density,landscape (default all)")
    g.add_argument("--top-k", type=_positive_int, default=5,
                   help="eigenvalues at each end of the spectrum (default 5)")
    g.add_argument("--tol", type=_positive_float, default=1e-5,
                   help="Lanczos relative residual tolerance (default 1e-5)")
    g.add_argument("--max-matvecs", type=_positive_int, default=None,
                   help="Lanczos product budget per end of the spectrum")
    g.add_argument("--trace-matvecs", type=_positive_int, default=90,
                   help="Hutch++ products for the trace (default 90)")
    g.add_argument("--density-probes", type=_positive_int, default=8,
                   help="SLQ probe vectors (default 8)")
    g.add_argument("--density-steps", type=_positive_int, default=60,
                   help="Lanczos steps per SLQ probe (default 60)")
    g.add_argument("--landscape-points", type=_positive_int, default=41,
                   help="points on each 1-D landscape line (default 41)")
    g.add_argument("--landscape-grid", type=_positive_int, default=25,
                   help="points per side of each 2-D landscape (default 25)")
    g.add_argument("--landscape-radius", type=_positive_float, default=1.0,
                   help="half-width of eigenvector landscapes, in parameter distance (default 1)")
    g.add_argument("--random-radius", type=_positive_float, default=1.0,
                   help="half-width of random landscapes, in filter norms (default 1)")
    g.add_argument("--max-examples", type=_positive_int, default=None,
                   help="analyse a seeded random subset of this many examples per split")
    g.add_argument("--batch-size", type=_positive_int, default=1024,
                   help="examples per batch in Hessian products (default 1024)")
    g.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="computation dtype (default float64 on CPU, float32 on GPU)")
    g.add_argument("--no-test", action="store_true", help="analyse the training split only")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``curvature`` command."""
    parser = _Parser(
        prog="curvature",
        description="Hessian curvature analysis of PyTorch models: train, analyse checkpoints, "
                    "compare minima.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser("demo", help="train SGD and SAM on digits, analyse and compare them")
    demo.add_argument("--out", default="curvature-demo",
                      help="output folder (default ./curvature-demo)")
    demo.add_argument("--quick", action="store_true",
                      help="a much smaller run (seconds; for tests and CI)")
    demo.add_argument("--steps", type=_positive_int, default=None,
                      help="training steps per optimizer (default 600, 60 with --quick)")
    _common(demo)

    tr = sub.add_parser("train", help="train a model and write checkpoints")
    tr.add_argument("--model", default="mlp",
                    help="zoo model (mlp, cnn, resnet20, vgg, vit, transformer) or "
                         "package.module:function (default mlp)")
    tr.add_argument("--model-kwargs", type=_json_object, default={},
                    help="JSON keyword arguments of the model factory")
    tr.add_argument("--data", default="digits", help="dataset spec (default digits)")
    tr.add_argument("--loss", choices=("ce", "mse"), default=None,
                    help="loss (default: ce for classification, mse for regression)")
    tr.add_argument("--optimizer", default="sgd",
                    help="sgd, momentum, adam, sam, asam, sam-inf, alpha-sam, accelerated-sam, "
                         "forward-sam, saddam, sa-sam, sa-sgd, sgdhess, extended-sgdhess, "
                         "diag-hessian-sgd, adahessian, ire, or any torch.optim class name "
                         "(default sgd)")
    tr.add_argument("--lr", type=_positive_float, default=0.1, help="learning rate (default 0.1)")
    tr.add_argument("--momentum", type=float, default=None, help="momentum (SGD-type methods)")
    tr.add_argument("--rho", type=float, default=None, help="SAM radius (SAM-type methods)")
    tr.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0)")
    tr.add_argument("--base-optimizer", default="sgd",
                    help="base optimizer of SAM/ASAM/alpha-SAM/Saddam/IRE (default sgd)")
    tr.add_argument("--optimizer-kwargs", type=_json_object, default={},
                    help="further JSON keyword arguments of the optimizer")
    length = tr.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps")
    length.add_argument("--epochs", type=_positive_float, default=None,
                        help="passes over the training set (default 1)")
    tr.add_argument("--batch-size", type=_positive_int, default=64, help="mini-batch (default 64)")
    tr.add_argument("--save-at", type=_int_list, default=[],
                    help="also write checkpoints at these steps, e.g. 100,200")
    tr.add_argument("--format", choices=("pt", "safetensors"), default="pt",
                    help="checkpoint format (default pt)")
    tr.add_argument("--monitor-every", type=_positive_int, default=None,
                    help="probe the curvature monitor every N steps (monitor.csv)")
    tr.add_argument("--out", required=True, help="output folder for checkpoints and history")
    _common(tr)

    an = sub.add_parser("analyze", aliases=["analyse"], help="curvature analysis of a checkpoint")
    an.add_argument("checkpoint", metavar="CKPT", help="checkpoint (.pt, .pth, .safetensors)")
    an.add_argument("--model", default=None,
                    help="model factory package.module:function (required for a bare state dict)")
    an.add_argument("--model-kwargs", type=_json_object, default=None,
                    help="JSON keyword arguments of the model factory")
    an.add_argument("--data", default=None,
                    help="dataset spec (default: the one recorded in the checkpoint)")
    an.add_argument("--loss", choices=("ce", "mse"), default=None,
                    help="loss (default: recorded, else from the dataset's task)")
    an.add_argument("--out", required=True, help="output folder")
    _analysis_options(an)
    _common(an)

    cmp_ = sub.add_parser("compare", help="overlay and tabulate several analysis folders")
    cmp_.add_argument("folders", nargs="+", metavar="DIR", help="folders written by analyze")
    cmp_.add_argument("--labels", default=None, help="comma-separated run labels")
    cmp_.add_argument("--split", choices=("train", "test"), default="train",
                      help="which split's spectra to overlay (default train)")
    cmp_.add_argument("--out", default="curvature-compare",
                      help="output folder (default ./curvature-compare)")
    cmp_.add_argument("--quiet", "-q", action="store_true", help="no messages")
    return parser


# ----------------------------------------------------------------------- commands


def _say(args: argparse.Namespace):
    quiet = getattr(args, "quiet", False)

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    return say


def _config(args: argparse.Namespace):
    from curvature.pipeline import METRICS, AnalysisConfig

    return AnalysisConfig(
        metrics=args.metrics or METRICS, top_k=args.top_k, tol=args.tol,
        max_matvecs=args.max_matvecs, trace_matvecs=args.trace_matvecs,
        density_probes=args.density_probes, density_steps=args.density_steps,
        landscape_points=args.landscape_points, landscape_grid=args.landscape_grid,
        landscape_radius=args.landscape_radius, random_radius=args.random_radius,
        seed=args.seed, dtype=args.dtype, device=args.device, progress=not args.quiet,
    )


def _check_out(out: str) -> None:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {out!r} exists and is not a directory")


def _init_distributed(device: str | None) -> int:
    """Join the process group that ``torchrun`` describes in the environment (gloo on
    CPU, NCCL on CUDA); returns this process's rank (0 without torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = device is not None and device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank()


def cmd_analyze(args: argparse.Namespace) -> int:
    from curvature.pipeline import analyze_checkpoint, write_analysis

    _check_out(args.out)
    _check_device(args.device)
    _import_factory_module(args.model)
    rank = _init_distributed(args.device)
    if rank != 0:  # every rank computes (the products are all-reduced); rank 0 writes
        args.quiet = True
    say = _say(args)
    analysis = analyze_checkpoint(
        args.checkpoint, model=args.model, model_kwargs=args.model_kwargs, data=args.data,
        loss=args.loss, max_examples=args.max_examples, batch_size=args.batch_size,
        test=not args.no_test, config=_config(args), log=say,
    )
    if rank != 0:
        return 0
    out = write_analysis(analysis, args.out, title=f"Curvature analysis of {Path(args.checkpoint).name}")
    s = analysis.summary()
    say(_headline(s))
    print(f"report: {out / 'report.md'}")
    return 0


def _headline(s: dict[str, Any]) -> str:
    parts = [f"n = {s['num_params']}"]
    for key, fmt in (("loss", "{:.4g}"), ("lambda_max", "{:.5g}"), ("lambda_min", "{:.4g}")):
        if key in s:
            parts.append(f"{key} = " + fmt.format(s[key]))
    if "trace" in s:
        parts.append(f"trace = {s['trace']:.4g} ± {s['trace_stderr']:.2g}")
    return ", ".join(parts)


def cmd_compare(args: argparse.Namespace) -> int:
    from curvature.pipeline import compare

    _check_out(args.out)
    labels = [t.strip() for t in args.labels.split(",")] if args.labels else None
    table = compare(args.folders, args.out, labels=labels, split=args.split)
    say = _say(args)
    for _, r in table.iterrows():
        say(f"{r['run']}: lambda_max = {r['lambda_max']}, trace = {r['trace']}, loss = {r['loss']}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UsageError(f"--device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device!r}: CUDA is not available on this machine")


def _import_factory_module(model: str | None) -> None:
    """Import the module of a ``--model package.module:function`` factory, so that any
    failure is one line (exit 2) naming the module and the cause.

    As with ``python -m``, the current directory comes first on ``sys.path`` (the
    ``curvature`` console script otherwise has only its own folder there), so a
    ``mymodule.py`` next to the user is found. Zoo names and malformed strings are left
    to :func:`curvature.models.resolve_factory`, which reports them. Importing the
    named module is the user's explicit choice; nothing from a checkpoint is imported.
    """
    from curvature.models import MODELS

    if model is None or model in MODELS or model.count(":") != 1:
        return
    module = model.split(":")[0].strip()
    if not module or not all(p.isidentifier() for p in module.split(".")):
        return
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and (module == missing or module.startswith(missing + ".")):
            where = f"{missing}.py" if "." not in module else f"the package {missing.split('.')[0]}/"
            raise UsageError(
                f"unknown model factory {model!r}: no module named {missing!r} in the current "
                f"directory ({cwd}) or on the Python path; run from the folder that holds "
                f"{where}, add that folder to PYTHONPATH, or pip install the package that "
                f"provides it"
            ) from None
        raise UsageError(
            f"model factory {model!r}: importing module {module!r} failed: it imports "
            f"{missing or 'a module'!r}, which is not installed ({_one_line(e)})"
        ) from None
    except (Exception, SystemExit) as e:  # any failure at import: broken extension, syntax, ...
        raise UsageError(
            f"model factory {model!r}: importing module {module!r} failed: "
            f"{type(e).__name__}: {_one_line(e)}"
        ) from None


def _build(model: str, kwargs: dict[str, Any], data) -> tuple[Any, str, dict[str, Any]]:
    """Build a model for ``data``: zoo names get arguments fitted to the data shape."""
    from curvature.models import MODELS, build_model, default_kwargs

    if model in MODELS:
        kw = {**default_kwargs(model, data.input_shape, data.num_outputs), **kwargs}
    else:
        kw = dict(kwargs)
    return build_model(model, **kw), MODELS.get(model, model), kw


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from curvature.data import load_dataset
    from curvature.pipeline import atomic_directory, check_data_fits, make_loss
    from curvature.train import train

    say = _say(args)
    _check_out(args.out)
    _check_device(args.device)
    _import_factory_module(args.model)
    data = load_dataset(args.data)
    torch.manual_seed(args.seed)
    model, factory, kwargs = _build(args.model, args.model_kwargs, data)
    loss_name = args.loss or ("ce" if data.task == "classification" else "mse")
    loss_fn = make_loss(loss_name)
    check_data_fits(model, loss_fn, data.x_train, data.y_train, f"{factory}(**{json.dumps(kwargs)})")
    with atomic_directory(args.out) as tmp:
        result = train(
            model, data, optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
            rho=args.rho, weight_decay=args.weight_decay, base_optimizer=args.base_optimizer,
            optimizer_kwargs=args.optimizer_kwargs, steps=args.steps, epochs=args.epochs,
            batch_size=args.batch_size, seed=args.seed, loss_fn=loss_fn, loss_name=loss_name,
            out=tmp, save_at=args.save_at, factory=factory, factory_kwargs=kwargs,
            monitor_every=args.monitor_every, device=args.device, progress=not args.quiet,
            log=say,
        )
        if args.format == "safetensors":
            _to_safetensors(tmp)
        result.history.to_csv(tmp / "history.csv", index=False)
        result.evaluations.to_csv(tmp / "evaluations.csv", index=False)
        if result.monitor_history is not None:
            result.monitor_history.to_csv(tmp / "monitor.csv", index=False)
            if hasattr(result.monitor, "plot"):
                result.monitor.plot(tmp / "monitor.png")
        (tmp / "train.json").write_text(json.dumps(
            {"factory": factory, "factory_kwargs": kwargs, "data_spec": data.spec,
             **result.metadata}, indent=2, default=str) + "\n")
    ext = "safetensors" if args.format == "safetensors" else "pt"
    print(f"checkpoint: {Path(args.out) / ('final.' + ext)}")
    return 0


def _to_safetensors(folder: Path) -> None:
    """Rewrite every ``.pt`` checkpoint in ``folder`` as ``.safetensors``."""
    from curvature.checkpoint import load_checkpoint, save_checkpoint

    for pt in sorted(folder.glob("*.pt")):
        c = load_checkpoint(pt)
        save_checkpoint(pt.with_suffix(".safetensors"), c.model, factory=c.factory,
                        factory_kwargs=c.factory_kwargs, data_spec=c.data_spec,
                        metadata=c.metadata)
        pt.unlink()


def cmd_demo(args: argparse.Namespace) -> int:
    from curvature.demo import run_demo

    _check_out(args.out)
    _check_device(args.device)
    say = _say(args)
    report = run_demo(args.out, quick=args.quick, steps=args.steps, seed=args.seed,
                      device=args.device, progress=not args.quiet, log=say)
    print(f"report: {report}")
    return 0


COMMANDS = {"analyze": cmd_analyze, "analyse": cmd_analyze, "compare": cmd_compare,
            "train": cmd_train, "demo": cmd_demo}


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``curvature`` console script; returns the exit status."""
    from curvature.checkpoint import CheckpointError
    from curvature.models import ModelFactoryError
    from curvature.pipeline import InputError

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
        code = COMMANDS[args.command](args)
        if not getattr(args, "quiet", False):
            print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return code
    except UsageError as e:
        msg = _one_line(e)
        print(msg if msg.startswith("curvature") else f"curvature: error: {msg}", file=sys.stderr)
        return 2
    except (CheckpointError, ModelFactoryError, InputError) as e:
        print(f"curvature: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"curvature: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ValueError as e:  # bad data specs and option values, from the library's checks
        print(f"curvature: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"curvature: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("curvature: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
