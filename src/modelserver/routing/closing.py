"""The router's work in progress, so that `Router.close()` stops it cleanly.

Every request being routed (`Router.forward`, until it returns) runs inside
`InFlight.guard()`. `stop()` refuses new work, cancels the tasks inside a guard and waits
until each has left it. The caller of each gets `ClientClosed`, or its own
`CancelledError` if it was cancelling too. Because the attempts end by cancellation, no
worker gets a verdict from them: closing the client never opens a breaker or marks a model
down (it used to: the pool closed under live requests, which then failed over). Streams
already handed out are ended by `StreamRelay.abandon()` instead (no task to cancel there).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from modelserver.errors import ClientClosed

REFUSED = "the client is closed: no new request after close()"
STOPPED = "the client was closed while this request was in flight"


class InFlight:
    """Tasks currently inside a guard, with how deeply (a guard may nest in one task)."""

    def __init__(self) -> None:
        self.closing = False
        self._tasks: dict[asyncio.Task[Any], int] = {}
        self._stopping: set[asyncio.Task[Any]] = set()
        self._left: asyncio.Event | None = None

    def guard(self) -> _Guard:
        """Context manager around one request; raises `ClientClosed` on entry once closing."""
        return _Guard(self)

    async def stop(self) -> None:
        """Refuse new work; cancel every task inside a guard but the caller's own, and
        return when all of them have left their guard."""
        self.closing = True
        me = asyncio.current_task()
        while waiting := [task for task in self._tasks if task is not me]:
            self._left = asyncio.Event()
            for task in waiting:
                if task not in self._stopping:
                    self._stopping.add(task)
                    task.cancel()
            await self._left.wait()
        self._left = None

    def _leave(self, task: asyncio.Task[Any]) -> bool:
        """`task` left its outermost guard; True if it was cancelled by `stop()` (and that
        cancellation is now taken back)."""
        del self._tasks[task]
        if self._left is not None:
            self._left.set()
        if task not in self._stopping:
            return False
        self._stopping.discard(task)
        return True


class _Guard:
    __slots__ = ("_in_flight", "_task")

    def __init__(self, in_flight: InFlight) -> None:
        self._in_flight = in_flight
        self._task: asyncio.Task[Any] | None = None

    def __enter__(self) -> None:
        in_flight = self._in_flight
        if in_flight.closing:
            raise ClientClosed(REFUSED)
        task = asyncio.current_task()
        if task is not None:
            in_flight._tasks[task] = in_flight._tasks.get(task, 0) + 1
        self._task = task

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task = self._task
        if task is None:
            return
        tasks = self._in_flight._tasks
        depth = tasks[task] - 1
        if depth:
            tasks[task] = depth
            return
        if not self._in_flight._leave(task):
            return
        # Our own cancellation: take it back, and unless the caller cancelled as well, tell
        # the caller why its request stopped.
        if (
            task.uncancel() == 0
            and exc_type is not None
            and issubclass(exc_type, asyncio.CancelledError)
        ):
            raise ClientClosed(STOPPED) from None
