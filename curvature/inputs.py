"""What a user hands the application rooms (train, analyze, demo), checked in one place.

* :class:`InputError`: the one error for bad input to the application (unknown loss,
  data that does not fit the model, an output path that is a file...); the ``curvature``
  command turns it into exit status 2 with its one-line message;
* :func:`make_loss`: the losses by name, ``"ce"`` and ``"mse"`` -- the only place they
  are defined (:meth:`curvature.data.Dataset.loss_fn` returns these too, so one name
  means one loss everywhere);
* :func:`check_data_fits`: a two-example trial run of model and loss, before any long
  computation starts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from curvature.data_loop import eval_mode
from curvature.errors import InputError

__all__ = ["LOSSES", "InputError", "MeanSquaredError", "check_data_fits", "make_loss"]

LOSSES = ("ce", "mse")
"""Loss names accepted by :func:`make_loss` (``--loss``)."""


class MeanSquaredError(nn.MSELoss):
    """``mean((outputs - targets)^2)`` over every element, as :class:`torch.nn.MSELoss`.

    Targets are first brought to the outputs' form: integer class labels ``[N]`` are
    one-hot encoded to ``[N, C]`` (``C = outputs.shape[-1]``), other targets are
    reshaped to ``outputs.shape`` and cast to the outputs' dtype. Targets that already
    have that form give exactly :class:`torch.nn.MSELoss`.
    """

    def forward(self, out: Tensor, y: Tensor) -> Tensor:
        if not y.is_floating_point():
            y = nn.functional.one_hot(y, out.shape[-1]).to(out.dtype)
        return super().forward(out, y.reshape(out.shape).to(out.dtype))


def make_loss(name: str) -> nn.Module:
    """``"ce"``: mean cross-entropy; ``"mse"``: :class:`MeanSquaredError` (mean squared
    error, one-hot targets for class labels).

    Raises:
        InputError: another name.
    """
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "mse":
        return MeanSquaredError()
    raise InputError(f"unknown loss {name!r}; choose ce or mse")


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_data_fits(
    model: nn.Module, loss_fn: Callable, x: Tensor, y: Tensor, what: str,
    *, labels: Tensor | None = None,
) -> None:
    """Run the model and the loss on two examples of ``(x, y)``, and check every class
    label (``labels``, default ``y``) against the model's output width; raise
    :class:`InputError` ("data of shape ... does not fit model ...") if anything fails.
    The model's mode is restored."""
    device = next(iter(model.parameters())).device
    try:
        with eval_mode(model), torch.no_grad():
            out = model(x[:2].to(device))
            loss = loss_fn(out, y[:2].to(device))
            if loss.ndim != 0:
                raise RuntimeError(f"the loss is not a scalar (shape {list(loss.shape)})")
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"data of shape {_shape(x)} (targets {_shape(y)}) does not fit model "
            f"{what}: {first}"
        ) from None
    labels = y if labels is None else labels
    if not labels.is_floating_point() and len(labels) and out.ndim == 2:
        # two examples cannot reveal every class: check all labels against the outputs
        top = int(labels.max())
        if top >= out.shape[-1] or int(labels.min()) < 0:
            raise InputError(
                f"data of shape {_shape(x)} has class labels up to {top} but model {what} "
                f"has {out.shape[-1]} outputs: the data does not fit the model"
            )
