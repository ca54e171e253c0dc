"""A dead worker that counts who still calls it.

When the benchmark kills a simulated engine it listens on the dead engine's port itself and
drops every connection right after reading its request line (with a reset, as a crashed
process's kernel would). Clients see a failed attempt, as with a refused connection, and the
benchmark learns how many generation requests each contender still sent to the dead worker:
health probes (`GET`) are not counted, requests to generation routes are.
"""

from __future__ import annotations

import asyncio
import socket
import struct

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/generate")


class Tombstone:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.generation_requests = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.port, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=2.0)
        except (TimeoutError, ConnectionError):
            line = b""
        parts = line.decode("latin-1").split()
        if len(parts) >= 2 and parts[0] == "POST" and parts[1].split("?")[0] in GENERATION_PATHS:
            self.generation_requests += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER with a zero timeout: close() sends RST, not FIN, like a dead process.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
