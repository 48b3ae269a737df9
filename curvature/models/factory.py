"""Models by name: the zoo's short names (:data:`MODELS`) and ``"package.module:function"``
strings resolved to a callable that builds an ``nn.Module`` (:func:`build_model`).

A checkpoint records such a string and the factory's JSON keyword arguments
(:mod:`curvature.checkpoint`); resolving imports the named module and looks the
attribute up, nothing else is evaluated.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from curvature.errors import ModelFactoryError

__all__ = ["MODELS", "ModelFactoryError", "build_model", "is_model_factory", "resolve_factory"]

MODELS: dict[str, str] = {
    "mlp": "curvature.models:mlp",
    "cnn": "curvature.models:cnn",
    "cnn1d": "curvature.models:cnn1d",
    "resnet20": "curvature.models:resnet20",
    "resnet": "curvature.models:resnet",
    "vgg": "curvature.models:vgg",
    "vit": "curvature.models:vit",
    "transformer": "curvature.models:transformer",
}
"""Short model names accepted by :func:`build_model` and the CLI, and their factories."""


def resolve_factory(factory: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"`` (or a short name in :data:`MODELS`).

    The module is imported with :func:`importlib.import_module` and the attribute
    (a dotted path such as ``"Class.method"`` is allowed) is looked up with
    ``getattr``; nothing else is evaluated.

    Raises:
        ModelFactoryError: malformed string, missing module or attribute, or not callable.
    """
    if not isinstance(factory, str) or not factory.strip():
        raise ModelFactoryError(
            f"model factory must be a non-empty string 'package.module:function' or one of "
            f"{sorted(MODELS)}, got {factory!r}"
        )
    spec = MODELS.get(factory, factory)
    if spec.count(":") != 1:
        raise ModelFactoryError(
            f"model factory {factory!r} is neither a known model ({', '.join(sorted(MODELS))}) "
            f"nor of the form 'package.module:function'"
        )
    module_name, attr = spec.split(":")
    if not module_name or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise ModelFactoryError(
            f"model factory {factory!r} must be of the form 'package.module:function'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelFactoryError(
            f"model factory {factory!r}: cannot import module {module_name!r} ({e})"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelFactoryError(
                f"model factory {factory!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise ModelFactoryError(
            f"model factory {factory!r} names a {type(obj).__name__}, which is not callable"
        )
    return obj


def is_model_factory(obj: Any) -> bool:
    """Whether ``obj`` declares that it builds models: an ``nn.Module`` subclass, or a
    function whose return annotation is one (as every factory of the zoo)."""
    if inspect.isclass(obj):
        return issubclass(obj, nn.Module)
    try:
        ret = inspect.signature(obj, eval_str=True).return_annotation
    except (TypeError, ValueError, NameError, SyntaxError, AttributeError):
        return False
    return inspect.isclass(ret) and issubclass(ret, nn.Module)


def build_model(factory: str, **kwargs: Any) -> nn.Module:
    """Build a model from a factory string and keyword arguments.

    Args:
        factory: ``"package.module:function"`` (e.g. ``"curvature.models:mlp"``) or a
            short name from :data:`MODELS` (e.g. ``"mlp"``).
        **kwargs: keyword arguments of the factory.

    Returns:
        the ``nn.Module`` the factory returns. Weights are drawn from PyTorch's global
        generator: call ``torch.manual_seed`` first for reproducible weights.

    Raises:
        ModelFactoryError: the factory cannot be resolved, rejects the arguments, or
            does not return an ``nn.Module``.
    """
    fn = resolve_factory(factory)
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise ModelFactoryError(
            f"model factory {factory!r} does not accept the arguments {kwargs}: {e}"
        ) from None
    except ValueError:  # builtins without a signature: let the call decide
        pass
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelFactoryError(
            f"model factory {factory!r} returned a {type(model).__name__}, not an nn.Module"
        )
    return model
