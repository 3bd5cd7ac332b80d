"""Residency: which tensors shared caches hold between ops, walked in execution order.

Each shared cache (`kind: cache`, `scope: shared`, inside a tensor's home) is an LRU of whole tensors
(or the prefix of one that was read: a KV cache read at length n leaves n tokens' worth resident).
Reads look a tensor up innermost first; what hits is served by that cache, the rest by the home.
Reads and writes allocate; a write leaves the bytes it wrote dirty, and they reach the home only when
the tensor is evicted (write-back: a KV cache appended one token writes back that token, not the
whole cache). An access larger than the cache bypasses it (streaming), as a cache with an
evict-first policy for streams would. Levels may pin tensor kinds (`pin: [weight]`): pinned tensors are
never evicted and take capacity away from the rest, until the run frees them: a pinned activation is
released after its last use (`release`), as the runtime that pins it frees its memory then; weights and
KV caches live to the end.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

#: A tensor's identity: (name, layer or None, forward pass or None); see `Tensor.key`.
Key = tuple


class Entry(NamedTuple):
    bytes: float  # resident bytes
    dirty: float  # of those, written since they came in: what an eviction writes back
    home: str


def absolute(key: Key, layer: int, seq: int) -> Key:
    name, lyr, sq = key
    return (name, None if lyr is None else lyr + layer, None if sq is None else sq + seq)


@dataclass
class CacheLevel:
    name: str
    capacity: float
    pin: frozenset[str] = frozenset()
    lru: OrderedDict[Key, Entry] = field(default_factory=OrderedDict)
    pinned: dict[Key, float] = field(default_factory=dict)
    lru_bytes: float = 0.0
    pinned_bytes: float = 0.0

    @property
    def used(self) -> float:
        return self.lru_bytes + self.pinned_bytes


class Lookup(NamedTuple):
    """Where one access's bytes came from, and what it pushed out."""

    sources: list[tuple[str, float]]  # (level serving it, bytes)
    writebacks: list[tuple[str, str, float]]  # (cache level, home level, bytes) of evicted dirty data
    hits: list[tuple[str, float, float]]  # (cache level, hit bytes, looked-up bytes)


def shifted_equal(a: tuple, b: tuple, dl: int, ds: int) -> bool:
    """Whether `save`d state `a`, moved `dl` layers and `ds` passes on, equals saved state `b` (both
    taken at the same block): the test for a walk whose result is its own start one step later."""
    for (lru_a, bytes_a, pinned_a, _), (lru_b, bytes_b, pinned_b, _) in zip(a[2], b[2]):
        if bytes_a != bytes_b or pinned_a != pinned_b or len(lru_a) != len(lru_b):
            return False
        for ((n, lyr, sq), e), ((n0, lyr0, sq0), e0) in zip(lru_a, lru_b):
            if n != n0 or e != e0:
                return False
            if lyr is None or lyr0 is None:
                if lyr is not lyr0:
                    return False
            elif lyr - dl != lyr0:
                return False
            if sq is None or sq0 is None:
                if sq is not sq0:
                    return False
            elif sq - ds != sq0:
                return False
    return True


class Residency:
    def __init__(self, caches: list[CacheLevel], order: list[str]):
        self.caches = caches  # innermost first
        self.index = {name: i for i, name in enumerate(order)}
        self._inside_of = {home: [c for c in caches if self.index[c.name] < self.index[home]] for home in order}

    def _inside(self, home: str) -> list[CacheLevel]:
        return self._inside_of[home]

    # -- the state seen from a block, so equal blocks in equal states can share one plan -----------
    # Residency decisions compare tensor identities only, so a block walks the same way from two
    # states that are equal seen from it: each cache's LRU in order with identities relative to the
    # block, its byte counts, and what is pinned of the tensors the block touches.

    def fingerprint(self, layer: int, seq: int, touched: tuple[Key, ...]) -> tuple:
        """A cheap necessary condition for that equality: sizes, byte counts and the touched pins."""
        return tuple(
            (len(c.lru), c.lru_bytes, c.pinned_bytes,
             tuple(c.pinned.get(absolute(t, layer, seq)) for t in touched) if c.pinned else ())
            for c in self.caches)

    def equals(self, saved: tuple, layer: int, seq: int) -> bool:
        """Whether the state now, seen from the block at (`layer`, `seq`), equals a `save`d one seen
        from its own block (call after the fingerprints matched)."""
        at_layer, at_seq, state = saved
        dl, ds = layer - at_layer, seq - at_seq
        for c, (lru, *_rest) in zip(self.caches, state):
            for ((n, lyr, sq), e), ((n0, lyr0, sq0), e0) in zip(c.lru.items(), lru):
                if n != n0 or e != e0:
                    return False
                if lyr is None or lyr0 is None:
                    if lyr is not lyr0:
                        return False
                elif lyr - lyr0 != dl:
                    return False
                if sq is None or sq0 is None:
                    if sq is not sq0:
                        return False
                elif sq - sq0 != ds:
                    return False
        return True

    def save(self, layer: int, seq: int, touched: tuple[Key, ...]) -> tuple:
        """The state after planning the block at (`layer`, `seq`), cheaply (absolute keys), for
        `restore` after an equal block elsewhere."""
        return (layer, seq, tuple(
            (tuple(c.lru.items()), c.lru_bytes, c.pinned_bytes,
             tuple(c.pinned.get(absolute(t, layer, seq)) for t in touched) if c.pinned else ())
            for c in self.caches))

    def restore(self, saved: tuple, layer: int, seq: int, touched: tuple[Key, ...]) -> None:
        """Set the caches to a state `save`d after an equal block in an equal (relative) state, moved
        to the block at (`layer`, `seq`). On this path pinned tensors are only ever added (a run that
        pins activations, which `release` drops, walks every op instead), so only the touched ones
        change."""
        at_layer, at_seq, state = saved
        dl, ds = layer - at_layer, seq - at_seq
        for c, (lru, lru_bytes, pinned_bytes, pins) in zip(self.caches, state):
            c.lru = OrderedDict(((n, None if lyr is None else lyr + dl, None if sq is None else sq + ds), e)
                                for (n, lyr, sq), e in lru)
            c.lru_bytes, c.pinned_bytes = lru_bytes, pinned_bytes
            for t, v in zip(touched, pins):
                if v is not None:
                    c.pinned[absolute(t, layer, seq)] = v

    def read(self, tensor: Key, kind: str, nbytes: float, home: str) -> Lookup:
        remaining, sources, hits = nbytes, [], []
        for cache in self._inside_of[home]:
            if remaining <= 0:
                break
            resident = cache.pinned.get(tensor) if cache.pinned else None
            if resident is None:
                entry = cache.lru.get(tensor)
                resident = 0.0 if entry is None else entry.bytes
            hit = resident if resident < remaining else remaining
            hits.append((cache.name, hit, remaining))
            if hit:
                sources.append((cache.name, hit))
                remaining -= hit
        if remaining > 0:
            sources.append((home, remaining))
        writebacks = self._allocate(tensor, kind, nbytes, home, dirty=False)
        return Lookup(sources, writebacks, hits)

    def release(self, tensor: Key) -> None:
        """Drop a dead tensor's pinned bytes from every cache (nothing written back: it is dead)."""
        for cache in self.caches:
            if cache.pinned:
                freed = cache.pinned.pop(tensor, None)
                if freed is not None:
                    cache.pinned_bytes -= freed

    def write(self, tensor: Key, kind: str, nbytes: float, home: str) -> tuple[str, list]:
        """Return the level the written bytes land in and the write-backs the allocation caused."""
        caches = [c for c in self._inside(home) if nbytes <= c.capacity - c.pinned_bytes]
        if not caches:
            return home, []
        landing = caches[-1]  # outermost cache that takes it holds the dirty copy
        writebacks = []
        if len(caches) > 1:  # inner caches keep a clean copy
            writebacks = self._allocate(tensor, kind, nbytes, home, dirty=False, only=caches[:-1])
        writebacks += self._allocate(tensor, kind, nbytes, home, dirty=True, only=(landing,))
        return landing.name, writebacks

    def _allocate(self, tensor: Key, kind: str, nbytes: float, home: str, dirty: bool,
                  only: list[CacheLevel] | None = None) -> list[tuple[str, str, float]]:
        writebacks = []
        for cache in self._inside_of[home] if only is None else only:
            if cache.pin and kind in cache.pin:
                before = cache.pinned.get(tensor, 0.0)
                want = nbytes if nbytes > before else before
                if cache.pinned_bytes - before + want <= cache.capacity:
                    # pinned ahead of everything unpinned: its own LRU copy goes, and what no longer fits
                    # beside the pins is evicted (a table read a few rows at a time, then whole, is pinned
                    # whole once it has been read whole)
                    old = cache.lru.pop(tensor, None)
                    if old is not None:
                        cache.lru_bytes -= old.bytes
                    cache.pinned[tensor] = want
                    cache.pinned_bytes += want - before
                    writebacks += self._evict(cache)
                    continue
            capacity = cache.capacity
            if nbytes > capacity - cache.pinned_bytes:
                continue  # streams past this cache
            lru = cache.lru
            old = lru.pop(tensor, None)
            if old is None:
                lru[tensor] = Entry(nbytes, nbytes if dirty else 0.0, home)
                cache.lru_bytes += nbytes
            else:
                keep = nbytes if nbytes > old.bytes else old.bytes
                stale = old.dirty + nbytes if dirty else old.dirty
                lru[tensor] = Entry(keep, stale if stale < keep else keep, home)
                cache.lru_bytes += keep - old.bytes
            writebacks += self._evict(cache)
        return writebacks

    @staticmethod
    def _evict(cache: CacheLevel) -> list[tuple[str, str, float]]:
        """Evict least recently used tensors until the cache's contents fit it; their dirty bytes."""
        writebacks = []
        while cache.lru_bytes + cache.pinned_bytes > cache.capacity and cache.lru:
            _, victim = cache.lru.popitem(last=False)
            cache.lru_bytes -= victim.bytes
            if victim.dirty:
                writebacks.append((cache.name, victim.home, victim.dirty))
        return writebacks
