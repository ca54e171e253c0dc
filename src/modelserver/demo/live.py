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

from rich import box
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


_SHORT = {"requests": "reqs", "in flight": "in fl", "restarts": "rst"}


def worker_table(snapshot: Snapshot, width: int = 200) -> Table:
    """One row per worker. Narrow terminals drop the columns a newcomer needs least (engine,
    pid, model); the router's reason gets what is left and is cut with an ellipsis."""
    columns: list[tuple[str, str, Callable[[WorkerLine], Text]]] = [
        ("worker", "left", lambda w: Text(w.name)),
        ("engine", "left", lambda w: Text(w.engine)),
        ("model", "left", lambda w: Text(w.serves)),
        ("launcher", "left", lambda w: Text(w.launcher, LAUNCHER_STYLE.get(w.launcher, ""))),
        ("requests", "right", lambda w: Text(str(w.requests))),
        ("in flight", "right", lambda w: Text(str(w.in_flight))),
        ("EWMA", "right", lambda w: Text(w.ewma)),
        ("restarts", "right", lambda w: Text(str(w.restarts), "yellow" if w.restarts else "")),
        ("pid", "right", lambda w: Text(str(w.pid or "-"))),
    ]
    dropped = {"engine", "pid"} if width < 140 else set()
    dropped |= {"model"} if width < 120 else set()
    kept = [c for c in columns if c[0] not in dropped]
    table = Table(expand=True, pad_edge=False, box=box.SIMPLE_HEAD)
    for name, justify, cell in kept:
        title = _SHORT.get(name, name) if width < 120 else name
        needed = max([len(title)] + [cell(w).cell_len for w in snapshot.workers])
        table.add_column(title, justify=justify, no_wrap=True, min_width=needed)  # type: ignore[arg-type]
    table.add_column("router", no_wrap=True, overflow="ellipsis", ratio=1)
    for w in snapshot.workers:
        router = Text(w.router, style="green" if w.router == "up" else "red")
        table.add_row(*(cell(w) for _, _, cell in kept), router)
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
        return Group(header(snapshot), worker_table(snapshot, self._console.width),
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
            self._console.print(worker_table(snapshot, self._console.width))
