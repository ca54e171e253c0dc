"""availability.json ends with the latest state even when a write is slow and the state
changes while it runs (two writes in threads at once could land in either order)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from modelserver import _files
from modelserver.routing import availability
from modelserver.routing.availability import AVAILABILITY_FILE, Availability


async def test_a_model_back_up_during_a_slow_down_write_ends_up_available(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_write_started, let_first_write_finish = threading.Event(), threading.Event()
    calls: list[Path] = []
    written: list[bool] = []
    real_write = _files.atomic_write_json

    def slow_first_write(path: Path, record: Any) -> None:
        calls.append(path)
        if len(calls) == 1:
            first_write_started.set()
            assert let_first_write_finish.wait(timeout=60)
        written.append(record["m"]["available"])
        real_write(path, record)

    monkeypatch.setattr(availability._files, "atomic_write_json", slow_first_write)
    state = Availability(tmp_path, wall_clock=lambda: 1.0)
    down = asyncio.create_task(state.mark_down("m", {"http://w:1": "refused"}, ["m"]))
    await asyncio.to_thread(first_write_started.wait, 60)
    up = asyncio.create_task(state.mark_up("m", ["m"]))  # the model came back meanwhile
    await asyncio.sleep(0)  # let it ask for its write (a yield, not a wait on time)
    let_first_write_finish.set()
    await asyncio.gather(down, up)
    assert written == [False, True]  # one after the other, the latest last
    assert _files.read_json(tmp_path / AVAILABILITY_FILE)["m"]["available"] is True


async def test_writes_asked_for_during_a_write_are_folded_into_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[Path] = []
    written: list[dict[str, Any]] = []

    def held_write(path: Path, record: Any) -> None:
        calls.append(path)
        if len(calls) == 1:
            started.set()
            assert release.wait(timeout=60)
        written.append(record)

    monkeypatch.setattr(availability._files, "atomic_write_json", held_write)
    state = Availability(tmp_path, wall_clock=lambda: 1.0)
    models = ["a", "b", "c"]
    first = asyncio.create_task(state.mark_down("a", {}, models))
    await asyncio.to_thread(started.wait, 60)
    rest = [asyncio.create_task(state.mark_down(m, {}, models)) for m in ("b", "c")]
    await asyncio.sleep(0)  # let them ask for their writes (a yield, not a wait on time)
    release.set()
    await asyncio.gather(first, *rest)
    assert len(written) == 2  # the first, then one holding both later changes
    assert {m: r["available"] for m, r in written[-1].items()} == dict.fromkeys(models, False)
