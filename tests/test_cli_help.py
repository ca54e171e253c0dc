"""`--help` of every command reads as prose at a normal width: no sentence broken mid-way
where the docstring's source line happened to end (typer keeps those line breaks)."""

from __future__ import annotations

import itertools
import re

import pytest
from typer.testing import CliRunner

from modelserver import cli

BOX_ROW = re.compile(r"^│ (.*?) *│$")


def _help(*args: str, width: int) -> str:
    cli._register_all()
    result = CliRunner().invoke(cli.app, [*args, "--help"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    return result.output


def _broken_lines(lines: list[str], width: int) -> list[str]:
    """Lines of a paragraph that end although the next line's first word would have fit."""
    broken = []
    for line, following in itertools.pairwise(lines):
        if not line.strip() or not following.strip():
            continue
        next_word = following.split()[0]
        if len(line.rstrip()) + 1 + len(next_word) <= width:
            broken.append(f"{line.rstrip()!r} / {following.strip()!r}")
    return broken


def _commands() -> list[str]:
    cli._register_all()
    return [c.name or c.callback.__name__ for c in cli.app.registered_commands if c.callback]


@pytest.mark.parametrize("width", [80, 100])
def test_the_list_of_commands_wraps_only_at_the_width(width: int) -> None:
    rows = [m.group(1) for line in _help(width=width).splitlines() if (m := BOX_ROW.match(line))]
    commands = [r for r in rows if not r.startswith("--")]
    # The descriptions column: what follows the command name (or the blank under it).
    column = min(len(r) - len(r.lstrip()) for r in commands if r.startswith(" "))
    text_width = width - 4 - column  # "│ " and " │" around the row
    cells: list[list[str]] = []
    for row in commands:
        if not row.startswith(" "):
            cells.append([])
        cells[-1].append(row[column:])
    broken = [b for cell in cells for b in _broken_lines(cell, text_width)]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("command", ["bench", "demo", "up", "logs", "status"])
def test_a_commands_description_wraps_only_at_the_width(command: str) -> None:
    width = 80
    shown = _help(command, width=width).splitlines()
    start = next(i for i, line in enumerate(shown) if line.lstrip().startswith("Usage:")) + 2
    end = next(i for i, line in enumerate(shown) if line.startswith("╭"))
    description = [line[1:] for line in shown[start:end]]  # one space of margin
    assert any(line.strip() for line in description), shown
    broken = _broken_lines(description, width - 2)
    assert not broken, "\n".join(broken)


def test_every_commands_help_is_its_docstring_in_one_line_per_paragraph() -> None:
    for name in _commands():
        command = next(c for c in cli.app.registered_commands
                       if (c.name or c.callback.__name__) == name)
        assert command.help and "\n" not in command.help.replace("\n\n", ""), name
