"""This machine's network addresses, read with psutil (never by parsing `ifconfig`)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection

import psutil

from modelserver.errors import LaunchError


def local_addresses() -> set[str]:
    """Every IPv4/IPv6 address bound to an interface of this machine, loopback included."""
    found: set[str] = set()
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                found.add(addr.address.split("%", 1)[0])
    return found


def primary_address() -> str:
    """The first non-loopback, non-link-local IPv4 address of an interface that is up.

    Falls back to 127.0.0.1 on a machine with no such interface (a sandbox, a laptop offline).
    """
    stats = psutil.net_if_stats()
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        if name in stats and not stats[name].isup:
            continue
        for addr in addrs:
            if addr.family != socket.AF_INET:
                continue
            ip = ipaddress.ip_address(addr.address)
            if not (ip.is_loopback or ip.is_link_local):
                return addr.address
    return "127.0.0.1"


def free_port_range(
    count: int = 1, avoid: Collection[int] = (), host: str = "127.0.0.1", attempts: int = 200
) -> int:
    """A port p such that p .. p+count-1 can all be bound on `host` now, none in `avoid`.

    For fleets written at run time (tests, the demo, benchmarks): the launcher gives replica
    i of a model the port `port + i`, so a model's ports must be consecutive. Free *now*
    only: another process may take a port before it is used.
    """
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind((host, 0))
            base = int(probe.getsockname()[1])
        ports = range(base, base + count)
        if base + count - 1 > 65535 or any(port in avoid for port in ports):
            continue
        if all(_bindable(host, port) for port in ports):
            return base
    raise LaunchError(f"found no {count} consecutive free ports on {host}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
