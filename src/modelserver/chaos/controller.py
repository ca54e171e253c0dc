"""Carry out chaos actions on a live fleet of simulated engines.

A kill is SIGKILL to the engine's pid as the launcher's state file records it, once its
start time shows it is still that process (the engine crashes; its supervisor restarts it).
Hang, slow and 5xx are the simulator's run-time faults (`POST /sim/faults`), lifted after
the action's hold time. A worker is "broken" from our action until its fault is lifted, or
(kill) until the state file shows it ready under a new pid; it is healthy when the state
file says ready and we have not broken it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable

import aiohttp

from modelserver.chaos.schedule import Action, Chaos
from modelserver.chaos.timeline import ActionRecord, StateWatcher, Timeline
from modelserver.config import Fleet
from modelserver.launcher.state import process_is

FAULTS_PATH = "/sim/faults"


class ChaosController:
    def __init__(
        self,
        fleet: Fleet,
        host: str,
        chaos: Chaos,
        watcher: StateWatcher,
        timeline: Timeline,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._workers = {w.name: w for w in fleet.workers(host)}
        self._chaos = chaos
        self._watcher = watcher
        self._timeline = timeline
        self._session = session
        self._clock = clock
        self._broken: dict[str, int | None] = {}
        """name -> killed pid (None: a fault we set and have not lifted yet)."""
        self._lifts: set[asyncio.Task[None]] = set()

    def healthy(self) -> dict[str, list[str]]:
        """model -> names of workers ready in the state file and not broken by us."""
        out: dict[str, list[str]] = {}
        for name, spec in self._workers.items():
            record = self._watcher.current.get(spec.url, {})
            ready = record.get("status") == "ready" and record.get("pid") is not None
            killed = self._broken.get(name)
            if ready and killed is not None and record.get("pid") != killed:
                del self._broken[name]  # restarted under a new pid
            if ready and name not in self._broken:
                out.setdefault(spec.model, []).append(name)
            else:
                out.setdefault(spec.model, [])
        return out

    async def run(self, until: float) -> None:
        """Act at seeded random moments until the wall clock reaches `until`."""
        while True:
            gap = self._chaos.next_gap()
            if self._clock() + gap >= until:
                return
            await asyncio.sleep(gap)
            self._watcher.read_once()
            action = self._chaos.choose(self.healthy())
            if action is None:
                self._timeline.actions.append(ActionRecord(self._clock(), "skip", "", ""))
                continue
            await self.execute(action)

    async def execute(self, action: Action) -> None:
        spec = self._workers[action.target]
        record = self._watcher.current.get(spec.url, {})
        pid = record.get("pid")
        if action.kind == "kill":
            # Only the very process the state file names (same start time): a pid read a
            # moment ago may already belong to another process on a shared machine.
            if pid is None or not process_is(pid, record.get("create_time")):
                return
            self._broken[action.target] = pid
            self._timeline.actions.append(
                ActionRecord(self._clock(), "kill", spec.url, spec.name, pid)
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        self._broken[action.target] = None
        self._timeline.actions.append(
            ActionRecord(self._clock(), action.kind, spec.url, spec.name, pid)
        )
        await self._set_faults(spec.url, action.spec, spec.api_key)
        task = asyncio.create_task(self._lift_later(action, spec.url, spec.api_key))
        self._lifts.add(task)
        task.add_done_callback(self._lifts.discard)

    async def _lift_later(self, action: Action, url: str, api_key: str | None) -> None:
        await asyncio.sleep(action.hold_s)
        await self._set_faults(url, "", api_key)
        self._broken.pop(action.target, None)
        self._timeline.actions.append(ActionRecord(self._clock(), "clear", url, action.target))

    async def clear_all(self) -> None:
        """Lift every fault now (the end of a run)."""
        for task in list(self._lifts):
            task.cancel()
        for spec in self._workers.values():
            await self._set_faults(spec.url, "", spec.api_key)
        self._broken = {k: v for k, v in self._broken.items() if v is not None}

    async def _set_faults(self, url: str, spec: str, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # A worker just killed or restarting may not answer: the fault then dies with it.
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self._session.post(
                url + FAULTS_PATH, json={"spec": spec}, headers=headers,
                timeout=aiohttp.ClientTimeout(total=2.0),
            ) as response:
                await response.read()
