"""``curvature <command> --help``: every option with a default states it, and train and
analyze list the zoo models and the ``--data`` datasets (in process: no interpreter
start-up)."""

from __future__ import annotations

import re

import pytest

from curvature.cli import build_parser, main
from curvature.data import DATASETS
from curvature.models import MODELS

REQUIRED = {"train": ["--out", "x"], "analyze": ["ckpt", "--out", "x"],
            "compare": ["a"], "demo": []}


def _help(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _option_blocks(text: str) -> dict[str, str]:
    """Option string -> its help entry (continuation lines joined)."""
    blocks: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        m = re.match(r"^  (--[\w-]+)", line)
        if m:
            key = m.group(1)
            blocks[key] = line
        elif key is not None and line.startswith("    "):
            blocks[key] += " " + line.strip()
        else:
            key = None
    return blocks


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_every_default_is_stated(capsys, command):
    blocks = _option_blocks(_help(capsys, command))
    defaults = vars(build_parser().parse_args([command, *REQUIRED[command]]))
    documented = 0
    for dest, value in defaults.items():
        if dest in ("command", "run") or value is None or value is False or value in ([], {}):
            continue
        option = "--" + dest.replace("_", "-")
        if option not in blocks or option in REQUIRED[command]:  # positional or required
            continue
        assert "default" in blocks[option], (option, blocks[option])
        documented += 1
    assert documented >= 2


@pytest.mark.parametrize("command", ["train", "analyze"])
def test_help_lists_zoo_models_and_datasets(capsys, command):
    text = _help(capsys, command)
    for name in [*MODELS, *DATASETS]:
        assert re.search(rf"^  {re.escape(name)}: \w+=", text, re.MULTILINE), name
    assert "--data syntax" in text and "package.module:function" in text
