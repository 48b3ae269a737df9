"""``curvature train``: train a model on a dataset and write checkpoints, the loss
history, evaluations and (optionally) the curvature monitor, atomically under ``--out``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from curvature.cli.arguments import (
    HelpFormatter,
    add_common,
    json_object,
    positive_float,
    positive_int,
    step_list,
)
from curvature.cli.environment import check_device, check_out, import_factory_module, messenger
from curvature.cli.reference import data_reference, model_reference

__all__ = ["register", "run"]

_ZOO = ("zoo models (--model NAME: their input and output sizes are fitted to the data; "
        "--model-kwargs '{\"key\": value}' sets any argument) and their defaults:")


def register(sub: Any) -> None:
    """Add the ``train`` subcommand to the subparsers ``sub``."""
    tr = sub.add_parser("train", help="train a model and write checkpoints",
                        formatter_class=HelpFormatter,
                        epilog=model_reference(_ZOO) + "\n\n" + data_reference())
    tr.add_argument("--model", default="mlp",
                    help="zoo model (mlp, cnn, resnet20, vgg, vit, transformer) or "
                         "package.module:function (default mlp)")
    tr.add_argument("--model-kwargs", type=json_object, default={},
                    help="JSON keyword arguments of the model factory")
    tr.add_argument("--data", default="digits", help="dataset spec (default digits)")
    tr.add_argument("--loss", choices=("ce", "mse"), default=None,
                    help="loss (default: ce for classification, mse for regression)")
    tr.add_argument("--optimizer", default="sgd",
                    help="sgd, momentum, adam, sam, asam, sam-inf, alpha-sam, accelerated-sam, "
                         "forward-sam, saddam, sa-sam, sa-sgd, sgdhess, extended-sgdhess, "
                         "diag-hessian-sgd, adahessian, ire, or any torch.optim class name "
                         "(default sgd)")
    tr.add_argument("--lr", type=positive_float, default=0.1, help="learning rate (default 0.1)")
    tr.add_argument("--momentum", type=float, default=None, help="momentum (SGD-type methods)")
    tr.add_argument("--rho", type=float, default=None, help="SAM radius (SAM-type methods)")
    tr.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0)")
    tr.add_argument("--base-optimizer", default="sgd",
                    help="base optimizer of SAM/ASAM/alpha-SAM/Saddam/IRE (default sgd)")
    tr.add_argument("--optimizer-kwargs", type=json_object, default={},
                    help="further JSON keyword arguments of the optimizer")
    length = tr.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=None, help="optimizer steps")
    length.add_argument("--epochs", type=positive_float, default=None,
                        help="passes over the training set (default 1)")
    tr.add_argument("--batch-size", type=positive_int, default=64, help="mini-batch (default 64)")
    tr.add_argument("--save-at", type=step_list, default=[],
                    help="also write checkpoints at these steps, e.g. 100,200")
    tr.add_argument("--format", choices=("pt", "safetensors"), default="pt",
                    help="checkpoint format (default pt)")
    tr.add_argument("--monitor-every", type=positive_int, default=None,
                    help="probe the curvature monitor every N steps (monitor.csv)")
    tr.add_argument("--out", required=True, help="output folder for checkpoints and history")
    add_common(tr)
    tr.set_defaults(run=run)


def _build(model: str, kwargs: dict[str, Any], data) -> tuple[Any, str, dict[str, Any]]:
    """Build a model for ``data``: zoo names get arguments fitted to the data shape."""
    from curvature.models import MODELS, build_model, default_kwargs

    if model in MODELS:
        kw = {**default_kwargs(model, data.input_shape, data.num_outputs), **kwargs}
    else:
        kw = dict(kwargs)
    return build_model(model, **kw), MODELS.get(model, model), kw


def run(args: argparse.Namespace) -> int:
    """Run ``curvature train``; returns the exit status."""
    import torch

    from curvature.atomic import atomic_directory
    from curvature.data import load_dataset
    from curvature.inputs import check_data_fits, make_loss
    from curvature.train import train

    say = messenger(args)
    check_out(args.out)
    check_device(args.device)
    import_factory_module(args.model)
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
