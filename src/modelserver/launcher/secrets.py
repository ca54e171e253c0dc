"""Keys the launcher must never store or print: which flags carry one, how a command line is
shown with them masked, and every key a fleet configures. Standard library only, so the
backends, the state file and the fleet config can all use it without importing each other."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelserver.config import Fleet

REDACTED = "***"
"""What a key is replaced with wherever the launcher stores or shows text."""

SECRET_FLAGS = frozenset({"--api-key", "--admin-api-key"})
"""Flags whose value is a key (SGLang's and vLLM's --api-key, SGLang's --admin-api-key,
llama-server's --api-key), written `--api-key KEY` or `--api-key=KEY`."""

GATEWAY_KEY_ENVS = ("MODELSERVER_API_KEYS", "MODELSERVER_ADMIN_KEYS")
"""The gateway's own keys (modelserver.gateway.auth reads them); never an engine's business."""


def secret_values(argv: Sequence[str]) -> list[str]:
    """The values `argv` gives to SECRET_FLAGS, in either form."""
    found: list[str] = []
    for index, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag in SECRET_FLAGS and equals:
            found.append(value)
        elif arg in SECRET_FLAGS and index + 1 < len(argv):
            found.append(argv[index + 1])
    return found


def masked_argv(argv: Sequence[str]) -> list[str]:
    """`argv` with the value of every SECRET_FLAGS flag replaced by ***."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        flag, equals, _ = arg.partition("=")
        if hide_next:
            out.append(REDACTED)
        elif flag in SECRET_FLAGS and equals:
            out.append(f"{flag}={REDACTED}")
        else:
            out.append(arg)
        hide_next = arg in SECRET_FLAGS
    return out


def fleet_secrets(fleet: Fleet, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Every key the fleet configures: engines' `api_key`s, keys in engines' `args`, the
    gateway's keys (from the file and its environment variables). Redacted from whatever
    the launcher stores or prints."""
    env = os.environ if environ is None else environ
    keys = [m.api_key or "" for m in fleet.models]
    keys += [value for m in fleet.models for value in secret_values(m.args)]
    keys += [*fleet.gateway.api_keys, *fleet.gateway.admin_keys]
    keys += [part.strip() for name in GATEWAY_KEY_ENVS for part in env.get(name, "").split(",")]
    return tuple(sorted({k for k in keys if k}))
