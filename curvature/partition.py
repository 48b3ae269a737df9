"""Partitions of a model's parameters into named blocks (for :func:`curvature.block_spectra`).

A partition is an ordered list of ``(block name, parameter names)`` with every
parameter in at most one block; the block-diagonal Hessian keeps ``H_bb`` for each
block ``b`` and drops the couplings between blocks. The kinds:

* ``"parameter"``: each parameter tensor (with ``requires_grad``) is a block, named as in
  ``model.named_parameters()``;
* ``"module"``: each module that owns parameters directly (``recurse=False``) is a block
  of those parameters, named by its qualified module name (the model itself: ``"(root)"``);
* ``"layer"``: each top-level child of the model (``model.named_children()``) with
  parameters is a block of all its parameters; parameters owned by the model itself form
  the block ``"(root)"``;
* a ``dict`` ``{name: [parameters or parameter names]}``: user-given groups, in the
  dict's order. Parameters in no group are left out of the analysis.

Tied (shared) parameters: a tensor registered under several names (e.g. a language
model's tied embedding and output weights) is one parameter, known by the first name
``model.named_parameters()`` gives it and assigned to the block of that first owner
(module order of ``model.named_modules()``); a later owner gets a block only if it
owns other parameters. In a user group an alias name resolves to the same tensor, so
naming one tensor twice (by two aliases, or in two groups) is refused as an overlap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

__all__ = ["KINDS", "partition"]

KINDS = ("module", "layer", "parameter")
"""The automatic partitions; a ``dict`` of groups is the fourth kind."""

ROOT = "(root)"


def _canonical(model: nn.Module) -> tuple[dict[str, str], dict[int, str]]:
    """Alias name -> canonical name, and tensor id -> canonical name."""
    by_id: dict[int, str] = {}
    for name, p in model.named_parameters():
        by_id.setdefault(id(p), name)
    aliases = {name: by_id[id(p)] for name, p in model.named_parameters(remove_duplicate=False)}
    return aliases, by_id


def partition(model: nn.Module, blocks: str | Mapping[str, Sequence[Tensor | str]]) -> list[tuple[str, list[str]]]:
    """Blocks of ``model``'s parameters as ``[(block name, [parameter names])]``.

    Parameter names are canonical (``model.named_parameters()``); blocks keep the order
    of the model (or of the dict), parameters the order of ``named_parameters()``.

    Raises:
        ValueError: an unknown kind, a name that is no parameter of the model, a tensor
            that is not one of its parameters, an empty group or a group list that is
            empty, a parameter in two groups, or no trainable parameters.
        TypeError: a group that is not a list of tensors/names.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    aliases, by_id = _canonical(model)
    if isinstance(blocks, Mapping):
        return _groups(blocks, aliases, by_id)
    if not isinstance(blocks, str) or blocks not in KINDS:
        raise ValueError(
            f"blocks must be one of {KINDS} or a dict {{name: [parameters]}}, got {blocks!r}"
        )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("model has no trainable parameters (none with requires_grad)")
    if blocks == "parameter":
        return [(n, [n]) for n in trainable]
    owner: dict[str, str] = {}  # canonical parameter name -> block name, first owner wins
    for mod_name, module in model.named_modules():
        if blocks == "layer":
            block = mod_name.split(".")[0] if mod_name else ROOT
        else:
            block = mod_name or ROOT
        for local, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{local}" if mod_name else local
            owner.setdefault(aliases.get(full, by_id[id(p)]), block)
    out: dict[str, list[str]] = {}
    for n in trainable:
        out.setdefault(owner[n], []).append(n)
    return list(out.items())


def _groups(groups: Mapping, aliases: dict[str, str], by_id: dict[int, str]) -> list[tuple[str, list[str]]]:
    if not groups:
        raise ValueError("blocks is an empty dict: give at least one group")
    seen: dict[str, str] = {}
    out = []
    for block, members in groups.items():
        if not isinstance(block, str) or not block:
            raise TypeError(f"group names must be non-empty strings, got {block!r}")
        if isinstance(members, (str, Tensor)) or not isinstance(members, Sequence):
            raise TypeError(
                f"group {block!r} must be a list of parameters or parameter names, "
                f"got {type(members).__name__}"
            )
        if not members:
            raise ValueError(f"group {block!r} is empty")
        names = []
        for i, m in enumerate(members):
            if isinstance(m, str):
                if m not in aliases:
                    raise ValueError(f"group {block!r}: {m!r} is not a parameter name of the model")
                name = aliases[m]
            elif isinstance(m, Tensor):
                if id(m) not in by_id:
                    raise ValueError(
                        f"group {block!r}: item {i} (shape {list(m.shape)}) is not a parameter "
                        "of the model"
                    )
                name = by_id[id(m)]
            else:
                raise TypeError(
                    f"group {block!r}: item {i} must be a Tensor or a name, got {type(m).__name__}"
                )
            if name in seen:
                where = "twice in" if seen[name] == block else f"in {seen[name]!r} and in"
                raise ValueError(f"parameter {name!r} is {where} group {block!r}: groups must not overlap")
            seen[name] = block
            names.append(name)
        out.append((block, names))
    return out
