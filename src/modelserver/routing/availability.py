"""`{state_dir}/availability.json`: which models have no usable worker, since when, why.

The seed set a "running" flag to false in a state file after MAX_RETRY failures and never
set it back. Here each model has a record, `{"available": bool, "since": unix time,
"reasons": {worker URL: why it is out}}`, written (atomically, off the event loop) only
when a model goes down or comes back. Writes go one at a time, each from the state at the
moment it starts, so the file always ends with the latest state (two writes in threads at
once could land in either order).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from modelserver import _files

log = logging.getLogger(__name__)

AVAILABILITY_FILE = "availability.json"


class Availability:
    def __init__(self, state_dir: Path | None, wall_clock: Callable[[], float]) -> None:
        self.state_dir = state_dir
        self._wall_clock = wall_clock
        self.down: dict[str, dict[str, Any]] = {}
        """model -> its record, for models that had no usable worker."""
        self._models: Iterable[str] = ()
        self._dirty = False
        self._writer: asyncio.Future[None] | None = None
        """The one write under way; it writes again while changes keep coming."""

    async def mark_down(self, model: str, reasons: dict[str, str], models: Iterable[str]) -> None:
        if model in self.down:
            self.down[model]["reasons"] = reasons  # still down: no rewrite
            return
        self.down[model] = {"available": False, "since": self._wall_clock(), "reasons": reasons}
        await self._write(models)

    async def mark_up(self, model: str, models: Iterable[str]) -> None:
        if self.down.pop(model, None) is not None:
            await self._write(models)

    async def settle(self) -> None:
        """Return once no write is under way."""
        if self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write(self, models: Iterable[str]) -> None:
        if self.state_dir is None:
            return
        self._models = models
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_while_changed())
        # Shielded: a caller cancelled mid-write must not leave a thread writing while
        # the next write starts.
        await asyncio.shield(self._writer)

    async def _write_while_changed(self) -> None:
        while self._dirty and self.state_dir is not None:
            self._dirty = False
            now = self._wall_clock()
            record: dict[str, Any] = {
                model: {"available": True, "since": now, "reasons": {}}
                for model in self._models
                if model not in self.down
            }
            record.update(self.down)
            path = self.state_dir / AVAILABILITY_FILE
            try:
                await asyncio.to_thread(_files.atomic_write_json, path, record)
            except OSError as exc:
                log.warning("cannot write %s: %s", path, exc)
