"""This machine's network addresses, read with psutil (never by parsing `ifconfig`)."""

from __future__ import annotations

import ipaddress
import socket

import psutil


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
