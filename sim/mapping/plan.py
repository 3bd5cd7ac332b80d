"""Per-op execution plans: which compute unit, how long at peak, which bytes from/to which level, and
how the op is split into chunks for double buffering.

Everything here is arithmetic on config and graph; the engine only schedules what the plan says.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.config.hardware import Hardware
from sim.errors import ConfigError
from sim.graph.ops import Op
from sim.graph.transformer import OpGraph
from sim.mapping.placement import Placement

#: Most chunks an op is split into. Overlap inside a chunk is at tile granularity (see engine), so
#: chunking does not change uncontended times; it sets how finely the op's traffic interleaves with
#: other traffic on shared resources, at a bounded cost in events.
MAX_CHUNKS = 4
#: An op whose compute or traffic is below this fraction of the other is not split.
SPLIT_THRESHOLD = 0.01


@dataclass(frozen=True)
class OpPlan:
    op: Op
    device: int
    unit: str  # compute unit: "matrix" or "vector"
    compute_s: float  # uncontended compute time at the unit's peak
    loads: tuple[tuple[str, float], ...]  # (memory level, bytes) read
    stores: tuple[tuple[str, float], ...]  # (memory level, bytes) written
    chunks: tuple[float, ...]  # fractions of the op, summing to 1
    overhead_s: float


def matrix_peak(hw: Hardware, dtype: str, hw_file: str) -> float:
    compute = hw.device.compute
    run_as = compute.emulate.get(dtype, dtype)
    if run_as not in compute.peak:
        have = ", ".join(compute.peak)
        raise ConfigError(
            f"the workload computes in {dtype} but this hardware lists no {run_as} peak (has: {have}); "
            f"add it or map it with device.compute.emulate",
            hw_file,
            f"device.compute.peak.{run_as}",
        )
    return compute.peak[run_as]


def chunk_schedule(compute_s: float, memory_s: float, latency_s: float) -> tuple[float, ...]:
    """Equal chunks, each long enough (>= 2 latencies) that double buffering hides the latency."""
    longer, shorter = max(compute_s, memory_s), min(compute_s, memory_s)
    if longer == 0 or shorter / longer < SPLIT_THRESHOLD:
        return (1.0,)
    n = MAX_CHUNKS if latency_s == 0 else int(min(MAX_CHUNKS, max(1, longer // (2 * latency_s))))
    return (1.0 / n,) * n


def _by_level(accesses, placement: Placement) -> tuple[tuple[str, float], ...]:
    acc: dict[str, float] = {}
    for a in accesses:
        level = placement.home[a.tensor.kind]
        acc[level] = acc.get(level, 0.0) + a.bytes
    return tuple((lvl, b) for lvl, b in acc.items() if b > 0)


def plan_op(op: Op, hw: Hardware, placement: Placement, hw_file: str = "hardware") -> OpPlan:
    dev = hw.device
    peak = matrix_peak(hw, op.dtype, hw_file) if op.engine == "matrix" else dev.compute.vector
    compute_s = op.flops / peak
    loads = _by_level(op.reads, placement)
    stores = _by_level(op.writes, placement)
    per_level: dict[str, float] = {}
    for lvl, b in loads + stores:
        per_level[lvl] = per_level.get(lvl, 0.0) + b
    memory_s = max((b / dev.memory[lvl].bandwidth for lvl, b in per_level.items()), default=0.0)
    latency_s = max((dev.memory[lvl].latency for lvl in per_level), default=0.0)
    chunks = chunk_schedule(compute_s, memory_s, latency_s)
    return OpPlan(op, 0, op.engine, compute_s, loads, stores, chunks, dev.dispatch_overhead)


def plan(graph: OpGraph, hw: Hardware, placement: Placement, hw_file: str = "hardware") -> list[OpPlan]:
    return [plan_op(op, hw, placement, hw_file) for op in graph.ops]


def roofline_s(p: OpPlan, hw: Hardware) -> float:
    """The no-contention bound the engine must reproduce: max(compute, traffic per level) + memory
    latency + dispatch overhead (an op dispatched alone, so nothing hides the overhead)."""
    per_level: dict[str, float] = {}
    for lvl, b in p.loads + p.stores:
        per_level[lvl] = per_level.get(lvl, 0.0) + b
    mem = max((b / hw.device.memory[lvl].bandwidth for lvl, b in per_level.items()), default=0.0)
    latency = max((hw.device.memory[lvl].latency for lvl in per_level), default=0.0)
    return max(p.compute_s, mem) + latency + p.overhead_s
