"""The engines' KV-cache events -> an exact per-worker index of cached blocks.

SGLang and vLLM publish `BlockStored` / `BlockRemoved` / `AllBlocksCleared` as msgpack
batches over ZMQ PUB (three frames: topic, 8-byte big-endian sequence number, payload
`[ts, [event, ...]]`, each event an array led by its tag), and can replay buffered batches
from a ROUTER socket. Format: sgl-project/sglang `python/sglang/srt/disaggregation/
kv_events.py` (vLLM's `vllm/distributed/kv_events.py` is the same); the simulated engine
publishes it too (`modelserver.sim.kv_events`).

An index is trusted only while its stream is whole. A sequence gap, a dropped connection or
a batch that cannot be read makes it DEGRADED: `cached_tokens` answers None and the policy
uses its approximate tree for that worker, never a stale exact answer. It becomes LIVE
again when a replay fills the gap, when the publisher is seen to start over (sequence 0, a
new process) or when `AllBlocksCleared` says the cache is empty. Our key for a block chains
its tokens with its parent's key, so a prompt's keys are computed from its token ids without
knowing the engine's hash function.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

END_OF_REPLAY = -1
_RECENT_BATCHES = 4096


class IndexState(enum.Enum):
    LIVE = "live"
    DEGRADED = "degraded"


@dataclass
class WorkerBlocks:
    """The blocks one worker's engine holds, as its events say."""

    url: str
    state: IndexState = IndexState.DEGRADED
    """DEGRADED until the stream is known whole from the engine's start."""
    block_size: int | None = None
    last_seq: int | None = None
    _ours: dict[int, int] = field(default_factory=dict)
    """Engine block hash -> our key (chained hash of token ids)."""
    _present: set[int] = field(default_factory=set)
    history: list[IndexState] = field(default_factory=list)
    """Every state change, oldest first (what tests and `status` read)."""

    def __len__(self) -> int:
        return len(self._present)

    def set_state(self, state: IndexState, why: str) -> None:
        if state is not self.state:
            log.info("kv events of %s: %s (%s)", self.url, state.value, why)
            self.state = state
            self.history.append(state)

    def clear(self) -> None:
        self._ours.clear()
        self._present.clear()

    def apply(self, events: Sequence[Any]) -> None:
        """Apply one batch's events (already in sequence)."""
        for event in events:
            if not isinstance(event, list | tuple) or not event:
                raise ValueError(f"not an event: {event!r}")
            tag = event[0]
            if tag == "BlockStored":
                self._stored(event[1], event[2], event[3], event[4])
            elif tag == "BlockRemoved":
                for engine_hash in event[1]:
                    key = self._ours.pop(engine_hash, None)
                    if key is not None:
                        self._present.discard(key)
            elif tag == "AllBlocksCleared":
                self.clear()
            # Other tags (newer engines may add some) carry nothing we index.

    def _stored(
        self, hashes: Sequence[int], parent: int | None, tokens: Sequence[int], size: int
    ) -> None:
        if self.block_size is None:
            self.block_size = size
        if parent is None:
            previous = 0
        else:
            known = self._ours.get(parent)
            if known is None:
                # Its parent was stored before we listened: it can never match from the root,
                # so leaving it out only under-counts (never claims a block not there).
                return
            previous = known
        for i, engine_hash in enumerate(hashes):
            block = tokens[i * size : (i + 1) * size]
            previous = hash((previous, tuple(block)))
            self._ours[engine_hash] = previous
            self._present.add(previous)

    def cached_tokens(self, tokens: Sequence[int]) -> int | None:
        """Leading tokens of `tokens` the engine holds; None while not LIVE."""
        if self.state is not IndexState.LIVE:
            return None
        size = self.block_size
        if size is None:
            return 0
        previous = 0
        matched = 0
        present = self._present
        for start in range(0, len(tokens) - size + 1, size):
            previous = hash((previous, tuple(tokens[start : start + size])))
            if previous not in present:
                break
            matched += size
        return matched


def decode_batch(payload: bytes) -> list[Any]:
    """The events of one msgpack batch `[ts, events, ...]` (ValueError if unreadable)."""
    try:
        batch = msgpack.unpackb(payload, strict_map_key=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise ValueError(f"unreadable event batch: {exc}") from None
    if not isinstance(batch, list) or len(batch) < 2 or not isinstance(batch[1], list):
        raise ValueError("an event batch is [ts, [events]]")
    events: list[Any] = batch[1]
    return events


@dataclass(frozen=True)
class Endpoints:
    """Where one worker's engine publishes its events, and replays them (optional)."""

    events: str
    replay: str | None = None
    topic: str = ""


class KvEventSubscriber:
    """Keeps one worker's `WorkerBlocks` from its engine's event stream (a task)."""

    def __init__(
        self,
        blocks: WorkerBlocks,
        endpoints: Endpoints,
        replay_timeout_s: float = 2.0,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.blocks = blocks
        self.endpoints = endpoints
        self.replay_timeout_s = replay_timeout_s
        self._context = context or zmq.asyncio.Context.instance()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.connected = False
        """The SUB socket's connection is up (ZMQ's monitor says so)."""
        self._whole = False
        """Every batch since the engine's cache was last known empty has been applied."""
        self._recent: dict[int, int] = {}
        """Sequence number -> hash of the payload, of the batches applied last."""
        self.changed = asyncio.Event()
        """Set after every batch and state change (tests wait on it, not on time)."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"kv-events {self.blocks.url}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        sub = self._context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, self.endpoints.topic.encode())
        monitor = sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sub.connect(self.endpoints.events)
        receive = asyncio.ensure_future(sub.recv_multipart())
        watch = asyncio.ensure_future(recv_monitor_message(monitor))
        try:
            while True:
                done, _ = await asyncio.wait(
                    {receive, watch}, return_when=asyncio.FIRST_COMPLETED
                )
                if watch in done:
                    event = watch.result()
                    watch = asyncio.ensure_future(recv_monitor_message(monitor))
                    await self._on_connection(event["event"])
                if receive in done:
                    frames = receive.result()
                    receive = asyncio.ensure_future(sub.recv_multipart())
                    await self._on_frames(frames)
                self.changed.set()
        finally:
            receive.cancel()
            watch.cancel()
            sub.disable_monitor()
            monitor.close(linger=0)
            sub.close(linger=0)

    async def _on_connection(self, event: int) -> None:
        blocks = self.blocks
        self.connected = event == zmq.EVENT_CONNECTED
        if event == zmq.EVENT_DISCONNECTED:
            blocks.set_state(IndexState.DEGRADED, "event stream disconnected")
        elif event == zmq.EVENT_CONNECTED and blocks.last_seq is not None:
            # Back after a drop: whatever was published meanwhile comes from the replay.
            await self._catch_up(blocks.last_seq + 1, "reconnected")

    async def _on_frames(self, frames: list[bytes]) -> None:
        blocks = self.blocks
        if len(frames) != 3 or len(frames[1]) != 8:
            self._lose(f"a message of {len(frames)} frames")
            return
        seq = int.from_bytes(frames[1], "big")
        payload = frames[2]
        last = blocks.last_seq
        if last is not None and seq <= last:
            if self._recent.get(seq) == hash(payload):
                return  # a batch the replay gave us already
            # The sequence went back: a new publisher (the engine restarted).
            blocks.clear()
            blocks.last_seq = last = None
            self._whole = False
        if last is None and seq != 0:
            await self._catch_up(0, f"first batch seen is number {seq}")
        elif last is not None and seq != last + 1:
            await self._catch_up(last + 1, f"batch {seq} came after {last}")
        last = blocks.last_seq
        if last is not None and seq <= last:
            return  # the replay brought it
        if seq != 0 and (last is None or seq != last + 1):
            self._lose(f"batches before {seq} are lost")
        self._apply(seq, payload)

    def _lose(self, why: str) -> None:
        """The index can no longer be trusted: start it empty, DEGRADED until the engine's
        cache is known again (a replay from sequence 0 or `AllBlocksCleared`)."""
        self.blocks.clear()
        self._whole = False
        self.blocks.set_state(IndexState.DEGRADED, why)

    def _apply(self, seq: int, payload: bytes) -> None:
        blocks = self.blocks
        if seq == 0:
            blocks.clear()  # a publisher's first batch: the engine started empty
            self._whole = True
        try:
            events = decode_batch(payload)
            blocks.apply(events)
        except (ValueError, IndexError, TypeError) as exc:
            blocks.last_seq = seq
            self._lose(str(exc))
            return
        self.batches += 1
        blocks.last_seq = seq
        self._recent[seq] = hash(payload)
        if len(self._recent) > _RECENT_BATCHES:
            del self._recent[next(iter(self._recent))]
        if any(isinstance(e, list) and e[:1] == ["AllBlocksCleared"] for e in events):
            self._whole = True
        if self._whole:
            blocks.set_state(IndexState.LIVE, f"batch {seq} follows a whole stream")

    async def _catch_up(self, first: int, why: str) -> None:
        """Ask the replay socket for every batch from `first` on and apply them in order."""
        blocks = self.blocks
        replay_at = self.endpoints.replay
        if replay_at is None:
            log.info("kv events of %s: %s; no replay endpoint", blocks.url, why)
            return
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(replay_at)
        try:
            await dealer.send_multipart((b"", first.to_bytes(8, "big")))
            async with asyncio.timeout(self.replay_timeout_s):
                while True:
                    _, seq_bytes, payload = await dealer.recv_multipart()
                    seq = int.from_bytes(seq_bytes, "big", signed=True)
                    if seq == END_OF_REPLAY:
                        if self._whole:  # nothing published since is missing
                            blocks.set_state(IndexState.LIVE, f"{why}; replay caught up")
                        break
                    last = blocks.last_seq
                    if last is not None and seq <= last:
                        continue
                    if seq != 0 and (last is None or seq != last + 1):
                        break  # the buffer no longer reaches back that far
                    self._apply(seq, payload)
        except (TimeoutError, ValueError, zmq.ZMQError) as exc:
            log.info("kv events of %s: %s; replay failed: %r", blocks.url, why, exc)
        finally:
            dealer.close(linger=0)


EndpointsFor = Callable[[str], Endpoints | None]


class KvEventIndex:
    """Every worker's `WorkerBlocks`, each kept by its own subscriber."""

    def __init__(self, endpoints_for: EndpointsFor, replay_timeout_s: float = 2.0) -> None:
        self._endpoints_for = endpoints_for
        self._replay_timeout_s = replay_timeout_s
        self.subscribers: dict[str, KvEventSubscriber] = {}
        self._no_events: set[str] = set()

    def blocks(self, url: str) -> WorkerBlocks | None:
        """The worker's index (subscribing at first ask); None if it publishes no events."""
        subscriber = self.subscribers.get(url)
        if subscriber is not None:
            return subscriber.blocks
        if url in self._no_events:
            return None
        endpoints = self._endpoints_for(url)
        if endpoints is None:
            self._no_events.add(url)
            return None
        subscriber = KvEventSubscriber(WorkerBlocks(url), endpoints, self._replay_timeout_s)
        self.subscribers[url] = subscriber
        subscriber.start()
        return subscriber.blocks

    def cached_tokens(self, url: str, tokens: Sequence[int]) -> int | None:
        blocks = self.blocks(url)
        return None if blocks is None else blocks.cached_tokens(tokens)

    async def forget(self, url: str) -> None:
        self._no_events.discard(url)
        subscriber = self.subscribers.pop(url, None)
        if subscriber is not None:
            await subscriber.stop()

    async def close(self) -> None:
        for url in list(self.subscribers):
            await self.forget(url)
