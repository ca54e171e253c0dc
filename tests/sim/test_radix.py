"""The radix prefix cache: matching, inserting, locking and LRU eviction under a budget."""

from __future__ import annotations

from modelserver.sim.radix import RadixCache


def test_match_counts_the_shared_prefix_and_has_no_side_effects() -> None:
    cache = RadixCache(budget=100)
    cache.insert([1, 2, 3, 4, 5], now=1.0)
    assert cache.match([1, 2, 3, 9]) == 3
    assert cache.match([1, 2, 3, 4, 5, 6]) == 5
    assert cache.match([7]) == 0
    assert cache.size == 5  # matching split nothing and added nothing


def test_insert_splits_edges_and_counts_only_new_tokens() -> None:
    cache = RadixCache(budget=100)
    _, new = cache.insert([1, 2, 3, 4], now=1.0)
    assert new == 4
    _, new = cache.insert([1, 2, 9, 9, 9], now=2.0)
    assert new == 3
    assert cache.size == 7
    assert cache.match([1, 2, 9, 9, 9]) == 5
    assert cache.match([1, 2, 3, 4]) == 4
    _, new = cache.insert([1, 2], now=3.0)  # ends inside an existing path
    assert new == 0 and cache.size == 7


def test_eviction_takes_least_recently_used_leaves_first() -> None:
    cache = RadixCache(budget=100)
    cache.insert([1, 1, 1], now=1.0)
    cache.insert([2, 2, 2], now=2.0)
    cache.insert([3, 3, 3], now=3.0)
    cache.insert([1, 1, 1], now=4.0)  # touched again: now the most recent
    freed = cache.evict(3)
    assert freed == 3
    assert cache.match([2, 2, 2]) == 0
    assert cache.match([1, 1, 1]) == 3
    assert cache.match([3, 3, 3]) == 3


def test_eviction_climbs_to_parents_once_their_children_are_gone() -> None:
    cache = RadixCache(budget=100)
    cache.insert([1, 2, 3], now=1.0)
    cache.insert([1, 2, 4], now=1.0)
    assert cache.evict(4) == 4  # two leaves of one token, then their parent [1, 2]
    assert cache.size == 0


def test_locked_paths_survive_eviction() -> None:
    cache = RadixCache(budget=100)
    node, _ = cache.insert([5, 5, 5, 5], now=1.0)
    cache.insert([6, 6], now=2.0)
    cache.lock(node)
    assert cache.evictable_size == 2
    assert cache.evict(10) == 2
    assert cache.match([5, 5, 5, 5]) == 4
    cache.unlock(node)
    assert cache.evictable_size == 4


def test_lock_survives_a_split_of_the_locked_edge() -> None:
    cache = RadixCache(budget=100)
    node, _ = cache.insert([1, 2, 3, 4], now=1.0)
    cache.lock(node)
    cache.insert([1, 2, 7], now=2.0)  # splits the locked edge after [1, 2]
    assert cache.locked_size == 4
    cache.evict(100)
    assert cache.match([1, 2, 3, 4]) == 4 and cache.match([1, 2, 7]) == 2
    cache.unlock(node)
    assert cache.locked_size == 0 and cache.evictable_size == 4


def test_reset_empties_the_cache() -> None:
    cache = RadixCache(budget=100)
    cache.insert([1, 2, 3], now=1.0)
    cache.reset()
    assert cache.size == 0 and cache.match([1, 2, 3]) == 0
