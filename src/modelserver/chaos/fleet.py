"""The fleet a chaos run breaks: simulated engines on free consecutive ports, one host, and
the router and launcher settings that let failures be noticed in seconds, not minutes."""

from __future__ import annotations

from pathlib import Path

from modelserver.netinfo import free_port_range

ROUTER_TOML = """
[router]
attempt_timeout_s = 2.0        # a hung worker is abandoned after 2 s, the request goes on
request_timeout_s = 30.0
connect_timeout_s = 1.0
max_attempts = 4               # one per replica: three broken ones still leave the fourth

[router.health]
interval_s = 0.25              # probes and the launcher's state file read four times a second
timeout_s = 1.0
failure_threshold = 2
success_threshold = 2

[router.breaker]
failure_threshold = 3
cooldown_s = 1.0

[router.latency]
readmit_after_s = 2.0
"""

LAUNCHER_TOML = """
[launcher]
backoff_initial_s = 0.2
backoff_max_s = 1.0
max_restarts = 1000
health_interval_s = 0.5
unhealthy_after = 2
ready_poll_s = 0.05
ready_timeout_s = 30
stop_grace_s = 3
stable_after_s = 5
"""




def write_chaos_fleet(
    folder: Path, *, model: str = "chaos-chat", replicas: int = 4, speed: float = 20.0
) -> Path:
    """Write `folder/fleet.toml` (state in `folder/state`) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port_range(replicas)
    text = (
        f'[fleet]\nname = "chaos"\nstate_dir = "{folder / "state"}"\n\n'
        '[[hosts]]\nname = "local"\naddress = "127.0.0.1"\ngpus = "none"\n\n'
        f'[[models]]\nname = "{model}"\nbackend = "sim"\nport = {port}\n'
        f"replicas = {replicas}\noptions = {{ speed = {speed} }}\n"
        + LAUNCHER_TOML
        + ROUTER_TOML
    )
    path = folder / "fleet.toml"
    path.write_text(text)
    return path
