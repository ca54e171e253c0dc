"""KV-cache events of the simulated engine, published as SGLang publishes them.

Facts from sgl-project/sglang `python/sglang/srt/disaggregation/kv_events.py` and
`mem_cache/radix_cache.py` (`_record_store_event`):

* `--kv-events-config` is a JSON object: `publisher` ("null" or "zmq"), `endpoint` (default
  `tcp://*:5557`; bound when it holds `*`, `::`, `ipc://` or `inproc://`, else connected),
  `replay_endpoint` (a ROUTER socket; none by default), `buffer_steps` (10,000 batches kept
  for replay), `hwm`, `max_queue_size`, `topic` ("").
* Each batch goes out as three ZMQ frames: the topic, the sequence number (8 bytes,
  big-endian, from 0), and a msgpack `EventBatch` encoded array-like: `[ts, [event, ...]]`,
  each event an array led by its tag: `["BlockStored", block_hashes, parent_block_hash,
  token_ids, block_size, lora_id]`, `["BlockRemoved", block_hashes]`, `["AllBlocksCleared"]`.
* One `BlockStored` per page of `page_size` tokens, `block_hashes` holding that page's one
  hash, `parent_block_hash` the previous page's (None for the first page).
* Replay: a client sends `[b"", start_seq]` (8 bytes big-endian) to the ROUTER socket and
  gets `[b"", seq, payload]` for every buffered batch from `start_seq` on, then
  `[b"", -1 (8 bytes, signed), b""]`.

The sim's cache is a radix tree of tokens; a page exists while some path of the tree covers
it whole. Here a page's hash chains the previous page's hash with the page's tokens
(Python's hash of ints is the same in every process, so replicas agree, as SGLang's do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson
import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

END_OF_REPLAY = (-1).to_bytes(8, "big", signed=True)
DEFAULT_PAGE_SIZE = 16
"""Tokens per published block. SGLang's own default page size is 1 (one event per token);
16 (vLLM's default block size) keeps the event volume of a busy sim fleet reasonable on a
CPU machine. `modelserver sim --page-size` changes it."""

_KNOWN_KEYS = {
    "publisher",
    "endpoint",
    "replay_endpoint",
    "buffer_steps",
    "hwm",
    "max_queue_size",
    "topic",
}


@dataclass(frozen=True)
class KvEventsConfig:
    """SGLang's `KVEventsConfig`, with its defaults."""

    publisher: str = "null"
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""

    @property
    def enabled(self) -> bool:
        return self.publisher == "zmq"


def parse_kv_events_config(text: str) -> KvEventsConfig:
    """The value of `--kv-events-config` (JSON), or ValueError saying what is wrong."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"--kv-events-config is not JSON ({exc}): {text!r}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--kv-events-config must be a JSON object, got {text!r}")
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(
            f"--kv-events-config: unknown keys {unknown}; allowed: {sorted(_KNOWN_KEYS)}"
        )
    if data.get("publisher", "null") not in ("null", "zmq"):
        raise ValueError(
            f"--kv-events-config: publisher must be 'null' or 'zmq', got {data['publisher']!r}"
        )
    for key in ("endpoint", "topic"):
        if key in data and not isinstance(data[key], str):
            raise ValueError(f"--kv-events-config: {key} must be a string")
    for key in ("buffer_steps", "hwm", "max_queue_size"):
        if key in data and not (isinstance(data[key], int) and data[key] > 0):
            raise ValueError(f"--kv-events-config: {key} must be a positive integer")
    replay = data.get("replay_endpoint")
    if replay is not None and not isinstance(replay, str):
        raise ValueError("--kv-events-config: replay_endpoint must be a string or null")
    return KvEventsConfig(**data)


def page_hashes(tokens: Sequence[int], pages: int, page_size: int) -> list[int]:
    """The chained hashes of the first `pages` pages of `tokens`."""
    hashes: list[int] = []
    previous = 0
    for k in range(pages):
        previous = hash((previous, tuple(tokens[k * page_size : (k + 1) * page_size])))
        hashes.append(previous)
    return hashes


def _binds(endpoint: str) -> bool:
    """SGLang's rule: bind a wildcard or local endpoint, connect anything else."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


def _last_endpoint(socket: zmq.Socket[bytes] | zmq.asyncio.Socket) -> str:
    endpoint = socket.getsockopt(zmq.LAST_ENDPOINT)
    return endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)


class KvEventPublisher:
    """Collects the radix cache's changes as page events and publishes a batch per step.

    It is the radix cache's `listener` (`stored`, `removed`, `cleared`); the server calls
    `flush()` after each engine step. Batches are numbered from 0 and kept for replay.
    """

    def __init__(
        self,
        config: KvEventsConfig,
        page_size: int = DEFAULT_PAGE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page size must be at least 1 token, got {page_size}")
        self.config = config
        self.page_size = page_size
        self._clock = clock
        self._pending: list[list[Any]] = []
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._next_seq = 0
        self._topic = config.topic.encode()
        self._context = zmq.asyncio.Context.instance()
        self._pub: zmq.Socket[bytes] | None = None
        """A plain socket: sends never wait (NOBLOCK), the engine loop must not either."""
        self._replay: zmq.asyncio.Socket | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self.published = 0
        self.bound: str | None = None
        """The endpoint the PUB socket bound (its port resolved), None when it connects."""
        self.bound_replay: str | None = None
        """Batches published (sent or, while paused, only kept for replay)."""

    # --- the radix cache's listener ----------------------------------------------------

    def stored(self, tokens: Sequence[int], start: int) -> None:
        """The tree now covers `tokens` whole; positions from `start` on are new."""
        self._pages(tokens, start, stored=True)

    def removed(self, tokens: Sequence[int], start: int) -> None:
        """The tree no longer covers `tokens` past position `start`."""
        self._pages(tokens, start, stored=False)

    def cleared(self) -> None:
        self._pending = [["AllBlocksCleared"]]

    def _pages(self, tokens: Sequence[int], start: int, *, stored: bool) -> None:
        size = self.page_size
        first = start // size  # the first page whose end lies past `start`
        last = len(tokens) // size  # pages wholly inside `tokens`
        if last <= first:
            return
        hashes = page_hashes(tokens, last, size)
        if not stored:
            self._pending.append(["BlockRemoved", hashes[first:last]])
            return
        for k in range(first, last):
            parent = hashes[k - 1] if k else None
            page = list(tokens[k * size : (k + 1) * size])
            self._pending.append(["BlockStored", [hashes[k]], parent, page, size, None])

    # --- publishing ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the PUB socket (and the replay socket, served by a task)."""
        self._open_pub()
        endpoint = self.config.replay_endpoint
        if endpoint is not None:
            self._replay = self._context.socket(zmq.ROUTER)
            self._replay.setsockopt(zmq.LINGER, 0)
            self._replay.bind(endpoint)
            self.bound_replay = _last_endpoint(self._replay)
            self._replay_task = asyncio.create_task(self._serve_replay(), name="kv-replay")

    def _open_pub(self) -> None:
        pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.set_hwm(self.config.hwm)
        if _binds(self.config.endpoint):
            # Resuming after `pause` takes the port bound first (`tcp://*:*` picks any).
            pub.bind(self.bound or self.config.endpoint)
            self.bound = _last_endpoint(pub)
        else:
            pub.connect(self.config.endpoint)
        self._pub = pub

    def flush(self) -> None:
        """Send what the last step changed as one batch (nothing if nothing changed)."""
        if not self._pending:
            return
        payload = msgpack.packb([self._clock(), self._pending])
        self._pending = []
        seq = self._next_seq
        self._next_seq += 1
        self._buffer.append((seq, payload))
        self.published += 1
        if self._pub is None:
            return  # paused: kept for replay only
        with contextlib.suppress(zmq.Again):  # over the high-water mark: dropped, as SGLang
            self._pub.send_multipart(
                (self._topic, seq.to_bytes(8, "big"), payload), flags=zmq.NOBLOCK
            )

    def pause(self) -> None:
        """Close the PUB socket (subscribers see the connection drop); batches made meanwhile
        are numbered and kept for replay. For tests of a lost event stream."""
        if self._pub is not None:
            self._pub.close(linger=0)
            self._pub = None

    def resume(self) -> None:
        if self._pub is None:
            self._open_pub()

    async def _serve_replay(self) -> None:
        assert self._replay is not None
        while True:
            frames = await self._replay.recv_multipart()
            if len(frames) != 3:
                log.warning("kv events: bad replay request of %d frames", len(frames))
                continue
            client, _, start = frames
            first = int.from_bytes(start, "big")
            for seq, payload in list(self._buffer):
                if seq >= first:
                    await self._replay.send_multipart(
                        (client, b"", seq.to_bytes(8, "big"), payload)
                    )
            await self._replay.send_multipart((client, b"", END_OF_REPLAY, b""))

    async def stop(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
            self._replay_task = None
        for socket in (self._pub, self._replay):
            if socket is not None:
                socket.close(linger=0)
        self._pub = self._replay = None
