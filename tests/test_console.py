"""Tables and lines printed whole when the output is not a terminal (a pipe, a log, CI)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from modelserver import cli
from modelserver._console import print_whole
from modelserver.launcher import status_commands

LONG_HOST = "gpu-node-in-the-basement-rack-7"
FLEET = f"""
[fleet]
name = "lab"
state_dir = "STATE"
[[hosts]]
name = "{LONG_HOST}"
address = "127.0.0.1"
gpus = "none"
[[models]]
name = "meta-llama-3.1-8b-instruct"
backend = "sim"
port = 30000
replicas = 3
"""
NAMES = [f"meta-llama-3.1-8b-instruct-{i}@{LONG_HOST}" for i in range(3)]


def _fleet(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET.replace("STATE", str(tmp_path / "state")))
    return path


def _assert_whole(shown: str, texts: list[str]) -> None:
    for text in texts:
        assert any(text in line for line in shown.splitlines()), f"{text} cut in\n{shown}"
    assert "…" not in shown, shown


def test_off_a_terminal_a_table_is_as_wide_as_its_rows() -> None:
    out = io.StringIO()  # not a terminal: rich would render at 80 columns
    table = Table()
    table.add_column("worker", overflow="fold")
    table.add_row("x" * 150)
    print_whole(Console(file=out), table)
    _assert_whole(out.getvalue(), ["x" * 150])


def test_on_a_terminal_a_table_keeps_the_terminals_width() -> None:
    out = io.StringIO()
    table = Table()
    table.add_column("worker", overflow="fold")
    table.add_row("x" * 150)
    print_whole(Console(file=out, force_terminal=True, color_system=None, width=60), table)
    assert max(len(line) for line in out.getvalue().splitlines()) <= 60


def test_validate_lists_long_worker_names_whole_in_a_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out))
    cli.validate(_fleet(tmp_path))
    _assert_whole(out.getvalue(), NAMES)


def test_status_lists_long_worker_names_whole_in_a_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(status_commands, "console", Console(file=out, soft_wrap=True))
    status_commands.status(_fleet(tmp_path), host=LONG_HOST)
    shown = out.getvalue()
    _assert_whole(shown, [*NAMES, f"no supervisor runs on {LONG_HOST}"])
