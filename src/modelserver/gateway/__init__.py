"""The OpenAI-compatible gateway: `GatewayServer` in-process, `modelserver gateway` outside."""

from modelserver.gateway.app import build_app
from modelserver.gateway.auth import KeyRing
from modelserver.gateway.server import GatewayServer

__all__ = ["GatewayServer", "KeyRing", "build_app"]
