"""The demo keeps modelserver's own log lines in its run folder, so a failure keeps its
traceback (the screen shows the demo's events, not log lines)."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from rich.console import Console

from modelserver.demo.run import DEMO_LOG, DemoOptions, run_demo
from modelserver.errors import ModelPrepareError


def test_a_demo_that_fails_keeps_the_traceback_in_its_run_folder(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "models"
    not_a_folder.write_text("a file where the models folder should be")
    run_dir = tmp_path / "run"
    screen = io.StringIO()
    options = DemoOptions(run_dir, not_a_folder, duration_s=5.0, live=False)
    with pytest.raises(ModelPrepareError):
        run_demo(options, Console(file=screen, width=200))
    log = run_dir / DEMO_LOG
    text = log.read_text()
    assert "the demo stopped on an error" in text
    assert "Traceback (most recent call last)" in text and "ModelPrepareError" in text
    assert str(log) in screen.getvalue()  # the screen says where to look
    assert not stat.S_IMODE(log.stat().st_mode) & stat.S_IRWXO
