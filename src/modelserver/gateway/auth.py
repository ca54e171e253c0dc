"""API keys: who may use `/v1` and who may use `/admin`.

Keys come from the fleet file (`[gateway] api_keys`, `admin_keys`) and the environment
(`MODELSERVER_API_KEYS`, `MODELSERVER_ADMIN_KEYS`, comma-separated). With no key at all the
gateway is open, and then it must be bound to loopback. Keys are compared in constant time and
never logged: only a short fingerprint is, so two log lines can be matched to one key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from modelserver.config import GatewayConfig
from modelserver.errors import ModelServerError
from modelserver.gateway.credentials import bearer_token, split_keys
from modelserver.gateway.tenants import tenant_keys

API_KEYS_ENV = "MODELSERVER_API_KEYS"
ADMIN_KEYS_ENV = "MODELSERVER_ADMIN_KEYS"


class GatewayConfigError(ModelServerError):
    """The gateway cannot start with these settings (e.g. open and not on loopback)."""


def _fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class KeyRing:
    api_keys: tuple[bytes, ...]
    admin_keys: tuple[bytes, ...]

    @classmethod
    def from_config(
        cls, config: GatewayConfig, environ: Mapping[str, str] | None = None
    ) -> KeyRing:
        env = os.environ if environ is None else environ
        tenants = [k for tenant in config.tenants for k in tenant_keys(tenant, env)]
        api = [*config.api_keys, *tenants, *split_keys(env.get(API_KEYS_ENV))]
        admin = [*config.admin_keys, *split_keys(env.get(ADMIN_KEYS_ENV))]
        return cls(tuple(k.encode() for k in api), tuple(k.encode() for k in admin))

    @property
    def is_open(self) -> bool:
        return not self.api_keys and not self.admin_keys

    def allows_api(self, authorization: str | None) -> bool:
        if self.is_open:
            return True
        # An admin key is also good for the API: an operator can test what they run.
        return _matches(bearer_token(authorization), (*self.api_keys, *self.admin_keys))

    def allows_admin(self, authorization: str | None) -> bool:
        if self.is_open:
            return True
        return _matches(bearer_token(authorization), self.admin_keys)

    def check_bind(self, host: str) -> None:
        """An open gateway (no keys) may only listen on loopback."""
        if self.is_open and not is_loopback(host):
            raise GatewayConfigError(
                f"gateway.host = {host!r}: a gateway with no API keys may only bind to loopback"
                f" (127.0.0.1, ::1, localhost); set [gateway] api_keys or {API_KEYS_ENV}"
            )

    def describe(self) -> str:
        """For logs: how many keys of each kind, with fingerprints, never the keys."""
        if self.is_open:
            return "open (no keys, loopback only)"
        api = ", ".join(_fingerprint(k.decode()) for k in self.api_keys) or "none"
        admin = ", ".join(_fingerprint(k.decode()) for k in self.admin_keys) or "none"
        return f"api keys [{api}], admin keys [{admin}] (sha256 fingerprints)"


def _matches(token: bytes | None, keys: Iterable[bytes]) -> bool:
    if token is None:
        return False
    found = False
    for key in keys:  # no early exit: the time taken does not tell which key was close
        found |= hmac.compare_digest(token, key)
    return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
