"""The exact per-worker block index, fed events by hand (no sockets)."""

from __future__ import annotations

import msgpack
import pytest

from modelserver.routing.kv_events import IndexState, WorkerBlocks, decode_batch
from modelserver.sim.kv_events import page_hashes

TOKENS = list(range(100, 140))  # 40 tokens: 10 pages of 4


def stored(tokens: list[int], first_page: int, pages: int, size: int = 4) -> list[list[object]]:
    """BlockStored events as an engine sends them, one per page, chained by hash."""
    hashes = page_hashes(tokens, first_page + pages, size)
    return [
        ["BlockStored", [hashes[k]], hashes[k - 1] if k else None,
         tokens[k * size:(k + 1) * size], size, None]
        for k in range(first_page, first_page + pages)
    ]


def live_blocks() -> WorkerBlocks:
    blocks = WorkerBlocks("http://w:1")
    blocks.set_state(IndexState.LIVE, "test")
    return blocks


def test_stored_pages_match_whole_pages_from_the_start() -> None:
    blocks = live_blocks()
    blocks.apply(stored(TOKENS, 0, 5))
    assert blocks.cached_tokens(TOKENS) == 20
    assert blocks.cached_tokens(TOKENS[:22]) == 20
    assert blocks.cached_tokens([1, *TOKENS]) == 0  # same pages, shifted: no match


def test_a_removed_page_cuts_the_match_there() -> None:
    blocks = live_blocks()
    blocks.apply(stored(TOKENS, 0, 5))
    hashes = page_hashes(TOKENS, 5, 4)
    blocks.apply([["BlockRemoved", [hashes[2], hashes[3], hashes[4]]]])
    assert blocks.cached_tokens(TOKENS) == 8


def test_a_page_whose_parent_was_never_seen_is_not_claimed() -> None:
    blocks = live_blocks()
    blocks.apply(stored(TOKENS, 3, 2))  # pages 3-4 without 0-2: stored before we listened
    assert len(blocks) == 0
    assert blocks.cached_tokens(TOKENS) == 0


def test_all_blocks_cleared_empties_the_worker() -> None:
    blocks = live_blocks()
    blocks.apply(stored(TOKENS, 0, 5))
    blocks.apply([["AllBlocksCleared"]])
    assert len(blocks) == 0 and blocks.cached_tokens(TOKENS) == 0


def test_a_degraded_index_answers_nothing() -> None:
    blocks = WorkerBlocks("http://w:1")
    blocks.apply(stored(TOKENS, 0, 5))
    assert blocks.state is IndexState.DEGRADED
    assert blocks.cached_tokens(TOKENS) is None  # the caller uses its approximate tree


def test_unknown_event_tags_are_skipped_and_bad_batches_refused() -> None:
    blocks = live_blocks()
    blocks.apply([["SomethingNewer", 1, 2], *stored(TOKENS, 0, 1)])
    assert blocks.cached_tokens(TOKENS) == 4
    with pytest.raises(ValueError, match="unreadable event batch"):
        decode_batch(b"\xc1")
    with pytest.raises(ValueError, match=r"\[ts, \[events\]\]"):
        decode_batch(msgpack.packb({"ts": 1}))
    assert decode_batch(msgpack.packb([1.5, [["AllBlocksCleared"]], 0])) == [["AllBlocksCleared"]]
