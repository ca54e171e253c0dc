"""Chaos run: thousands of requests through the client and the gateway while workers are
killed, hung, slowed and made to answer 5xx at random (seeded), and the supervisor restarts
them.

    .venv/bin/python bench/chaos.py [--duration 120] [--seed 8] [--replicas 4] [--speed 20]
                                    [--concurrency 8] [--rate R] [--mean-gap 2]
                                    [--keep-healthy 1] [--stream-every 10] [--json F]

It writes a fleet of `--replicas` simulated engines (modelserver.chaos.fleet), starts it with
the real launcher (`modelserver up --detach`), runs `modelserver.chaos.run_chaos`, and stops
everything: `modelserver down`, then SIGKILL to what is provably this run's and still alive
(the supervisor if its pid still has the start time the state file recorded; engines by the
state-file mark in their environment), never to a pid alone, which another process may
have by then.
Prints the figures as JSON and as the Markdown table of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from modelserver.chaos import ChaosFigures, ChaosOptions, ChaosSettings, LoadSettings, run_chaos
from modelserver.chaos.figures import summary
from modelserver.chaos.fleet import write_chaos_fleet
from modelserver.config import load_fleet
from modelserver.launcher.processes import stop_unrecorded_engines
from modelserver.launcher.state import process_is, read_state, state_path


def modelserver(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelserver", *args],
                          capture_output=True, text=True, timeout=120)


def markdown(figures: ChaosFigures) -> str:
    lines = [
        "| path | sent | succeeded | failed | p50 | p99 |",
        "| --- | --: | --: | --: | --: | --: |",
    ]
    for via, p in figures.paths.items():
        p50 = f"{p.latency_p50_s * 1000:.0f} ms" if p.latency_p50_s is not None else "-"
        p99 = f"{p.latency_p99_s * 1000:.0f} ms" if p.latency_p99_s is not None else "-"
        lines.append(f"| {via} | {p.sent} | {p.succeeded} | {p.failed} | {p50} | {p99} |")
    kill = summary(figures.kill_to_last_request_s)
    ready = summary(figures.ready_to_first_request_s)

    def ms(value: float | int | None) -> str:
        return "-" if value is None else f"{float(value) * 1000:.0f} ms"

    lines += [
        "",
        f"- actions: {figures.actions}",
        f"- attempts: {figures.attempts} ({figures.failed_attempts} failed and retried)",
        f"- attempts routed to a worker known dead for more than 1 s:"
        f" **{figures.routed_to_known_dead}**",
        f"- kill → last request sent there: median {ms(kill['median'])}, max {ms(kill['max'])}"
        f" over {kill['n']} kills ({figures.kills_without_later_request} kills got no later"
        " request)",
        f"- restart ready → first request: median {ms(ready['median'])},"
        f" max {ms(ready['max'])} over {ready['n']} restarts",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--speed", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=None, help="requests/s per path")
    parser.add_argument("--mean-gap", type=float, default=2.0, help="mean s between actions")
    parser.add_argument("--keep-healthy", type=int, default=1)
    parser.add_argument("--stream-every", type=int, default=10,
                        help="every n-th client request is streamed (0: none)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="modelserver-chaos-"))
    fleet_path = write_chaos_fleet(folder, replicas=args.replicas, speed=args.speed)
    fleet = load_fleet(fleet_path)
    state_file = state_path(fleet, "local")
    try:
        up = modelserver("up", str(fleet_path), "--host", "local", "--detach")
        if up.returncode != 0:
            print(up.stdout, up.stderr, file=sys.stderr)
            return 1
        options = ChaosOptions(
            duration_s=args.duration, seed=args.seed,
            load=LoadSettings(concurrency=args.concurrency, rate_per_s=args.rate,
                              stream_every=args.stream_every),
            chaos=ChaosSettings(mean_gap_s=args.mean_gap, keep_healthy=args.keep_healthy),
        )
        _, figures = asyncio.run(run_chaos(fleet, options))
    finally:
        state = read_state(state_file)
        supervisor = state.supervisor if state is not None else None
        modelserver("down", str(fleet_path), "--host", "local")
        if supervisor is not None and process_is(supervisor.pid, supervisor.create_time):
            # Started in a session of its own by `up --detach`: its group is its own.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(supervisor.pid, signal.SIGKILL)
        stop_unrecorded_engines(state_file, keep=())
    data = figures.to_json()
    data["command"] = " ".join(["bench/chaos.py", *sys.argv[1:]])
    if args.json:
        args.json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    print(markdown(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
