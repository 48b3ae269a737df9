"""Which model factory a checkpoint gets to call.

The factory string recorded in a file is data from the file: calling whatever callable
it names with the recorded keyword arguments would run code of the file's choosing
(``"subprocess:run"`` with ``args``, or ``build_model`` as a trampoline). A recorded
factory is therefore imported and called only if it is a zoo model
(:data:`curvature.models.MODELS`) or a model factory (an ``nn.Module`` subclass or a
function annotated to return one) defined at the top level of a module the caller
trusts; a factory the caller names explicitly is the caller's choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from curvature.errors import CheckpointError
from curvature.models import MODELS, ModelFactoryError, is_model_factory, resolve_factory

__all__ = ["choose_factory"]


def choose_factory(
    path: Path, recorded: str | None, given: str | None, trusted_modules: Sequence[str]
) -> str:
    """The factory to rebuild the model of ``path`` with (resolved once, so that it is
    known to import and name a callable).

    Args:
        path: the checkpoint (for messages).
        recorded: the factory recorded in the file (long form), ``None`` for a bare
            state dict.
        given: the factory the caller names (``model_factory``), or ``None``.
        trusted_modules: modules whose top-level model factories a file may name.

    Raises:
        CheckpointError: no factory at all, an untrusted recorded factory (decided from
            the string, before anything is imported), one that cannot be resolved, or
            a recorded one that is not a model factory defined in its module.
    """
    if given is None and recorded is None:
        raise CheckpointError(
            f"{path} is a bare state dict with no model factory recorded; name the model "
            f"with model_factory='package.module:function' (CLI: --model package.module:function)"
        )
    if given is None:
        _check_trusted(path, recorded, trusted_modules)
    factory = given if given is not None else recorded
    assert factory is not None
    try:
        fn = resolve_factory(factory)
    except ModelFactoryError as e:
        where = "given" if given is not None else f"recorded in {path}"
        raise CheckpointError(f"unknown model factory ({where}): {e}") from None
    except Exception as e:  # the module raised while importing: broken extension, syntax error
        cause = " ".join(str(e).split()) or "no message"
        raise CheckpointError(
            f"model factory {factory!r}: importing module {factory.split(':')[0]!r} failed: "
            f"{type(e).__name__}: {cause}"
        ) from None
    if given is None and factory not in MODELS.values() and not (
        getattr(fn, "__module__", None) == factory.split(":")[0] and is_model_factory(fn)
    ):
        raise CheckpointError(
            f"{path} names the factory {factory!r}, which is not a model factory defined in "
            f"its module (an nn.Module subclass or a function annotated '-> nn.Module'), so "
            f"it is not called; if you trust it, pass model_factory={factory!r} "
            f"(CLI: --model {factory})"
        )
    return factory


def _check_trusted(path: Path, factory: str, trusted_modules: Sequence[str]) -> None:
    """Only the zoo and top-level names in the caller's ``trusted_modules`` are called --
    decided from the string, before anything is imported."""
    if factory in MODELS.values():
        return
    module, _, attr = factory.partition(":")
    if isinstance(trusted_modules, str):
        trusted_modules = (trusted_modules,)
    if module in trusted_modules and attr.isidentifier():
        return
    raise CheckpointError(
        f"{path} names the model factory {factory!r}, which is neither a zoo model "
        f"({', '.join(sorted(MODELS))}) nor in trusted_modules, so it is not imported or "
        f"called; if you trust it, pass model_factory={factory!r} (CLI: --model {factory}) "
        f"or trusted_modules=[{module!r}]"
    )
