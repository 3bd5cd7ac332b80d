"""Plain, picklable results of a run: one `BlockRecord` per block run (its ops' `OpRecord`s relative to
its start, shared by every run of an identical block), expanded into one `OpRecord` per op on demand."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace

from sim.config.hardware import Hardware
from sim.config.workload import Workload
from sim.graph.ops import Block
from sim.mapping.placement import Placement


@dataclass(slots=True)
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
    #: first grant, last end (in a BlockRecord's `ops`: relative to when the op began, start + overhead)
    level_span_s: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: a collective run once for several identical devices: each other device's (link bytes, link busy,
    #: link spans), which `BlockRecord.expand` puts into that device's record
    peers: dict[int, tuple[dict, dict, dict]] = field(default_factory=dict)
    micro: int = 0  # micro-batch
    #: the stream whose order it ran in: `comm` for a collective issued on a communication stream, `copy`
    #: for a prefetch from host memory, `compute` for every other op, collectives run in line included
    #: (the compute stream waits for them)
    stream: str = "compute"
    #: collectives and prefetch copies: how much of their transfers (after dispatch and late peers) the
    #: device's compute stream waited for: all of them for a collective run in line (between the op that
    #: feeds it and the op that consumes it), none when compute that did not need it hid them
    exposed_s: float = 0.0

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
        return max(self.resource_times().items(), key=lambda kv: (kv[1], kv[0]))[0]

    def to_dict(self, balance_level: str) -> dict:
        d = asdict(self)
        d.pop("level_busy_s")
        d.pop("level_span_s")
        d.pop("peers")
        d["shape"] = list(self.shape)
        d["duration_s"] = self.duration_s
        d["intensity"] = self.intensity_at(balance_level)
        d["intensity_per_level"] = {lvl: self.intensity_at(lvl) for lvl in self.bytes}
        d["hits"] = {c: list(v) for c, v in self.hits.items()}
        d["bound"] = self.bound
        return d


@dataclass(frozen=True, slots=True)
class BlockRecord:
    """One run of a block on `devices` (identical devices run it alike; one simulation stands for all).
    `ops` have times relative to `start_s`, local names and the first device's number; runs of an
    identical block in an identical state share one `ops` tuple."""

    block: Block
    devices: tuple[int, ...]
    start_s: float
    ops: tuple[OpRecord, ...]
    span_s: float  # from its start to the end of its last-ending op (a collective may outlast the rest)
    #: devices proved alike (`Program.links`): per device, the name of each of the first device's links
    #: for it; None where a collective's record keeps each device's figures (`OpRecord.peers`)
    links: tuple[dict[str, str], ...] | None = None

    @property
    def end_s(self) -> float:
        return self.start_s + self.span_s

    def expand(self) -> list[OpRecord]:
        """One absolute OpRecord per op per device."""
        blk, t0, out = self.block, self.start_s, []
        for i, d in enumerate(self.devices):
            rename = self.links[i] if self.links is not None and i else None
            for r in self.ops:
                links = r.peers.get(d)
                if rename is not None and r.link_bytes:  # the first device's, over the images of its links
                    links = _renamed(r, rename)
                busy, span = (links[1], links[2]) if links else (r.level_busy_s, r.level_span_s)
                began = t0 + r.start_s + r.overhead_s
                out.append(replace(
                    r, name=blk.op_name(r), bytes=dict(r.bytes), stall_s=dict(r.stall_s), hits=dict(r.hits),
                    phase=blk.phase if not blk.bound else r.phase,
                    step=blk.step if not blk.bound else r.step, layer=blk.layer if not blk.bound else r.layer,
                    micro=blk.micro,
                    device=d, start_s=t0 + r.start_s, end_s=t0 + r.end_s, peers={},
                    link_bytes=links[0] if links else r.link_bytes, level_busy_s=busy,
                    level_span_s={k: (began + a, began + b) for k, (a, b) in span.items()}))
        return out


def _renamed(r: OpRecord, rename: dict[str, str]) -> tuple[dict, dict, dict]:
    """A collective's (link bytes, busy, spans) with each link `link:X` renamed to `rename[X]`."""
    def key(k: str) -> str:
        return "link:" + rename[k[5:]] if k.startswith("link:") else k
    return ({rename[k]: v for k, v in r.link_bytes.items()}, {key(k): v for k, v in r.level_busy_s.items()},
            {key(k): v for k, v in r.level_span_s.items()})


@dataclass
class RunResult:
    """What ran on what, and how: the validated inputs, the placement, and the block records."""

    hw: Hardware
    blocks: list[BlockRecord]
    events: int
    name: str = ""  # the workload's name
    spec: Workload | None = None  # the workload (None for hand-made ops run outside a graph)
    #: tensor placement per pipeline stage (empty for hand-made ops)
    placements: dict[int, Placement] = field(default_factory=dict)
    hw_file: str = "hardware"  # where the hardware came from, for messages
    #: the `--set` overrides the inputs were loaded with ("key=value"), so that a report's title is not
    #: taken for the file's unchanged settings
    overrides: list[str] = field(default_factory=list)

    @property
    def hardware(self) -> str:
        return self.hw.name

    @property
    def placement(self) -> Placement | None:
        """The fullest stage's placement: the one that decides whether the run fits."""
        return max(self.placements.values(), key=lambda p: p.footprint.total, default=None)

    @property
    def op_records(self) -> int:
        """How many op records `ops` holds (one per op per device), without building them."""
        return sum(len(b.ops) * len(b.devices) for b in self.blocks)

    @functools.cached_property
    def ops(self) -> list[OpRecord]:
        """Every op on every device, by device then time (built on first use: a long run holds few
        distinct blocks but millions of ops)."""
        records = [r for b in self.blocks for r in b.expand()]
        records.sort(key=lambda r: (r.device, r.start_s, r.end_s))
        return records
