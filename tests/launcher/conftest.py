from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process in its own session, standing for a worker a previous launcher left."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
