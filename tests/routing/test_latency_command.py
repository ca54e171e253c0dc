"""`modelserver latency`: every worker probed at once, slow ones cut off, fastest marked."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from modelserver import cli
from modelserver.routing import AiohttpTransport, WorkerEntry
from modelserver.routing.latency import measure_latency
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
    assert result.output.count("fastest") == 2  # one per model
    assert only_b.exit_code == 0 and urls[0] not in only_b.output and urls[1] in only_b.output
    assert "unknown model 'zz'" in str(unknown.exception)
