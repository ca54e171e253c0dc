"""Files that readers may open while we write them: write aside, fsync, rename over."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so a reader sees the old file or the new one, never half."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data), mode)


def atomic_write_with(path: Path, write: Callable[[Path], object], mode: int = 0o644) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it over `path`.

    The temporary file lives in the same folder (rename is atomic only within one file
    system) and is fsync'ed before the rename, and the folder after it, so a crash at any
    moment leaves one whole file: the old one or the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        _pause_for_crash_tests()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


TEST_WRITE_PAUSE_ENV = "MODELSERVER_TEST_WRITE_PAUSE_S"


def _pause_for_crash_tests() -> None:
    """Widen the write window (temporary file written, not yet renamed) when the crash-
    consistency tests ask for it, so their SIGKILL can land inside it. Unset: no pause."""
    pause = os.environ.get(TEST_WRITE_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def remove_temp_files(path: Path) -> list[str]:
    """Delete temporary files `atomic_write_bytes` left beside `path` when a kill cut a
    write short. Only the sole writer of `path` may call this (a live write would break)."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(path.parent):
            if name.startswith(f".{path.name}.") and name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path.parent / name)
                    removed.append(name)
    return removed


def atomic_write_json(path: Path, value: Any, mode: int = 0o644) -> None:
    atomic_write_bytes(path, orjson.dumps(value, option=orjson.OPT_INDENT_2), mode)


def read_json(path: Path) -> Any:
    """Read a JSON file written by `atomic_write_json`; FileNotFoundError if absent."""
    return orjson.loads(path.read_bytes())
