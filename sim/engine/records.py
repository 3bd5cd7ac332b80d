"""Plain, picklable results of a run: one `OpRecord` per op, rebuilt into every report."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field


@dataclass
class OpRecord:
    name: str
    kind: str
    layer: int
    phase: str
    step: int
    op_class: str
    device: int
    unit: str
    dtype: str
    shape: tuple[int, ...]
    flops: float
    bytes: dict[str, float]  # memory level -> bytes moved
    start_s: float
    end_s: float
    compute_s: float  # compute unit busy
    stall_s: dict[str, float]  # "memory:<level>" / "link:<name>" -> compute idle waiting on it
    overhead_s: float  # dispatch / launch
    events: int  # simulation events scheduled while this op ran (its own, and the host's meanwhile)
    utilization: float = 1.0  # useful fraction of the compute unit's peak (tile / wave quantisation)
    hits: dict[str, tuple[float, float]] = field(default_factory=dict)  # cache -> (hit bytes, looked-up bytes)
    link_bytes: dict[str, float] = field(default_factory=dict)  # link -> bytes this device sent over it
    level_busy_s: dict[str, float] = field(default_factory=dict)  # memory level -> occupied time
    level_span_s: dict[str, tuple[float, float]] = field(default_factory=dict)  # first grant, last end

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def total_bytes(self) -> float:
        return sum(self.bytes.values())

    def intensity_at(self, level: str) -> float | None:
        """FLOPs per byte this op moved at `level` (None if it moved none there)."""
        nbytes = self.bytes.get(level, 0.0)
        return self.flops / nbytes if nbytes else None

    @functools.cached_property
    def _resource_times(self) -> dict[str, float]:
        return self.resource_times()

    def resource_times(self) -> dict[str, float]:
        """How long each resource held this op up. Compute and data movement overlap, so a memory
        level counts for the longer of the time it was busy serving the op and the time compute
        stalled on it: a level busy 49 us under 41 us of compute is the bottleneck even though the
        compute unit stalled only 8 us."""
        times = {"compute": self.compute_s, "overhead": self.overhead_s, **self.stall_s}
        for level, busy in self.level_busy_s.items():
            if not level.startswith("link:"):  # links are already in stall_s
                key = f"memory:{level}"
                times[key] = max(times.get(key, 0.0), busy)
        return times

    @property
    def bound(self) -> str:
        """The resource that held the op up longest (see `resource_times`)."""
        return max(self._resource_times.items(), key=lambda kv: (kv[1], kv[0]))[0]

    def to_dict(self, balance_level: str) -> dict:
        d = asdict(self)
        d.pop("level_busy_s")
        d.pop("level_span_s")
        d["shape"] = list(self.shape)
        d["duration_s"] = self.duration_s
        d["intensity"] = self.intensity_at(balance_level)
        d["intensity_per_level"] = {lvl: self.intensity_at(lvl) for lvl in self.bytes}
        d["hits"] = {c: list(v) for c, v in self.hits.items()}
        d["bound"] = self.bound
        return d


@dataclass
class RunResult:
    hardware: str
    workload: str
    ops: list[OpRecord]
    events: int
    meta: dict = field(default_factory=dict)  # what ran on what (filled by sim.pipeline)
