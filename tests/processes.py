"""Is a process (or a process group) a test started still there? One answer for every test."""

from __future__ import annotations

import os

import psutil


def pid_exists(pid: int) -> bool:
    """The process exists (a zombie not yet reaped counts: signal 0 reaches it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Some process of the group `pgid` still exists (a zombie counts)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def still_running(pid: int) -> bool:
    """The process exists and is not a zombie (it has not exited)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
