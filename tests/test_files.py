"""Atomic file replacement: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelserver._files import atomic_write_json, atomic_write_with, read_json


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    target.write_bytes(b"the old, whole file")

    def half_then_fail(path: Path) -> None:
        path.write_bytes(b"half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write_with(target, half_then_fail)

    assert target.read_bytes() == b"the old, whole file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_json_round_trips_with_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "state.json"
    atomic_write_json(target, {"workers": [1, 2]}, mode=0o600)
    assert read_json(target) == {"workers": [1, 2]}
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]
