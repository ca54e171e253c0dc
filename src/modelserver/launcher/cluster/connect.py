"""Joining the Ray cluster of a `[cluster]` fleet, with errors that name `cluster.address`.

Address forms (config.ClusterConfig.address): "auto" (this machine belongs to a cluster:
`ray start` ran here, or RAY_ADDRESS names one), "HOST:PORT" (the head's GCS address),
"ray://HOST:PORT" (a Ray Client server), "local" (a private single-machine Ray that `up`
starts, with token authentication and its dashboard on loopback, and `down` stops).

A GCS or Ray Client address is first tried with a plain TCP connection, so an address where
nothing answers fails in seconds with what was found, not after Ray's own minute of retries.
Token authentication (Ray >= 2.52, docs.ray.io "Ray token authentication": RAY_AUTH_MODE=token
on every node, the token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) is
Ray's: whatever the environment of `modelserver` carries reaches ray.init unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from modelserver.config import Fleet
from modelserver.errors import ClusterError
from modelserver.launcher.cluster import require_ray
from modelserver.launcher.cluster.names import NAMESPACE

CONNECT_PROBE_S = 5.0
LOCAL_START_S = 60.0


def _key(fleet: Fleet) -> str:
    return f"{fleet.source}: cluster.address = {fleet.cluster.address!r}" if fleet.cluster \
        else fleet.source


def connect(fleet: Fleet, *, start_local: bool = False) -> None:
    """Connect this process to the fleet's cluster as a driver in namespace `modelserver`.
    Raises ClusterError (naming `cluster.address` and what was found) when it cannot."""
    assert fleet.cluster is not None
    address = fleet.cluster.address
    if address == "local":  # before Ray is imported: it reads its settings from the environment
        address = _local_address(fleet, start=start_local)
    require_ray()
    import ray

    if ray.is_initialized():
        return
    if fleet.cluster.address not in ("auto", "local"):
        _answers(fleet, address.removeprefix("ray://"))
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)
    except ConnectionError as exc:
        raise ClusterError(f"{_key(fleet)}: no Ray cluster answers ({_first_line(exc)});"
                           " start one with `ray start --head`, or give its address") from None
    except Exception as exc:
        text = str(exc)
        if "Version mismatch" in text or "version mismatch" in text:
            raise ClusterError(
                f"{_key(fleet)}: the cluster runs another Ray or Python version than this"
                f" machine (Ray {ray.__version__}, Python {sys.version.split()[0]} here);"
                f" install the cluster's versions here. Ray said: {' '.join(text.split())}"
            ) from None
        raise ClusterError(f"{_key(fleet)}: cannot join the cluster: {_first_line(exc)}") \
            from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _answers(fleet: Fleet, host_port: str) -> None:
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_PROBE_S):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ClusterError(f"{_key(fleet)}: nothing answers at {host_port} ({why}); is the"
                           " head running and reachable from here?") from None


# -- a private single-machine Ray (address = "local") --------------------------------------


def _local_record(fleet: Fleet) -> Path:
    return fleet.state_dir() / "ray-local.json"


def local_token_path(fleet: Fleet) -> Path:
    return fleet.state_dir() / "ray-auth-token"


def _read_local(fleet: Fleet) -> dict[str, Any] | None:
    try:
        data = json.loads(_local_record(fleet).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        os.kill(int(data["pid"]), 0)
    except (KeyError, ValueError, ProcessLookupError, PermissionError):
        return None
    return data


LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Ray's switch for a cluster of one machine: its address look-ups give 127.0.0.1, so the
private Ray and its drivers talk over loopback (ray/_private/services.py,
get_node_ip_address)."""


def _local_env(fleet: Fleet) -> dict[str, str]:
    """Token authentication with the token `up` wrote for this fleet, loopback addresses."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(local_token_path(fleet)),
            **LOOPBACK_ONLY}


def _use_token(fleet: Fleet) -> None:
    os.environ.update(_local_env(fleet))
    os.environ.pop("RAY_AUTH_TOKEN", None)


def _local_address(fleet: Fleet, *, start: bool) -> str:
    running = _read_local(fleet)
    if running is None:
        if not start:
            raise ClusterError(f"{_key(fleet)}: no private Ray runs for this fleet"
                               " (`modelserver up` starts it)")
        running = _start_local(fleet)
    _use_token(fleet)
    return str(running["address"])


def _start_local(fleet: Fleet) -> dict[str, Any]:
    assert fleet.cluster is not None
    state = fleet.state_dir()
    state.mkdir(parents=True, exist_ok=True)
    token = local_token_path(fleet)
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    port, dashboard, client = _free_ports(3)  # no fixed port: several private Rays may run
    temp_dir = tempfile.mkdtemp(prefix="msray-")  # short: Ray's socket paths live here
    argv = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={port}", f"--temp-dir={temp_dir}",
            f"--dashboard-host={fleet.cluster.dashboard_host}", f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}", "--disable-usage-stats"]
    if fleet.cluster.local_gpus is not None:
        argv.append(f"--num-gpus={fleet.cluster.local_gpus}")
    env = {**os.environ, **_local_env(fleet)}
    env.pop("RAY_AUTH_TOKEN", None)
    log = os.open(state / "ray-local.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        os.close(log)
    record = {"pid": proc.pid, "address": f"127.0.0.1:{port}", "temp_dir": temp_dir}
    _local_record(fleet).write_text(json.dumps(record))
    deadline = time.monotonic() + LOCAL_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"{_key(fleet)}: the private Ray exited at start (code"
                               f" {proc.returncode}); see {state / 'ray-local.log'}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return record
        time.sleep(0.2)
    stop_local(fleet)
    raise ClusterError(f"{_key(fleet)}: the private Ray did not answer within"
                       f" {LOCAL_START_S:g} s; see {state / 'ray-local.log'}")


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def stop_local(fleet: Fleet) -> bool:
    """Stop the private Ray `up` started for this fleet (its whole session); True if one ran."""
    running = _read_local(fleet)
    _local_record(fleet).unlink(missing_ok=True)
    if running is None:
        return False
    pgid = int(running["pid"])
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)  # `ray start --block` stops what it started
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    shutil.rmtree(str(running.get("temp_dir", "")), ignore_errors=True)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
