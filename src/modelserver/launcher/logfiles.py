"""Engine and supervisor logs that do not fill the disk: rotation by copy and truncate.

An engine's stdout and stderr are its log file itself, opened with O_APPEND
(`SubprocessSpawner`), never a pipe to the launcher. Why not a pipe the supervisor drains
into rotating files: the pipe's reader dies with the launcher, so an engine the next launcher
adopts after a crash would write into a pipe nobody reads (it blocks once the pipe is full,
or dies of SIGPIPE). With the file, nothing between the engine and its log can die; the
launcher only trims it from outside, as logrotate's `copytruncate` does:

    when `x.log` is larger than `launcher.log_max_bytes`, x.log.N-1 -> x.log.N ... x.log.1 ->
    x.log.2 (N = `launcher.log_keep`; the oldest falls off), the end of x.log (at most
    log_max_bytes) is copied to x.log.1, and x.log is truncated to nothing.

O_APPEND is what makes truncating safe: every write of the engine lands at the file's
current end, so after the truncation it writes from offset 0 on, with no hole of zeros where
its old offset was. While no launcher runs, the engine's output is still captured (the log
only grows until a launcher adopts the engine and trims it again). The price of
copy-truncate: bytes written between the end of the copy and the truncation (a few
microseconds: the copy reads on until the file's end) are lost, and the live file can pass
the size by what is written between two checks (`launcher.log_check_s`).

The supervisor's own log (the detached supervisor's stdout and stderr, also O_APPEND) is
trimmed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from modelserver.clock import Clock
from modelserver.config import LauncherConfig
from modelserver.launcher.state import LOG_MODE

log = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20


def rotated(path: Path, generation: int) -> Path:
    """`x.log.1` (the newest rotated file) ... `x.log.N`."""
    return path.with_name(f"{path.name}.{generation}")


def rotate_if_large(path: Path, max_bytes: int, keep: int) -> bool:
    """Rotate `path` if it is larger than `max_bytes`, keeping `keep` rotated files (0: only
    truncate). True if it rotated."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    if keep > 0:
        for generation in range(keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(rotated(path, generation), rotated(path, generation + 1))
        fd = os.open(rotated(path, 1), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, LOG_MODE)
        with open(path, "rb") as source, os.fdopen(fd, "wb") as target:
            # A file that grew far past the size (no launcher watched it) keeps only its end.
            source.seek(max(0, size - max_bytes))
            while chunk := source.read(COPY_CHUNK):  # on to the end, whatever came meanwhile
                target.write(chunk)
            os.truncate(path, 0)
    else:
        os.truncate(path, 0)
    return True


def rotate_all(paths: Iterable[Path], max_bytes: int, keep: int) -> list[Path]:
    """Rotate each of `paths` that is too large; the ones rotated. A file that cannot be
    rotated (a full disk, a permission) is logged and left for the next round."""
    done = []
    for path in paths:
        try:
            if rotate_if_large(path, max_bytes, keep):
                done.append(path)
        except OSError as exc:
            log.warning("cannot rotate %s: %s", path, exc)
    return done


async def keep_logs_capped(
    paths: Callable[[], Iterable[Path]], settings: LauncherConfig, clock: Clock
) -> None:
    """Every `settings.log_check_s`, rotate the logs `paths()` names (asked each round: the
    workers may change); until cancelled."""
    while True:
        await asyncio.to_thread(
            rotate_all, list(paths()), settings.log_max_bytes, settings.log_keep
        )
        await clock.sleep(settings.log_check_s)


def read_last_lines(path: Path, lines: int, max_bytes: int) -> tuple[list[bytes], int]:
    """The last `lines` lines of a log, reaching into `x.log.1` when the live file was just
    truncated and holds fewer; and the live file's size (where following it goes on). Reads
    at most `max_bytes` of each file (a log no launcher trimmed can be huge)."""
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, end - max_bytes))
        data = handle.read(end - handle.tell())
    found = data.splitlines()
    if len(found) < lines:
        with contextlib.suppress(OSError), open(rotated(path, 1), "rb") as older:
            older.seek(0, os.SEEK_END)
            older.seek(max(0, older.tell() - max_bytes))
            found = older.read().splitlines() + found
    return (found[-lines:] if lines > 0 else []), end
