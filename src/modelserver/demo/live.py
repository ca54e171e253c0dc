"""How the demo shows itself while it runs: a live rich screen, or plain log lines.

Both get the same two things: events ("killed llama-8b-0 ...", "ready again ...") and, on
demand, a `Snapshot` of the fleet (per worker: launcher status, router status, requests, in
flight, EWMA latency, restarts). `LiveView` redraws the worker table a few times a second
under a header and the last events; `PlainView` (`--no-live`, CI, pipes) prints each event
as a line and a one-line progress report every few seconds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

LAUNCHER_STYLE = {"ready": "green", "starting": "yellow", "backoff": "red", "failed": "red bold",
                  "stopping": "yellow", "stopped": "dim"}


@dataclass(frozen=True)
class WorkerLine:
    name: str
    engine: str
    serves: str
    launcher: str
    """The supervisor's status of the worker (state file)."""
    router: str
    """"up", or why the router keeps requests away from it."""
    requests: int
    in_flight: int
    ewma: str
    """Learned latency: ms per output token (chat) or per request (embeddings)."""
    restarts: int
    pid: int | None


@dataclass(frozen=True)
class Snapshot:
    phase: str
    elapsed_s: float
    duration_s: float
    answered: int
    failed: int
    workers: tuple[WorkerLine, ...]


class View(Protocol):
    def start(self) -> None: ...

    def event(self, message: str, style: str = "") -> None: ...

    def tick(self) -> None:
        """Called often by the demo's loop: a chance to report progress."""
        ...

    def stop(self) -> None: ...


def worker_table(snapshot: Snapshot) -> Table:
    table = Table(expand=False, pad_edge=False)
    for column in ("worker", "engine", "model", "launcher"):
        table.add_column(column, no_wrap=True)
    table.add_column("router", no_wrap=True, overflow="ellipsis", min_width=12, max_width=36)
    for column in ("requests", "in flight", "EWMA", "restarts", "pid"):
        table.add_column(column, justify="right", no_wrap=True)
    for w in snapshot.workers:
        router_style = "green" if w.router == "up" else "red"
        table.add_row(
            w.name, w.engine, w.serves,
            Text(w.launcher, style=LAUNCHER_STYLE.get(w.launcher, "")),
            Text(w.router, style=router_style),
            str(w.requests), str(w.in_flight), w.ewma,
            Text(str(w.restarts), style="yellow" if w.restarts else ""),
            str(w.pid or "-"),
        )
    return table


def header(snapshot: Snapshot) -> Text:
    text = Text(f"{snapshot.phase}", style="bold")
    if snapshot.duration_s:
        text.append(f"   {snapshot.elapsed_s:4.0f} s / {snapshot.duration_s:.0f} s")
    text.append(f"   answered {snapshot.answered}   ")
    text.append(f"failed {snapshot.failed}", style="red bold" if snapshot.failed else "green")
    return text


class LiveView:
    def __init__(self, console: Console, snapshot: Callable[[], Snapshot],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._console = console
        self._snapshot = snapshot
        self._clock = clock
        self._started = clock()
        self._events: deque[Text] = deque(maxlen=9)
        self._live = Live(get_renderable=self._render, console=console, refresh_per_second=4,
                          transient=False, redirect_stdout=False, redirect_stderr=False)

    def _render(self) -> RenderableType:
        snapshot = self._snapshot()
        events = Group(*self._events) if self._events else Text("")
        return Group(header(snapshot), worker_table(snapshot),
                     Panel(events, title="what just happened", title_align="left"))

    def start(self) -> None:
        self._live.start()

    def event(self, message: str, style: str = "") -> None:
        self._events.append(Text(f"{self._clock() - self._started:5.1f} s  {message}", style=style))

    def tick(self) -> None:
        pass  # rich redraws on its own thread

    def stop(self) -> None:
        self._live.stop()


class PlainView:
    """One line per event, and a progress line every `every_s` seconds."""

    def __init__(self, console: Console, snapshot: Callable[[], Snapshot],
                 clock: Callable[[], float] = time.monotonic, every_s: float = 5.0) -> None:
        self._console = console
        self._snapshot = snapshot
        self._clock = clock
        self._started = clock()
        self._every_s = every_s
        self._last_report = self._started

    def start(self) -> None:
        pass

    def event(self, message: str, style: str = "") -> None:
        self._console.print(f"{self._clock() - self._started:5.1f} s  {message}",
                            style=style or None, highlight=False, soft_wrap=True)

    def tick(self) -> None:
        now = self._clock()
        if now - self._last_report < self._every_s:
            return
        self._last_report = now
        snap = self._snapshot()
        if not snap.workers:
            return
        workers = ", ".join(f"{w.name} {w.requests} req {w.launcher}"
                            + ("" if w.router == "up" else f" ({w.router})")
                            for w in snap.workers)
        self._console.print(
            f"{now - self._started:5.1f} s  {snap.phase}: answered {snap.answered}, failed "
            f"{snap.failed}; {workers}", highlight=False, soft_wrap=True,
        )

    def stop(self) -> None:
        snapshot = self._snapshot()
        if snapshot.workers:
            self._console.print(worker_table(snapshot))
