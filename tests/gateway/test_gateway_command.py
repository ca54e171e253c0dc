"""`modelserver gateway`: its start line is one line in a log or a pipe, however long."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from modelserver.netinfo import free_port_range

FLEET_NAME = "the-research-groups-shared-inference-fleet-in-building-seven"


def test_the_start_line_is_one_line_when_the_output_is_a_pipe(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f'[fleet]\nname = "{FLEET_NAME}"\nstate_dir = "{tmp_path / "state"}"\n'
        '[[hosts]]\nname = "here"\ngpus = "none"\n'
        f'[[models]]\nname = "m"\nbackend = "sim"\nport = {free_port_range()}\n'
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "modelserver", "gateway", str(fleet),
         "--port", str(free_port_range())],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "80"},
    )
    try:
        assert gateway.stderr is not None
        first = ""
        while not first.startswith("gateway for fleet"):  # past any log line before it
            first = gateway.stderr.readline()  # blocks until the gateway says it serves
            assert first, "the gateway ended without its start line"
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.communicate(timeout=60)
    assert first.startswith(f"gateway for fleet '{FLEET_NAME}' on http://127.0.0.1:"), first
    assert first.rstrip("\n").endswith("Ctrl-C stops it"), first
    assert len(first) > 80
