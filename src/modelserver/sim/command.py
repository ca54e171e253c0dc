"""`modelserver sim`: run one simulated SGLang engine as a process.

The launcher spawns it with exactly these flags; SIGTERM or SIGINT stop it cleanly (exit 0),
a crash fault ends it with exit status 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Annotated

import typer
import zmq
from aiohttp.http_exceptions import BadHttpMessage

from modelserver.errors import LaunchError
from modelserver.sim.config import Kind, SimConfig
from modelserver.sim.faults import FaultSpecError
from modelserver.sim.kv_events import DEFAULT_PAGE_SIZE
from modelserver.sim.priority import DEFAULT_PREEMPTION_THRESHOLD
from modelserver.sim.server import SimServer

CRASH_EXIT_STATUS = 1


class _DropProtocolProbes(logging.Filter):
    """SGLang's router first tries gRPC (HTTP/2) on every worker; aiohttp answers 400 and
    would log a traceback for each probe. A real SGLang worker refuses them just as quietly."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, BadHttpMessage) and "PRI" in str(exc))


def _crash() -> None:
    print("sim: crash fault: exiting", file=sys.stderr, flush=True)
    os._exit(CRASH_EXIT_STATUS)


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    logging.getLogger("aiohttp.server").addFilter(_DropProtocolProbes())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = SimServer(config, host, port, on_crash=_crash)
    try:
        await server.start()
    except OSError as exc:
        raise LaunchError(f"sim: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    except zmq.ZMQError as exc:
        raise LaunchError(f"sim: cannot open the KV events socket: {exc}") from exc
    try:
        print(
            f"sim: {config.model} ({config.kind}, speed {config.speed:g}) on {server.url}",
            flush=True,
        )
        await stop.wait()
    finally:
        await server.stop()


def register(app: typer.Typer) -> None:
    @app.command("sim")
    def sim(
        port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)],
        model: Annotated[str, typer.Option(help="Model name clients ask for.")],
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        kind: Annotated[Kind, typer.Option(help="chat or embedding.")] = "chat",
        speed: Annotated[
            float, typer.Option(help="Time scale: 2 runs every GPU step twice as fast.")
        ] = 1.0,
        fault: Annotated[
            list[str] | None,
            typer.Option(help="Fault spec, e.g. 'error-rate=0.1:503,slow-start=5'. Repeatable."),
        ] = None,
        model_path: Annotated[
            str | None, typer.Option(help="Path reported by /model_info (default: the name).")
        ] = None,
        max_running: Annotated[
            int | None, typer.Option(help="Most requests decoding at once.", min=1)
        ] = None,
        cache_tokens: Annotated[
            int | None, typer.Option(help="KV pool size in tokens (prefix cache + running); "
                                          "default: as SGLang sizes it for --model-size on "
                                          "--gpu.")
        ] = None,
        gpu: Annotated[str, typer.Option(
            help="GPU simulated: h100, a100-80gb, a100-40gb, l4.")] = "h100",
        model_size: Annotated[str, typer.Option(
            help="Model simulated: llama-3.1-8b, llama-3.2-3b, llama-3.1-70b.")] = "llama-3.1-8b",
        mem_fraction_static: Annotated[float | None, typer.Option(
            help="Share of GPU memory for weights + KV pool (SGLang's; default 0.88).")] = None,
        api_key: Annotated[
            str | None,
            typer.Option(
                help="Require 'Authorization: Bearer KEY'.", envvar="MODELSERVER_SIM_API_KEY"
            ),
        ] = None,
        seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
        enable_priority_scheduling: Annotated[
            bool, typer.Option(help="SGLang's: waiting requests by their `priority`, larger first.")
        ] = False,
        schedule_low_priority_values_first: Annotated[
            bool, typer.Option(help="SGLang's: smaller `priority` values first.")
        ] = False,
        priority_scheduling_preemption_threshold: Annotated[
            int, typer.Option(help="SGLang's: preempt a running request outranked by more.")
        ] = DEFAULT_PREEMPTION_THRESHOLD,
        disable_priority_preemption: Annotated[
            bool, typer.Option(help="SGLang's: priority orders the queue, never preempts.")
        ] = False,
        kv_events_config: Annotated[
            str | None,
            typer.Option(
                help="SGLang's KV-cache events JSON, e.g. "
                '\'{"publisher": "zmq", "endpoint": "tcp://*:5557"}\'.'
            ),
        ] = None,
        page_size: Annotated[
            int, typer.Option(help="Tokens per KV-cache event block.", min=1)
        ] = DEFAULT_PAGE_SIZE,
    ) -> None:
        """Run a simulated SGLang engine (no GPU): SGLang's HTTP surface, GPU-like timing."""
        try:
            config = SimConfig(
                model=model,
                kind=kind,
                speed=speed,
                faults=",".join(fault or []),
                max_running=max_running,
                cache_tokens=cache_tokens,
                gpu=gpu,
                model_size=model_size,
                mem_fraction_static=mem_fraction_static,
                seed=seed,
                api_key=api_key,
                model_path=model_path,
                priority_scheduling=enable_priority_scheduling,
                low_priority_values_first=schedule_low_priority_values_first,
                priority_preemption=not disable_priority_preemption,
                preemption_threshold=priority_scheduling_preemption_threshold,
                kv_events_config=kv_events_config or "",
                page_size=page_size,
            )
        except FaultSpecError:
            raise  # already a ModelServerError: `modelserver` prints it and exits 2
        except ValueError as exc:
            raise LaunchError(f"sim: {exc}") from None
        asyncio.run(serve(config, host, port))
