"""One benchmark run: one fleet of simulated engines, one workload, every contender in turn.

For each contender: reset the fleet (every engine alive, fault-free, idle, cache flushed),
start the contender, drive the workload through it while sampling the engines' load and
injecting the planned faults, then stop it and summarise. Every contender sees the same
engines, the same sessions in the same order, the same arrival times and the same faults at
the same point of the workload.
"""

from __future__ import annotations

import asyncio
import os
import platform
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from modelserver.bench.arrivals import Arrivals, ClosedLoop, Poisson, parse_arrivals
from modelserver.bench.contenders import (
    Contender,
    ContenderOptions,
    Target,
    make_contender,
    unavailable,
)
from modelserver.bench.contenders.base import ATTEMPTS_PER_REQUEST
from modelserver.bench.faults import SIM_SPECS, FaultPlan, parse_fault
from modelserver.bench.fleet import EngineSpec, SimFleet
from modelserver.bench.outcome import Outcome
from modelserver.bench.sampler import LoadSampler
from modelserver.bench.stats import ContenderFigures, skipped, summarize
from modelserver.bench.workloads import Session, Workload, build_workload
from modelserver.errors import BenchError
from modelserver.sim.perf import DEFAULT_MAX_RUNNING, GPUS, MODELS, PerfModel

MODEL_NAME = "llama-8b"


@dataclass
class BenchSettings:
    workload: str = "shared-prefix"
    contenders: list[str] = field(default_factory=list)
    requests: int = 256
    engines: list[EngineSpec] = field(default_factory=list)
    arrivals: str = "closed:64"
    stream_share: float = 0.25
    faults: list[str] = field(default_factory=list)
    seed: int = 0
    out: Path = Path("bench-results/bench")
    attempt_timeout_s: float = 60.0
    """Each contender's own per-attempt timeout; a request gets 3 times that in all."""
    sample_interval_s: float = 0.25

    def __post_init__(self) -> None:
        if not self.engines:
            raise BenchError("a benchmark needs at least one engine")
        if not 0.0 <= self.stream_share <= 1.0:
            raise BenchError(f"--stream-share must be within 0..1, got {self.stream_share}")


@dataclass
class ContenderRun:
    figures: ContenderFigures
    outcomes: list[Outcome] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BenchResult:
    settings: dict[str, Any]
    machine: dict[str, Any]
    workload: dict[str, Any]
    fleet: list[dict[str, Any]]
    arrivals: str
    runs: list[ContenderRun]
    started_at: str
    wall_s: float


def capacity_rps(engines: list[EngineSpec], workload: Workload) -> float:
    """Requests/s the fleet can serve, from the engines' performance model, assuming a full
    batch and every prompt prefilled in full (no cache hit: a conservative bound)."""
    prompts = workload.first_prompt_tokens()
    prompt = sum(prompts) / len(prompts)
    out = max(s.max_tokens for s in workload.sessions)
    total = 0.0
    for spec in engines:
        perf = PerfModel(spec.speed, GPUS[spec.gpu], MODELS[spec.model_size])
        batch = spec.max_running or DEFAULT_MAX_RUNNING
        prefill = batch * perf.prefill_time(int(prompt), int(prompt))
        decode = out * perf.decode_time(batch, int(batch * (prompt + out / 2)))
        total += batch / (prefill + decode)
    return total


def machine_info() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _streamed(seed: int, session: Session, turn: int, share: float) -> bool:
    """Whether this request is streamed: a seeded draw, the same for every contender."""
    return random.Random(f"{seed}:{session.id}:{turn}").random() < share


class _Drive:
    """Sends one workload through one contender and collects what happened."""

    def __init__(self, contender: Contender, workload: Workload, settings: BenchSettings,
                 t0: float, before_send: Callable[[], Awaitable[None]] | None = None) -> None:
        self.before_send = before_send
        """Called before every request: faults due at a share of the workload are injected
        right there, at the same request for every contender, however fast it runs."""
        self.contender = contender
        self.workload = workload
        self.settings = settings
        self.t0 = t0
        self.outcomes: list[Outcome] = []
        self.cutoff_s = ATTEMPTS_PER_REQUEST * settings.attempt_timeout_s + 5.0
        self.sent = 0
        self.last_done = t0

    async def session(self, session: Session) -> None:
        history: list[dict[str, str]] = []
        for turn, text in enumerate(session.turns):
            stream = _streamed(self.settings.seed, session, turn, self.settings.stream_share)
            if self.before_send is not None:
                await self.before_send()
            sent_at = time.monotonic()
            self.sent += 1
            call = (self.contender.embed(text) if session.kind == "embedding" else
                    self.contender.chat(session.messages(history, turn), session.max_tokens,
                                        stream))
            try:
                # The contenders enforce their own timeouts; this only makes sure that no
                # request outlives its budget whatever a contender does.
                outcome = await asyncio.wait_for(call, self.cutoff_s)
            except TimeoutError:
                outcome = Outcome(ok=False, e2e_s=time.monotonic() - sent_at, streamed=stream,
                                  error=f"no answer within {self.cutoff_s:.0f} s")
            outcome.start_s, outcome.session, outcome.turn = sent_at - self.t0, session.id, turn
            outcome.streamed = outcome.streamed or stream
            self.outcomes.append(outcome)
            self.last_done = max(self.last_done, time.monotonic())
            if not outcome.ok:
                # An agent whose turn failed cannot go on; its later turns fail with it.
                for later in range(turn + 1, len(session.turns)):
                    self.sent += 1
                    self.outcomes.append(Outcome(
                        ok=False, e2e_s=0.0, error="session abandoned after a failed turn",
                        start_s=time.monotonic() - self.t0, session=session.id, turn=later))
                return
            history += [{"role": "user", "content": text},
                        {"role": "assistant", "content": outcome.text}]

    async def closed(self, concurrency: int) -> None:
        queue: asyncio.Queue[Session] = asyncio.Queue()
        for s in self.workload.sessions:
            queue.put_nowait(s)

        async def user() -> None:
            while True:
                try:
                    s = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await self.session(s)

        await asyncio.gather(*(user() for _ in range(concurrency)))

    async def poisson(self, arrivals: Poisson) -> None:
        turns = self.workload.requests / len(self.workload.sessions)
        starts = arrivals.start_times(len(self.workload.sessions), turns, self.settings.seed)
        tasks = []
        for s, at in zip(self.workload.sessions, starts, strict=True):
            delay = self.t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.session(s)))
        await asyncio.gather(*tasks)


def _process_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in (proc, *proc.children(recursive=True)):
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


class BenchRunner:
    def __init__(self, settings: BenchSettings,
                 progress: Callable[[str], None] = lambda _msg: None) -> None:
        self.settings = settings
        self.progress = progress
        self.workload = build_workload(settings.workload, settings.requests, settings.seed,
                                       MODEL_NAME)
        self.plans: list[FaultPlan] = [parse_fault(f, len(settings.engines))
                                       for f in settings.faults]
        self.capacity = capacity_rps(settings.engines, self.workload)
        self.arrivals: Arrivals = parse_arrivals(settings.arrivals, self.capacity)

    async def run(self) -> BenchResult:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        wall0 = time.monotonic()
        out = self.settings.out
        out.mkdir(parents=True, exist_ok=True)
        model_dir = out / "sim-model"  # a local model_path, so no peer reaches for a hub
        model_dir.mkdir(exist_ok=True)
        fleet = SimFleet(
            model=MODEL_NAME, specs=self.settings.engines, kind=self.workload.kind,
            seed=self.settings.seed, log_dir=out / "logs", model_path=str(model_dir.resolve()),
        )
        runs: list[ContenderRun] = []
        async with fleet:
            options = ContenderOptions(
                time_scale=min(s.speed for s in self.settings.engines),
                log_dir=out / "logs",
                max_running={e.url: e.spec.max_running or DEFAULT_MAX_RUNNING
                             for e in fleet.engines},
            )
            for name in self.settings.contenders:
                reason = unavailable(name)
                family = name.split(":", 1)[0]
                if reason is not None:
                    self.progress(f"{name}: skipped ({reason})")
                    runs.append(ContenderRun(skipped(name, family, reason)))
                    continue
                self.progress(f"{name}: running")
                runs.append(await self._run_one(name, fleet, options))
                f = runs[-1].figures
                self.progress(f"{name}: {f.completed}/{f.requests} in {f.duration_s:.1f} s")
        return BenchResult(
            settings={**asdict(self.settings), "out": str(out),
                      "engines": [asdict(e) for e in self.settings.engines]},
            machine=machine_info(),
            workload={"name": self.workload.name, "description": self.workload.description,
                      "requests": self.workload.requests,
                      "sessions": len(self.workload.sessions), "params": self.workload.params,
                      "estimated_capacity_rps": self.capacity},
            fleet=[{"index": e.index, "url": e.url, **asdict(e.spec)} for e in fleet.engines],
            arrivals=self.arrivals.describe(),
            runs=runs,
            started_at=started,
            wall_s=time.monotonic() - wall0,
        )

    async def _run_one(self, name: str, fleet: SimFleet,
                       options: ContenderOptions) -> ContenderRun:
        await fleet.reset()
        contender = make_contender(name, options)
        target = Target(model=MODEL_NAME, kind=self.workload.kind, urls=tuple(fleet.urls),
                        attempt_timeout_s=self.settings.attempt_timeout_s)
        try:
            await contender.start(target)
        except BaseException:
            await contender.stop()
            raise
        t0 = time.monotonic()
        fault_log: list[dict[str, Any]] = []
        injector = _FaultInjector(self.plans, fleet, t0, max(self.workload.requests, 1),
                                  fault_log)
        drive = _Drive(contender, self.workload, self.settings, t0,
                       before_send=lambda: injector.apply_due(drive.sent))
        sampler = LoadSampler(fleet.urls, t0, self.settings.sample_interval_s)
        cpu0 = time.process_time() + _process_cpu(contender.external_pids())
        sampler.start()
        poller = asyncio.create_task(injector.poll(lambda: drive.sent))
        try:
            if isinstance(self.arrivals, ClosedLoop):
                await drive.closed(self.arrivals.concurrency)
            else:
                await drive.poisson(self.arrivals)
        finally:
            poller.cancel()
            sampler.stop()
            cpu = (time.process_time() + _process_cpu(contender.external_pids()) - cpu0
                   - sampler.cpu_s)
            await contender.stop()
        figures = summarize(
            name, contender.family, drive.outcomes, drive.last_done - t0, cpu,
            fleet.requests_to_dead(),
        )
        samples = [asdict(s) for s in sampler.samples]
        return ContenderRun(figures, drive.outcomes, samples, fault_log)


class _FaultInjector:
    """Applies each planned fault once, when due: by time (polled every 50 ms) or by the
    share of requests sent (checked before every request, so it lands on the same request
    for every contender)."""

    def __init__(self, plans: list[FaultPlan], fleet: SimFleet, t0: float, total: int,
                 log: list[dict[str, Any]]) -> None:
        self.pending = list(plans)
        self.fleet = fleet
        self.t0 = t0
        self.total = total
        self.log = log
        self._lock = asyncio.Lock()

    async def apply_due(self, sent: int) -> None:
        if not self.pending:
            return
        async with self._lock:
            elapsed = time.monotonic() - self.t0
            for plan in [p for p in self.pending if p.due(elapsed, sent / self.total)]:
                self.pending.remove(plan)
                if plan.action == "kill":
                    await self.fleet.kill(plan.worker)
                else:
                    await self.fleet.set_fault(plan.worker, SIM_SPECS[plan.action])
                self.log.append({"t_s": time.monotonic() - self.t0, "action": plan.action,
                                 "engine": plan.worker, "plan": plan.describe()})

    async def poll(self, sent: Callable[[], int]) -> None:
        while self.pending:
            await self.apply_due(sent())
            await asyncio.sleep(0.05)
