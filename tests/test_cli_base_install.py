"""The `modelserver` command in an environment with only the base install (no extras).

The test environment carries many packages the base install does not (click came in through
uvicorn and others while typer had stopped installing it), so a missing dependency can hide
in it. Here a fresh virtual environment gets `pip install <this checkout>` and nothing else,
and the command's usage errors and every `--help` run there.

Cost: building the environment takes about 15-20 s (pip reuses its cache), once per test
session; each command then runs in about a second (the whole file: about a minute on a
shared 2-core machine, up to two when it is busy).
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from modelserver import cli

CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `modelserver` executable of a fresh venv holding the base install only."""
    root = tmp_path_factory.mktemp("base-install") / "venv"
    venv.EnvBuilder(with_pip=True).create(root)
    python = root / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(CHECKOUT)],
        capture_output=True, text=True, timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return root / "bin" / "modelserver"


def _run(executable: Path, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH: the venv's own copy of modelserver must be the one that runs.
    return subprocess.run(
        [str(executable), *args], capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "100"},
    )


def _commands() -> list[tuple[str, ...]]:
    """Every command as its argv: the top-level ones, the groups and their commands."""
    cli._register_all()
    names: list[tuple[str, ...]] = [
        (c.name or (c.callback.__name__ if c.callback else ""),)
        for c in cli.app.registered_commands
    ]
    for group in cli.app.registered_groups:
        assert group.name and group.typer_instance
        names.append((group.name,))
        names += [(group.name, c.name or (c.callback.__name__ if c.callback else ""))
                  for c in group.typer_instance.registered_commands]
    assert ("up",) in names and ("demo",) in names and ("models",) in names, names
    return names


def test_the_base_install_lacks_the_test_only_packages(base_install: Path) -> None:
    # The point of this environment: a package only the extras bring is not there.
    python = base_install.parent / "python"
    for module in ("click", "openai", "pytest"):
        found = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
        assert found.returncode != 0, f"{module} is importable in the base install"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("up",), "Missing argument"),
        (("frobnicate",), "No such command 'frobnicate'"),
        (("logs", "fleet.toml"), "give a worker"),
        (("status", "--no-such-option", "fleet.toml"), "No such option"),
    ],
    ids=["up-without-a-fleet", "an-unknown-command", "logs-without-a-worker", "unknown-option"],
)
def test_a_usage_error_is_a_clean_message_and_exit_code_2(
    base_install: Path, tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    (tmp_path / "fleet.toml").write_text(
        '[[hosts]]\nname = "here"\n[[models]]\nname = "m"\nbackend = "sim"\nport = 30000\n'
    )
    done = _run(base_install, *args, tmp_path=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "Usage:" in done.stderr and says in done.stderr, done.stderr


def test_every_commands_help_works_in_the_base_install(
    base_install: Path, tmp_path: Path
) -> None:
    for command in [*_commands(), ()]:
        args = (*command, "--help")
        done = _run(base_install, *args, tmp_path=tmp_path)
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        assert "Usage:" in done.stdout, done.stdout


def test_the_command_runs_under_the_interpreter_running_these_tests_too() -> None:
    # The same errors through `python -m modelserver`, in the test environment.
    done = subprocess.run([sys.executable, "-m", "modelserver", "frobnicate"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
