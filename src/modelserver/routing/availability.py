"""`{state_dir}/availability.json`: which models have no usable worker, since when, why.

The seed set a "running" flag to false in a state file after MAX_RETRY failures and never
set it back. Here each model has a record, `{"available": bool, "since": unix time,
"reasons": {worker URL: why it is out}}`, written (atomically, off the event loop) only
when a model goes down or comes back.
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

    async def mark_down(self, model: str, reasons: dict[str, str], models: Iterable[str]) -> None:
        if model in self.down:
            self.down[model]["reasons"] = reasons  # still down: no rewrite
            return
        self.down[model] = {"available": False, "since": self._wall_clock(), "reasons": reasons}
        await self._write(models)

    async def mark_up(self, model: str, models: Iterable[str]) -> None:
        if self.down.pop(model, None) is not None:
            await self._write(models)

    async def _write(self, models: Iterable[str]) -> None:
        if self.state_dir is None:
            return
        now = self._wall_clock()
        record: dict[str, Any] = {
            model: {"available": True, "since": now, "reasons": {}}
            for model in models
            if model not in self.down
        }
        record.update(self.down)
        path = self.state_dir / AVAILABILITY_FILE
        try:
            await asyncio.to_thread(_files.atomic_write_json, path, record)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)
