"""`modelserver demo`, start to end: prepare models, launch, route, kill, summarise, stop.

    prepare   `prepare_models()`: the two GGUF files, written once from installed packages
    launch    `modelserver up FLEET --detach` on a fleet file written for free ports
    serve     the gateway in this process, with a router over every worker
    traffic   `Workload` through the gateway with the openai SDK, for `duration` seconds
    crash     one simulated engine killed with SIGKILL mid-run; the router moves its
              requests, the supervisor restarts it, the router takes it back
    summary   latency percentiles, cache hits, who served what, the crash's timeline
    stop      `modelserver down FLEET`, then every pid ever seen is checked (and killed if
              it still runs): nothing is left, even after Ctrl-C or an error

Everything that was started is stopped in `run_demo`'s `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import openai
import orjson
from rich.console import Console

from modelserver._files import atomic_write_json
from modelserver.demo.fleet import HOST, DemoFleet, stop_previous_run
from modelserver.demo.live import LiveView, PlainView, Snapshot, View, WorkerLine
from modelserver.demo.narrate import INTRO, MovedAttempts, count, describe_record, error_text
from modelserver.demo.summary import (
    PARAPHRASE,
    UNRELATED,
    KillReport,
    Summary,
    problems,
    render,
    summarize,
    to_json,
)
from modelserver.demo.workload import Outcome, Workload
from modelserver.errors import LaunchError
from modelserver.gateway.server import GatewayServer
from modelserver.launcher.state import LOG_MODE
from modelserver.models import prepare_models
from modelserver.routing.router import Router

log = logging.getLogger(__name__)

DEMO_LOG = "demo.log"
"""In the run folder: modelserver's own log lines during the demo."""
VICTIM = f"llama-8b-0@{HOST}"
RECOVERY_LIMIT_S = 60.0
"""How long after the kill the worker must be back serving, else the demo failed."""
SIMILARITY = (
    "The cat sleeps on the warm sofa.",
    "A kitten is napping on the couch.",
    "Stock prices fell sharply this morning.",
)


@dataclass(frozen=True)
class DemoOptions:
    run_dir: Path
    models_dir: Path | None
    duration_s: float
    live: bool


class DemoRun:
    def __init__(self, options: DemoOptions, console: Console,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.console = console
        self.clock = clock
        self.fleet: DemoFleet | None = None
        self.router: Router | None = None
        self.outcomes: list[Outcome] = []
        self.kill: KillReport | None = None
        self.similarity: dict[str, float] = {}
        self.traffic_s = 0.0
        self.phase = "preparing"
        self._traffic_started: float | None = None
        self._latest = Snapshot(self.phase, 0.0, 0.0, 0, 0, ())
        self._seen_records: dict[str, tuple[str, int | None, int]] = {}
        self._seen_router: dict[str, str] = {}
        self._moved = MovedAttempts()
        self._moved_shown = 0
        view_class = LiveView if options.live else PlainView
        self.view: View = view_class(console, lambda: self._latest, clock)

    # -- the whole run ---------------------------------------------------------------------

    async def main(self) -> None:
        run_dir = self.options.run_dir
        self.say(INTRO, "bold")
        self.say(f"run folder: {run_dir} (fleet file, state, worker logs, {DEMO_LOG},"
                 " summary.json)")
        await asyncio.to_thread(stop_previous_run, run_dir, self.say)
        prepared = await asyncio.to_thread(prepare_models, self.options.models_dir)
        written = ", ".join(prepared.written) or "none (both verified)"
        self.say(f"models in {prepared.chat_path.parent}: written {written}")
        self.fleet = fleet = DemoFleet.create(run_dir, prepared)
        self.say(
            "launching through `modelserver up --detach`: 2 llama.cpp chat workers (tiny-chat: "
            "random weights, real engine), 1 llama.cpp MiniLM embedding worker, 3 simulated "
            "SGLang engines standing in for H100 servers of llama-8b (one at half speed)"
        )
        self.phase = "launching"
        self.view.start()
        await self._launch(fleet)

        router = Router(
            fleet.router_entries(), config=fleet.fleet.router, state_dir=fleet.fleet.state_dir(),
            observers=[self._moved],
        )
        self.router = router
        async with (
            GatewayServer(router, fleet.fleet.gateway, environ={}) as gateway,
            openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="demo", max_retries=0,
                               timeout=60.0) as client,
        ):
            self.say(f"gateway (OpenAI-compatible) on {gateway.url}; every request below goes "
                     "through it with the openai SDK")
            workload = Workload(client, self.outcomes.append, clock=self.clock)
            await self._traffic(fleet, router, workload)
            self.phase = "checking embeddings"
            await self._similarity(workload)

    async def _launch(self, fleet: DemoFleet) -> None:
        up = asyncio.ensure_future(fleet.up())
        while not up.done():
            await asyncio.wait({up}, timeout=0.2)
            self._watch_supervisor(fleet)
            self._refresh()
        done = up.result()
        self._watch_supervisor(fleet)
        if done.returncode != 0:
            raise LaunchError(f"`modelserver up` failed (exit {done.returncode}):\n"
                              f"{done.stderr.strip() or done.stdout.strip()}")

    async def _traffic(self, fleet: DemoFleet, router: Router, workload: Workload) -> None:
        duration = self.options.duration_s
        kill_at = max(5.0, 0.3 * duration)
        victim_url = next(w.url for w in fleet.fleet.workers(HOST) if w.name == VICTIM)
        self.say(f"traffic for {duration:.0f} s: 6 users chatting with llama-8b (3 long system "
                 "prompts, multi-turn: shared prefixes), 2 with tiny-chat, 1 embedding client; "
                 f"{VICTIM} will be killed about {kill_at:.0f} s into it")
        self.phase = "traffic"
        stop = asyncio.Event()
        self._traffic_started = start = self.clock()
        users = asyncio.ensure_future(workload.run(stop))
        restarted_at: float | None = None
        try:
            while True:
                await asyncio.sleep(0.25)
                if users.done():
                    users.result()  # a bug in the workload: raise it
                now = self.clock() - start
                if self.kill is None and now >= kill_at and (
                    _in_flight(router, victim_url) > 0 or now >= kill_at + 5
                ):
                    self._kill(fleet, victim_url, now)
                self._watch_supervisor(fleet)
                self._watch_router(router)
                if self.kill is not None:
                    restarted_at = self._watch_recovery(fleet, restarted_at, now)
                self._refresh()
                back = self.kill is not None and self.kill.serving_again_after_s is not None
                late = self.kill is not None and now > self.kill.at_s + RECOVERY_LIMIT_S
                if now >= duration and (back or late):
                    break
        finally:
            stop.set()
            self.phase = "finishing requests in flight"
            self._refresh()
            with contextlib.suppress(asyncio.CancelledError):
                await users
            self.traffic_s = self.clock() - start
        self.say(f"traffic stopped after {self.traffic_s:.0f} s")

    def _kill(self, fleet: DemoFleet, victim_url: str, now: float) -> None:
        record = fleet.kill(VICTIM)
        assert record.pid is not None
        self._moved.url = victim_url
        self.kill = KillReport(VICTIM, victim_url, record.pid, now)
        self.say(f"KILL: {VICTIM} (pid {record.pid}) gets SIGKILL, as a crash would. Watch the "
                 "router keep its requests away and the supervisor restart it.", "bold red")

    def _watch_recovery(self, fleet: DemoFleet, restarted_at: float | None,
                        now: float) -> float | None:
        kill = self.kill
        assert kill is not None
        if self._moved.count > self._moved_shown:
            moved = self._moved.count - self._moved_shown
            self.say(f"router: {count(moved, 'attempt')} on {VICTIM} failed "
                     f"({error_text(self._moved.last_error)}), retried on other workers",
                     "yellow")
            self._moved_shown = self._moved.count
        kill = replace(kill, moved=self._moved.count)
        record = fleet.records().get(VICTIM)
        if restarted_at is None and record is not None and record.status == "ready" \
                and record.restarts > 0 and record.pid != kill.pid:
            restarted_at = now
            kill = replace(kill, restarted_after_s=now - kill.at_s, new_pid=record.pid)
            self.say(f"supervisor: {VICTIM} is ready again as pid {record.pid}, "
                     f"{now - kill.at_s:.1f} s after the kill", "green")
        if restarted_at is not None and kill.serving_again_after_s is None:
            served = next((o for o in self.outcomes if o.ok and o.worker == kill.url
                           and o.at >= restarted_at), None)
            if served is not None:
                kill = replace(kill, serving_again_after_s=served.at - kill.at_s)
                self.say(f"router: {VICTIM} answers requests again, "
                         f"{served.at - kill.at_s:.1f} s after the kill", "green")
        self.kill = kill
        return restarted_at

    async def _similarity(self, workload: Workload) -> None:
        vectors = await workload.embed(list(SIMILARITY))
        if vectors is None:
            return
        cat, kitten, stocks = vectors
        self.similarity = {PARAPHRASE: _cosine(cat, kitten), UNRELATED: _cosine(cat, stocks)}

    # -- watching ----------------------------------------------------------------------------

    def _watch_supervisor(self, fleet: DemoFleet) -> None:
        """An event for each change of a worker's status, pid or restarts (state file)."""
        for name, record in fleet.records().items():
            key = (record.status, record.pid, record.restarts)
            if self._seen_records.get(name) == key:
                continue
            self._seen_records[name] = key
            self.say(describe_record(record), "red" if record.status in ("backoff", "failed")
                     else "")

    def _watch_router(self, router: Router) -> None:
        """An event when the router takes a worker out of rotation, or back in."""
        for stats in router.workers():
            before = self._seen_router.get(stats.name, "up")
            if stats.status == before:
                continue
            self._seen_router[stats.name] = stats.status
            why = error_text(stats.status, 70)
            if stats.status == "up":
                self.say(f"router: {stats.name} is back in rotation", "green")
            elif before == "up":
                self.say(f"router: {stats.name} taken out of rotation: {why}", "yellow")
            else:
                self.say(f"router: {stats.name} still out: {why}", "yellow")

    def _refresh(self) -> None:
        self._latest = self._snapshot()
        self.view.tick()

    def _snapshot(self) -> Snapshot:
        fleet = self.fleet
        if fleet is None:
            return Snapshot(self.phase, 0.0, 0.0, 0, 0, ())
        records = fleet.records()
        stats = {s.name: s for s in self.router.workers()} if self.router else {}
        lines = []
        for spec in fleet.fleet.workers(HOST):
            model = fleet.engines[spec.model]
            record = records.get(spec.name)
            stat = stats.get(spec.name)
            ewma = "-"
            if stat is not None and stat.ewma_latency_s is not None:
                unit = "ms/tok" if spec.kind == "chat" else "ms"
                ewma = f"{stat.ewma_latency_s * 1000:.1f} {unit}"
            lines.append(WorkerLine(
                name=spec.name, engine=model.engine_of(spec.replica), serves=spec.model,
                launcher=record.status if record else "-",
                router=error_text(stat.status, 36) if stat else "-",
                requests=stat.requests if stat else 0,
                in_flight=stat.in_flight if stat else 0,
                ewma=ewma, restarts=record.restarts if record else 0,
                pid=record.pid if record else None,
            ))
        elapsed = self.clock() - self._traffic_started if self._traffic_started else 0.0
        failed = sum(1 for o in self.outcomes if not o.ok)
        return Snapshot(self.phase, elapsed, self.options.duration_s if self._traffic_started
                        else 0.0, len(self.outcomes) - failed, failed, tuple(lines))

    def say(self, message: str, style: str = "") -> None:
        self.view.event(message, style)

    # -- the end -----------------------------------------------------------------------------

    def summary(self) -> Summary:
        fleet = self.fleet
        names = {w.url: w.name for w in fleet.fleet.workers(HOST)} if fleet else {}
        restarts = {n: r.restarts for n, r in fleet.records().items()} if fleet else {}
        result = summarize(self.outcomes, names, seconds=self.traffic_s, restarts=restarts,
                           kill=self.kill)
        result.similarity = self.similarity
        return result


def run_demo(options: DemoOptions, console: Console) -> int:
    """Run the demo; 0 when it showed what it should, 1 when something failed, 130 on
    Ctrl-C. Whatever happens, everything it started is stopped before it returns."""
    try:
        options.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LaunchError(
            f"cannot create the run folder {options.run_dir}: {exc.strerror or exc}; "
            "pass --dir with a folder you can write"
        ) from None
    with _run_dir_lock(options.run_dir):
        return _run_locked(options, console)


@contextlib.contextmanager
def _run_dir_lock(run_dir: Path) -> Iterator[None]:
    """One demo per run folder: a second one would take the first one's fleet down."""
    with (run_dir / "demo.lock").open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LaunchError(
                f"another `modelserver demo` runs in {run_dir}; wait for it or pass --dir"
            ) from None
        yield


def _run_locked(options: DemoOptions, console: Console) -> int:
    with _logging_to(options.run_dir / DEMO_LOG):
        try:
            return _run_logged(options, console)
        except BaseException as exc:
            if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                log.exception("the demo stopped on an error")
                console.print(f"the demo's log, with what went wrong: {options.run_dir / DEMO_LOG}")
            raise


@contextlib.contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """modelserver's own log lines (router, gateway, the demo's errors with their
    tracebacks) go to `path`, not the screen: they would tear the live view, and what they
    say is shown there as the demo's own events. Readable by its owner only, like the
    workers' logs."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, LOG_MODE)
    handler = logging.StreamHandler(os.fdopen(fd, "w", encoding="utf-8"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("modelserver")
    before = (root.level, root.propagate)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(before[0])
        root.propagate = before[1]
        handler.close()


def _run_logged(options: DemoOptions, console: Console) -> int:
    run = DemoRun(options, console)
    interrupted = False
    try:
        asyncio.run(run.main())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        with _sigint_ignored():
            run.view.stop()
            left: list[int] = []
            checked = 0
            if run.fleet is not None:
                console.print("stopping everything: `modelserver down`, then every process "
                              "the demo saw is checked")
                left = run.fleet.down()
                checked = len(run.fleet.seen)
    summary = run.summary()
    summary.processes_checked = checked
    summary.left_running = left
    broken = problems(summary, ("llama-8b", "tiny-chat", "minilm")) if not interrupted else []
    if interrupted:
        broken = ["interrupted (Ctrl-C)"]
    atomic_write_json(options.run_dir / "summary.json", _jsonable(to_json(summary, broken)))
    console.print(render(summary, broken))
    if run.fleet is not None and not interrupted:
        console.print(
            f"next: {run.fleet.path} is the fleet this demo ran; `modelserver up` starts a fleet"
            " file, `modelserver gateway` serves it to any OpenAI client, examples/ has more."
        )
    if interrupted:
        return 130
    return 1 if broken else 0


def _jsonable(data: object) -> object:
    return orjson.loads(orjson.dumps(data))


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """A second Ctrl-C must not cut the clean-up short."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _in_flight(router: Router, url: str) -> int:
    return next((w.in_flight for w in router.workers() if w.url == url), 0)


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
