"""What the demo prints: the worker table fits the terminal, plain mode reports on a clock."""

from __future__ import annotations

import io

from rich.console import Console

from modelserver.demo.live import PlainView, Snapshot, WorkerLine, worker_table
from modelserver.demo.narrate import error_text

WORKER = WorkerLine("llama-8b-2@local", "sim SGLang ½ H100", "llama-8b", "starting",
                    "launcher reports starting", 123, 2, "12.1 ms/tok", 1, 4242)
SNAPSHOT = Snapshot("traffic", 12.0, 40.0, 100, 1, (WORKER,))


def drawn(width: int) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=False)
    console.print(worker_table(SNAPSHOT, width))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(text, str)
    return text


def test_a_wide_terminal_shows_every_column() -> None:
    text = drawn(180)
    for shown in ("sim SGLang ½ H100", "4242", "llama-8b ", "in flight", "restarts",
                  "launcher reports starting", "12.1 ms/tok"):
        assert shown in text


def test_an_80_column_terminal_keeps_status_load_latency_and_restarts() -> None:
    text = drawn(80)
    assert all(len(line) <= 80 for line in text.splitlines())
    for shown in ("llama-8b-2@local", "starting", "123", "12.1 ms/tok", "rst", "router"):
        assert shown in text
    assert "4242" not in text and "SGLang" not in text


def test_plain_view_prints_events_and_a_progress_line_every_few_seconds() -> None:
    now = [100.0]
    out = io.StringIO()
    view = PlainView(Console(file=out, width=200), lambda: SNAPSHOT, clock=lambda: now[0],
                     every_s=5.0)
    view.event("KILL: something")
    now[0] = 103.0
    view.tick()  # too early for a progress line
    now[0] = 105.5
    view.tick()
    lines = out.getvalue().splitlines()
    assert lines[0] == "  0.0 s  KILL: something"
    assert len(lines) == 2
    assert lines[1].startswith("  5.5 s  traffic: answered 100, failed 1;")
    assert "llama-8b-2@local 123 req starting (launcher reports starting)" in lines[1]


def test_router_errors_lose_the_url_and_say_refused_in_plain_words() -> None:
    raw = ("http://127.0.0.1:5: cannot connect: [Errno 111] Connect call failed "
           "('127.0.0.1', 5)")
    assert error_text(raw) == "cannot connect: connection refused"
    assert error_text("x" * 100, 10) == "x" * 9 + "…"
