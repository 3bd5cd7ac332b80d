"""The simulated machine: simpy resources with queues for every compute unit, memory level and link.

A memory level is a single server of its bandwidth: a transfer of B bytes waits in the level's FIFO
queue, then occupies it for B / bandwidth; its first bytes arrive `latency` after it is granted and its
last bytes `latency` after it ends. Concurrent transfers on one level therefore contend, and latency is
pipelined rather than serialised. A FIFO server whose service times are known when a request arrives
grants it when the one before it ends, so a transfer's grant and its landings are computed on arrival
(from the level's next free time): the op that waits for them schedules one event per wait, at the
latest landing. A compute unit is such a server too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import simpy

from sim.config.hardware import Hardware, flat_bandwidths
from sim.mapping.collectives import link_bandwidth

COMPUTE_UNITS = ("matrix", "vector", "copy")  # "copy": a DMA engine, which computes nothing


@dataclass
class LevelUse:
    """What one op did on one memory level: for the record, the trace and the per-level bandwidth."""

    bytes: float = 0.0
    busy_s: float = 0.0
    first_s: float = float("inf")
    last_s: float = 0.0


class CountingEnvironment(simpy.Environment):
    """A simpy Environment that counts the events it schedules: the simulation's cost."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduled = 0

    def schedule(self, event, priority=1, delay=0) -> None:  # type: ignore[override]
        self.scheduled += 1
        super().schedule(event, priority, delay)


class _Links(dict):
    """Link id -> its simpy resource (one transfer at a time), made on first use."""

    def __init__(self, env: simpy.Environment):
        super().__init__()
        self.env = env

    def __missing__(self, link: str) -> simpy.Resource:
        res = self[link] = simpy.Resource(self.env, 1)
        return res


@dataclass
class Machine:
    hw: Hardware
    env: CountingEnvironment = field(default_factory=CountingEnvironment)

    def __post_init__(self) -> None:
        # each compute unit's and memory level's FIFO, and each link, made when first used: a cluster's
        # unused devices cost nothing
        self.compute_free: dict[tuple, float] = defaultdict(float)
        self.levels = self.hw.levels
        self._flat_bandwidth = flat_bandwidths(self.levels)
        self.free_at: dict[tuple, float] = defaultdict(float)
        self.links: dict[str, simpy.Resource] = _Links(self.env)
        self._route_bandwidth: dict[tuple[str, ...], float] = {}  # cut-through: a route's slowest link

    def send(self, links: tuple[str, ...], nbytes: float, use: dict[str, LevelUse], data: float | None = None):
        """Process: hold every link of a route for nbytes / link bandwidth (cut-through), `nbytes` being
        what the wire carries and `data` (default: the same) the bytes sent, which the links' use counts.
        Links are requested in a global order so that crossing routes cannot deadlock."""
        env = self.env
        bandwidth = self._route_bandwidth.get(links)
        if bandwidth is None:
            bandwidth = self._route_bandwidth[links] = min(link_bandwidth(self.hw, lnk) for lnk in links)
        requests = []
        for link in sorted(links):
            req = self.links[link].request()
            requests.append((link, req))
            yield req
        granted = env.now
        yield env.timeout(nbytes / bandwidth)
        for link, req in requests:
            self.links[link].release(req)
            u = use.setdefault(link, LevelUse())
            u.bytes += nbytes if data is None else data
            u.busy_s += env.now - granted
            u.first_s = min(u.first_s, granted)
            u.last_s = env.now

    def move(self, device: int, level: str, nbytes: float, use: LevelUse, op_bytes: float | None = None,
             run: float = 0.0) -> tuple[float, float, str]:
        """Queue `nbytes` (part of the op's `op_bytes` on this level, read in contiguous runs of `run` bytes,
        which set the achievable bandwidth) on `level` now; return (when its first bytes land, when its
        last bytes land or a write is acknowledged, the level). Granted when the queue ahead has drained."""
        spec = self.levels[level]
        bandwidth = self._flat_bandwidth[level] or spec.bandwidth_for(nbytes if op_bytes is None else op_bytes, run)
        start, end = self._enqueue(self.free_at, (device, level), nbytes / bandwidth)
        use.bytes += nbytes
        use.busy_s += end - start
        if start < use.first_s:
            use.first_s = start
        use.last_s = end
        return start + spec.latency, end + spec.latency, level

    def compute(self, device: int, unit: str, seconds: float) -> tuple[float, float]:
        """Queue `seconds` of work on a compute unit now; return (start, end)."""
        return self._enqueue(self.compute_free, (device, unit), seconds)

    def _enqueue(self, free_at: dict, key: tuple, seconds: float) -> tuple[float, float]:
        """A FIFO server's (start, end) for `seconds` of service requested now: it starts when the
        server's queue has drained."""
        now, free = self.env.now, free_at[key]
        start = free if free > now else now
        end = free_at[key] = start + seconds
        return start, end
