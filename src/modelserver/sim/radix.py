"""A radix tree of token ids: the prefix cache of the simulated engine.

Modelled on SGLang's RadixAttention cache (python/sglang/srt/mem_cache/radix_cache.py):
edges carry runs of tokens, a request locks the path of its prompt while it runs (so those
tokens cannot be evicted under it), and when room is needed the least recently used
unlocked leaves go first. Sizes are in tokens; the tree never holds more than `budget`
unlocked-plus-locked tokens once `evict` has been asked to make room.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import Protocol


class CacheListener(Protocol):
    """Told of every change of the tree's paths (sim/kv_events.py publishes them)."""

    def stored(self, tokens: Sequence[int], start: int) -> None: ...
    def removed(self, tokens: Sequence[int], start: int) -> None: ...
    def cleared(self) -> None: ...


class Node:
    """One edge of the tree: `key` is the run of tokens on the edge leading to this node."""

    __slots__ = ("children", "key", "last_access", "lock", "parent")

    def __init__(self, key: list[int], parent: Node | None, now: float) -> None:
        self.key = key
        self.parent = parent
        self.children: dict[int, Node] = {}
        self.lock = 0
        self.last_access = now


def _common_length(key: list[int], tokens: Sequence[int], start: int) -> int:
    limit = min(len(key), len(tokens) - start)
    i = 0
    while i < limit and key[i] == tokens[start + i]:
        i += 1
    return i


class RadixCache:
    """Prefix cache over token ids with a token budget and LRU eviction of unlocked leaves."""

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"cache budget must be at least 1 token, got {budget}")
        self.budget = budget
        self.root = Node([], None, 0.0)
        self.root.lock = 1  # the root is never evicted
        self.size = 0  # tokens held in the tree
        self.locked_size = 0  # tokens on paths some running request holds
        self.evicted_total = 0  # tokens evicted since start: sglang:evicted_tokens_total
        self.listener: CacheListener | None = None

    @property
    def evictable_size(self) -> int:
        return self.size - self.locked_size

    def match(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of `tokens` are cached. No side effects."""
        node, i, n = self.root, 0, len(tokens)
        while i < n:
            child = node.children.get(tokens[i])
            if child is None:
                break
            length = len(child.key)
            if tokens[i : i + length] == child.key:
                i += length
                node = child
                continue
            return i + _common_length(child.key, tokens, i)
        return i

    def insert(self, tokens: Sequence[int], now: float) -> tuple[Node, int]:
        """Add `tokens` as a path; returns the node ending it and how many tokens were new.

        Touches every node on the path (LRU order). Does not evict: call `evict` first to
        keep within the budget.
        """
        node, i, n = self.root, 0, len(tokens)
        node.last_access = now
        while i < n:
            child = node.children.get(tokens[i])
            if child is None:
                leaf = Node(list(tokens[i:]), node, now)
                node.children[tokens[i]] = leaf
                self.size += n - i
                if self.listener is not None:
                    self.listener.stored(tokens, i)
                return leaf, n - i
            length = len(child.key)
            if tokens[i : i + length] == child.key:
                child.last_access = now
                node = child
                i += length
                continue
            common = _common_length(child.key, tokens, i)
            node = self._split(child, common)
            node.last_access = now
            i += common
        return node, 0

    def _split(self, child: Node, at: int) -> Node:
        """Split `child`'s edge after `at` tokens; returns the new middle node."""
        parent = child.parent
        assert parent is not None and 0 < at < len(child.key)
        middle = Node(child.key[:at], parent, child.last_access)
        middle.lock = child.lock
        parent.children[child.key[0]] = middle
        child.key = child.key[at:]
        child.parent = middle
        middle.children[child.key[0]] = child
        return middle

    def lock(self, node: Node) -> None:
        """Protect the path root..node from eviction (a request is using it)."""
        current: Node | None = node
        while current is not None and current is not self.root:
            if current.lock == 0:
                self.locked_size += len(current.key)
            current.lock += 1
            current = current.parent

    def unlock(self, node: Node) -> None:
        current: Node | None = node
        while current is not None and current is not self.root:
            current.lock -= 1
            if current.lock == 0:
                self.locked_size -= len(current.key)
            current = current.parent

    def evict(self, tokens: int) -> int:
        """Free at least `tokens` tokens if possible, least recently used leaves first.

        Returns how many were freed (less than asked only if too much is locked).
        """
        if tokens <= 0:
            return 0
        order = itertools.count()
        heap = [(leaf.last_access, next(order), leaf) for leaf in self._unlocked_leaves()]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < tokens:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.key[0]]
            if self.listener is not None:
                path = self._path_tokens(leaf)
                self.listener.removed(path, len(path) - len(leaf.key))
            freed += len(leaf.key)
            self.size -= len(leaf.key)
            self.evicted_total += len(leaf.key)
            if parent is not self.root and not parent.children and parent.lock == 0:
                heapq.heappush(heap, (parent.last_access, next(order), parent))
        return freed

    def _path_tokens(self, node: Node) -> list[int]:
        keys: list[list[int]] = []
        current: Node | None = node
        while current is not None:
            keys.append(current.key)
            current = current.parent
        return [token for key in reversed(keys) for token in key]

    def _unlocked_leaves(self) -> list[Node]:
        leaves: list[Node] = []
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            elif node.lock == 0:
                leaves.append(node)
        return leaves

    def reset(self) -> None:
        """Drop everything (SGLang's /flush_cache; only allowed when nothing runs)."""
        self.root = Node([], None, 0.0)
        self.root.lock = 1
        self.size = 0
        self.locked_size = 0
        if self.listener is not None:
            self.listener.cleared()
