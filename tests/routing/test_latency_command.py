"""`modelserver latency`: every worker probed at once, slow ones cut off, fastest marked."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from modelserver import cli
from modelserver.route_commands import render_table
from modelserver.routing import AiohttpTransport, WorkerEntry
from modelserver.routing.latency import LatencyResult, measure_latency
from modelserver.sim import SimConfig, SimServer, SimThread


async def test_hung_worker_is_cut_off_and_failing_one_reported() -> None:
    servers = [
        SimServer(SimConfig(model="m", speed=50)),
        SimServer(SimConfig(model="m", speed=50, faults="hang")),
        SimServer(SimConfig(model="m", speed=50, faults="error-rate=1.0:503")),
        SimServer(SimConfig(model="e", kind="embedding", speed=50)),
    ]
    transport = AiohttpTransport()
    try:
        for server in servers:
            await server.start()
        entries = [WorkerEntry(s.config.model, s.url, s.config.kind) for s in servers]
        results = await measure_latency(entries, transport, cutoff_ratio=3.0, timeout_s=30)
    finally:
        await transport.close()
        for server in servers:
            await server.stop()
    by_url = {r.entry.url: r for r in results}
    assert by_url[servers[0].url].fastest and by_url[servers[0].url].outcome == "ok"
    assert by_url[servers[1].url].outcome.startswith("cut off")
    assert "503" in by_url[servers[2].url].outcome
    assert by_url[servers[3].url].fastest  # the fastest of its own model
    assert [r.latency_s is not None for r in results] == [True, True, False, False]


def test_latency_command_prints_a_table_sorted_by_latency(tmp_path: Path) -> None:
    with (
        SimThread(SimConfig(model="a", speed=50)) as a,
        SimThread(SimConfig(model="b", speed=50)) as b,
    ):
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(
            f"""
[[hosts]]
name = "local"
gpus = "none"

[[models]]
name = "a"
backend = "sim"
port = {a.port}

[[models]]
name = "b"
backend = "sim"
port = {b.port}
"""
        )
        urls = (a.url, b.url)
        cli._register_all()
        runner = CliRunner()
        result = runner.invoke(cli.app, ["latency", str(fleet)], catch_exceptions=False)
        only_b = runner.invoke(cli.app, ["latency", str(fleet), "--model", "b"])
        unknown = runner.invoke(cli.app, ["latency", str(fleet), "--model", "zz"])
    assert result.exit_code == 0, result.output
    assert all(url in result.output for url in urls)
    assert "fastest" not in result.output  # each model has one worker: no choice to mark
    assert only_b.exit_code == 0 and urls[0] not in only_b.output and urls[1] in only_b.output
    assert "unknown model 'zz'" in str(unknown.exception)


def test_only_a_model_with_several_workers_gets_its_fastest_marked() -> None:
    a0, a1, b0 = (WorkerEntry(m, f"http://127.0.0.1:{p}", name=f"{m}-{i}@lo")
                  for m, i, p in (("a", 0, 1), ("a", 1, 2), ("b", 0, 3)))
    results = [LatencyResult(a0, 0.01, "ok", fastest=True), LatencyResult(a1, 0.02, "ok"),
               LatencyResult(b0, 0.05, "ok", fastest=True)]
    out = io.StringIO()
    Console(file=out, width=200).print(render_table(results))
    starred = [line for line in out.getvalue().splitlines() if "fastest" in line]
    assert len(starred) == 1 and "a-0@lo" in starred[0]
