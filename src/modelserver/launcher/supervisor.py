"""Keep a host's workers alive: start, wait until ready, watch, restart with backoff, stop.

Each worker is one asyncio task walking the lifecycle of `modelserver.launcher.lifecycle`:

    WAITING:  not placed yet (its GPUs or port are busy, or the launcher is still looking);
              `waiting_for` says why; the launcher's placement loop starts it when it can
    STARTING: spawn (own session, output to its log), then race the process's exit against
              the backend's readiness probe (bounded by ready_timeout_s)
    READY:    race the process's exit against a health probe every health_interval_s;
              `unhealthy_after` failures in a row count as a crash
    BACKOFF:  capped exponential delay with jitter, then STARTING again, at most
              max_restarts times in a row; after that FAILED, with the last error and the
              log's tail (configured keys redacted). A worker that served for
              stable_after_s starts a new streak.
    DRAINING: `up` on a changed fleet file removes or replaces it: no more restarts, the
              state file tells the routers to send it nothing new, and it stops once its
              engine reports no request in flight (bounded by drain_timeout_s).

Nothing polls a process with sleeps: a child is awaited (`proc.wait()`), a process adopted
from a previous launcher through a pidfd registered with the event loop. The process
spawner, the clock, the probe and the random source are injected, so the whole state
machine runs in tests without real processes or waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelserver.clock import Clock
from modelserver.config import LauncherConfig, WorkerSpec
from modelserver.launcher.backends.base import LaunchSpec
from modelserver.launcher.lifecycle import WorkerStatus, transition
from modelserver.launcher.plan import Fingerprint, keys_digest
from modelserver.launcher.processes import STATE_FILE_ENV, WORKER_ENV, ProcessHandle, Spawner
from modelserver.launcher.secrets import masked_argv, secret_values
from modelserver.launcher.state import (
    HostState,
    SupervisorRecord,
    WorkerRecord,
    create_time_of,
    log_tail,
    redact,
    write_state,
)

S = WorkerStatus


Probe = Callable[[str, Sequence[str], "str | None"], Awaitable["str | None"]]
"""probe(url, paths, api_key) -> None if every path answered 200, else why not."""

InFlight = Callable[[], Awaitable["int | None"]]
"""How many requests a worker's engine has running or queued now; None if it cannot say."""


# -- one worker ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    """Everything the supervisor needs to run one worker, decided before it starts."""

    spec: WorkerSpec
    launch: LaunchSpec
    gpus: tuple[str, ...]
    ready_paths: tuple[str, ...]
    health_path: str
    log: Path
    mem_fraction: float | None = None
    """The memory fraction placement gave it (also in `launch.argv`)."""


NOT_FINGERPRINTED_ENV = frozenset({"CUDA_VISIBLE_DEVICES", STATE_FILE_ENV, WORKER_ENV})
"""Set by the launcher but not part of what a worker runs with: its GPUs are compared on
their own, and the engine mark names the state file and the worker, not the engine."""

ALWAYS_FINGERPRINTED_ENV = frozenset({"CUDA_DEVICE_ORDER"})
"""Set by the launcher for every engine: in the fingerprint even when the process building
the command already had the same value (`up --dry-run` and the supervisor must agree)."""


def fingerprint(
    plan: WorkerPlan, secrets: Sequence[str] = (), parent: Mapping[str, str] | None = None
) -> Fingerprint:
    """What `plan` starts: its command line, GPUs and the environment the launcher sets on
    top of `parent` (this process's), every key masked and only digested."""
    inherited = os.environ if parent is None else parent
    keys = [plan.spec.api_key or "", *secret_values(plan.launch.argv)]
    hidden = [*secrets, *keys]
    # What the launcher set: not what the engine inherited from the process that built its
    # command (the supervisor's environment, or `up --dry-run`'s, which may differ).
    env = {
        name: redact(value, hidden) for name, value in plan.launch.env.items()
        if name not in NOT_FINGERPRINTED_ENV and (
            name in ALWAYS_FINGERPRINTED_ENV or value in keys or inherited.get(name) != value)
    }
    return Fingerprint(
        command=tuple(redact(arg, hidden) for arg in masked_argv(plan.launch.argv)),
        gpus=plan.gpus,
        env=tuple(sorted(env.items())),
        keys=keys_digest(keys),
        mem_fraction=plan.mem_fraction,
    )


class Worker:
    def __init__(
        self,
        plan: WorkerPlan,
        settings: LauncherConfig,
        *,
        spawner: Spawner,
        probe: Probe,
        clock: Clock,
        rng: Callable[[], float],
        on_change: Callable[[Worker], None],
        secrets: Sequence[str] = (),
    ) -> None:
        self.plan = plan
        self.settings = settings
        self.secrets = tuple(secrets)
        """Keys to redact from log tails before they go in `last_error` (and the state)."""
        self._spawner = spawner
        self._probe = probe
        self._clock = clock
        self._rng = rng
        self._on_change = on_change
        self.proc: ProcessHandle | None = None
        self._exit: asyncio.Future[int | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.streak = 0
        """Failures since the worker last served for stable_after_s: what max_restarts
        limits and the backoff grows with (`record.restarts` counts every restart)."""
        spec = plan.spec
        self.record = WorkerRecord(
            name=spec.name, model=spec.model, kind=spec.kind, url=spec.url, host=spec.host,
            port=spec.port, status=S.STOPPED, gpus=list(plan.gpus), log=str(plan.log),
        )

    @property
    def status(self) -> WorkerStatus:
        return WorkerStatus(self.record.status)

    def _set(self, target: WorkerStatus) -> None:
        self.record.status = transition(self.status, target)
        self._on_change(self)

    # -- running --

    def start(
        self,
        adopted: ProcessHandle | None = None,
        *,
        loading: bool = False,
        plan: WorkerPlan | None = None,
    ) -> None:
        """Run the worker's lifecycle in a task: spawn it (as `plan` placed it, for one that
        waited), or adopt a live process, healthy (READY) or still `loading` (STARTING)."""
        if plan is not None:
            self.plan = plan
            self.record.gpus = list(plan.gpus)
        self.record.waiting_for = None
        if adopted is not None:
            self._attach(adopted)
            self._set(S.STARTING if loading else S.READY)
        self._task = asyncio.create_task(
            self._run(adopted_loading=adopted is not None and loading),
            name=f"worker {self.record.name}",
        )

    def wait(self, reason: str) -> None:
        """Not placed yet: record why (the state file and `status` show it)."""
        if self.status is S.WAITING and self.record.waiting_for == reason:
            return
        self.record.waiting_for = reason
        if self.status is S.WAITING:
            self._on_change(self)  # a new reason: save it
        else:
            self._set(S.WAITING)

    def _attach(self, proc: ProcessHandle) -> None:
        self.proc = proc
        self._exit = asyncio.ensure_future(proc.wait())
        self.record.pid = proc.pid
        self.record.create_time = proc.create_time

    async def _run(self, adopted_loading: bool = False) -> None:
        while True:
            if self.proc is None:
                self._set(S.STARTING)
                problem = await self._start_and_wait_ready()
                if problem is None:
                    self._set(S.READY)
            elif adopted_loading:  # adopted while it loads: wait for it like for our own
                adopted_loading = False
                problem = await self._race_exit(self._until_ready(), "while starting")
                if problem is None:
                    self._set(S.READY)
            else:
                problem = None  # adopted: already ready
            if problem is None:
                ready_at = self._clock.now()
                problem = await self._watch()
                if self._clock.now() - ready_at >= self.settings.stable_after_s:
                    self.streak = 0  # it served well for a while: a new streak of failures
            await self._clean_up_after_failure()
            problem = redact(problem, self.secrets)
            if self.streak >= self.settings.max_restarts:
                tail = log_tail(self.plan.log, secrets=self.secrets)
                self.record.last_error = problem + (f"\n--- log tail ---\n{tail}" if tail else "")
                self._set(S.FAILED)
                return
            self.record.last_error = problem
            self._set(S.BACKOFF)
            await self._clock.sleep(self.backoff_delay(self.streak))
            self.streak += 1
            self.record.restarts += 1

    def backoff_delay(self, restarts: int) -> float:
        """Capped exponential: initial * 2^restarts, at most backoff_max_s, minus jitter."""
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_initial_s * 2.0 ** min(restarts, 30))
        return delay * (1.0 - s.backoff_jitter * self._rng())

    async def _start_and_wait_ready(self) -> str | None:
        try:
            proc = await self._spawner.spawn(self.plan.launch, self.plan.log)
        except OSError as exc:
            return f"cannot start {self.plan.launch.argv[0]}: {exc.strerror or exc}"
        self._attach(proc)
        self.record.started_at = time.time()
        self.record.started_with = fingerprint(self.plan, self.secrets).to_json()
        self._on_change(self)
        return await self._race_exit(self._until_ready(), "while starting")

    async def _until_ready(self) -> str | None:
        timeout = self.settings.ready_timeout_s
        deadline = self._clock.now() + timeout
        while True:
            why = await self._probe(self.record.url, self.plan.ready_paths, self.plan.spec.api_key)
            if why is None:
                return None
            if self._clock.now() >= deadline:
                return f"not ready after {timeout:g}s (last probe: {why})"
            await self._clock.sleep(self.settings.ready_poll_s)

    async def _watch(self) -> str:
        problem = await self._race_exit(self._until_unhealthy(), "")
        return problem or "stopped answering"

    async def _until_unhealthy(self) -> str | None:
        failures = 0
        paths = (self.plan.health_path,)
        while True:
            await self._clock.sleep(self.settings.health_interval_s)
            why = await self._probe(self.record.url, paths, self.plan.spec.api_key)
            failures = 0 if why is None else failures + 1
            if failures >= self.settings.unhealthy_after:
                return f"unhealthy: {failures} health probes failed in a row (last: {why})"

    async def _race_exit(self, work: Awaitable[str | None], when: str) -> str | None:
        """Run `work` until it returns or the process exits, whichever comes first."""
        assert self._exit is not None
        task = asyncio.ensure_future(work)
        try:
            racing: set[asyncio.Future[Any]] = {task, self._exit}
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.done() and not task.cancelled() and not self._exit.done():
            return task.result()
        return describe_exit(self._exit.result(), when)

    async def _clean_up_after_failure(self) -> None:
        """Make sure nothing of a failed or unhealthy process group stays behind."""
        if self.proc is not None:
            await self._terminate(self.proc)
        self.proc = None
        self._exit = None
        self.record.pid = None
        self.record.create_time = None

    async def _terminate(self, proc: ProcessHandle) -> None:
        """SIGTERM to the group, stop_grace_s, then SIGKILL to whatever of the group is left."""
        exit_ = self._exit if self._exit is not None else asyncio.ensure_future(proc.wait())
        if not exit_.done():
            proc.signal_group(signal.SIGTERM)
            sleeper = asyncio.ensure_future(self._clock.sleep(self.settings.stop_grace_s))
            racing: set[asyncio.Future[Any]] = {exit_, sleeper}
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
        proc.signal_group(signal.SIGKILL)  # children the engine left in its group, too
        await exit_

    # -- stopping --

    async def stop(self) -> None:
        await self._stop_lifecycle()
        if self.status in (S.FAILED, S.WAITING):
            self.record.waiting_for = None
            self._set(S.STOPPED)
        elif self.status is not S.STOPPED:
            if self.status is not S.STOPPING:  # else a stop cut short (cancelled): finish it
                self._set(S.STOPPING)
            if self.proc is not None:
                await self._terminate(self.proc)
            self.proc = None
            self.record.pid = None
            self.record.create_time = None
            self._set(S.STOPPED)

    async def drain(self, notice_s: float, timeout_s: float, in_flight: InFlight) -> str:
        """Take it out of service without dropping a request, then stop it; say how it went.

        No more restarts; DRAINING in the state file (the routers reading it stop picking
        it; `notice_s` gives them time to read it), then stopped once its engine reports
        nothing in flight, or when `timeout_s` (from the start) ran out. A worker that was
        not serving is stopped at once."""
        await self._stop_lifecycle()
        if self.status is not S.READY or self._exit is None:
            await self.stop()
            return "stopped (it was not serving)"
        self._set(S.DRAINING)
        started = self._clock.now()
        outcome = await self._race_exit(
            self._until_idle(started, notice_s, timeout_s, in_flight), "while draining"
        )
        await self.stop()
        return outcome or "drained"

    async def _until_idle(
        self, started: float, notice_s: float, timeout_s: float, in_flight: InFlight
    ) -> str | None:
        await self._clock.sleep(min(notice_s, timeout_s))
        while True:
            count = await in_flight()
            if count == 0:
                return None
            if count is None:
                return "drained for the notice only: its engine does not report requests in flight"
            left = started + timeout_s - self._clock.now()
            if left <= 0:
                return (f"{count} requests still in flight after launcher.drain_timeout_s ="
                        f" {timeout_s:g} s: stopped anyway")
            await self._clock.sleep(min(self.settings.ready_poll_s, left))

    async def _stop_lifecycle(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def fail_now(self, reason: str) -> None:
        """A worker that cannot be placed or started at all (never spawned)."""
        self.record.last_error = redact(reason, self.secrets)
        self.record.waiting_for = None
        self._set(S.FAILED)

    def detach(self) -> None:
        """Forget the process without stopping it (the launcher exits, the worker stays)."""
        if self._task is not None:
            self._task.cancel()


def describe_exit(code: int | None, when: str) -> str:
    suffix = f" {when}" if when else ""
    if code is None:
        return f"exited{suffix}"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}{suffix}"
    return f"exited with code {code}{suffix}"


# -- a host's workers ----------------------------------------------------------------------


class Supervisor:
    """A host's workers and their state file.

    Records a previous launcher left for workers still alive are `carry`-ed into the state
    file as they were until this supervisor adopts or replaces them, so a kill at any moment
    leaves the next launcher what it needs to adopt them.
    """

    def __init__(
        self,
        host: str,
        fleet_name: str,
        settings: LauncherConfig,
        *,
        spawner: Spawner,
        probe: Probe,
        clock: Clock,
        state_file: Path | None = None,
        rng: Callable[[], float] = random.random,
        secrets: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.fleet_name = fleet_name
        self.settings = settings
        self.state_file = state_file
        self.secrets = tuple(secrets)
        self.workers: dict[str, Worker] = {}
        self.carried: dict[str, WorkerRecord] = {}
        self.placing: asyncio.Task[None] | None = None
        """The launcher's placement loop for workers still waiting (cancelled by stop_all)."""
        self._saving_deferred = False
        self._spawner = spawner
        self._probe = probe
        self._clock = clock
        self._rng = rng
        self._changed = asyncio.Condition()
        self._notifying: set[asyncio.Task[None]] = set()
        self.listeners: list[Callable[[WorkerRecord], None]] = []
        """Called with a worker's record after each change (e.g. to log transitions)."""
        self._started_at = time.time()
        self.applying: dict[str, Any] | None = None
        """The change `up` asked for last and how it goes (`HostState.applying`)."""

    def add(self, plan: WorkerPlan, previous: WorkerRecord | None = None) -> Worker:
        worker = Worker(
            plan, self.settings, spawner=self._spawner, probe=self._probe,
            clock=self._clock, rng=self._rng, on_change=self._worker_changed,
            secrets=self.secrets,
        )
        if previous is not None:
            worker.record.restarts = previous.restarts
            worker.record.started_at = previous.started_at
            worker.record.started_with = previous.started_with
        self.carried.pop(plan.spec.name, None)
        self.workers[plan.spec.name] = worker
        return worker

    def remove(self, name: str) -> None:
        """Forget a stopped worker (no longer in the fleet file) and save the state."""
        worker = self.workers.pop(name)
        assert worker.status in (S.STOPPED, S.FAILED), worker.status
        self.save()

    def carry(self, record: WorkerRecord) -> None:
        """Keep a previous launcher's record in the state file until `add` replaces it."""
        self.carried[record.name] = record

    @contextlib.contextmanager
    def saving_once(self) -> Iterator[None]:
        """Changes made inside are written to the state file once, at the end."""
        self._saving_deferred = True
        try:
            yield
        finally:
            self._saving_deferred = False
            self.save()

    def _worker_changed(self, worker: Worker) -> None:
        if not self._saving_deferred:
            self.save()
        for listener in self.listeners:
            listener(worker.record)
        task = asyncio.get_running_loop().create_task(self._notify())
        self._notifying.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._notifying.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def snapshot(self) -> HostState:
        me = SupervisorRecord(os.getpid(), self._started_at, create_time_of(os.getpid()) or 0.0)
        return HostState(
            host=self.host, fleet=self.fleet_name, supervisor=me,
            workers=[w.record for w in self.workers.values()] + list(self.carried.values()),
            applying=self.applying,
        )

    def save(self, supervisor_gone: bool = False) -> None:
        if self.state_file is None:
            return
        state = self.snapshot()
        if supervisor_gone:
            state.supervisor = None
        write_state(self.state_file, state)

    async def wait_until(self, done: Callable[[Supervisor], bool]) -> None:
        """Wait (on status changes, not on time) until `done(self)` holds."""
        async with self._changed:
            await self._changed.wait_for(lambda: done(self))

    def settled(self) -> bool:
        """Every worker is ready or failed (the end of a launch)."""
        return all(w.status in (S.READY, S.FAILED) for w in self.workers.values())

    async def stop_all(self, keep_failed: bool = False) -> None:
        """Stop every worker in parallel; the state file then says stopped, no supervisor.

        `keep_failed` leaves failed workers recorded as failed (a launch that gave up), so
        `status` still shows why. Workers still waiting are never started.
        """
        if self.placing is not None:
            self.placing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.placing
        await asyncio.gather(
            *(w.stop() for w in self.workers.values()
              if not (keep_failed and w.status is S.FAILED))
        )
        self.save(supervisor_gone=True)
