"""Placement: which memory level is the home of each tensor, and whether the workload fits at all.

Tensors are placed by class — weights first, then the KV cache, then the activations' peak live set —
each class wholly into the innermost level that can hold tensors (`scratchpad` or `dram`, not a
`cache`) and still has room. So a model whose weights fit in an on-chip SRAM is served from it, and one
whose weights do not streams them from DRAM every step.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.config.hardware import Hardware
from sim.config.units import fmt_bytes
from sim.errors import ConfigError
from sim.graph.ops import Op
from sim.graph.transformer import OpGraph

KIND_ORDER = ("weight", "kv_cache", "activation")
LABEL = {"weight": "weights", "kv_cache": "KV cache", "activation": "activations"}


@dataclass(frozen=True)
class Footprint:
    """Bytes a device must hold, by class."""

    weights: float
    kv_cache: float
    activations: float  # peak live set over the schedule
    optimizer: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations + self.optimizer


@dataclass(frozen=True)
class Placement:
    home: dict[str, str]  # tensor kind -> memory level name
    footprint: Footprint
    capacity: dict[str, float]  # usable capacity of each tensor-holding level
    used: dict[str, float]  # bytes placed in each level


def level_capacity(hw: Hardware, name: str) -> float:
    level = hw.levels[name]
    return level.capacity * (hw.device.compute.units if level.scope == "per_unit" else 1)


def peak_live_activations(ops: list[Op]) -> float:
    """Largest sum of activations alive at once: each lives from its producer to its last reader."""
    last_use: dict[str, int] = {}
    size: dict[str, float] = {}
    for i, op in enumerate(ops):
        for a in op.reads + op.writes:
            if a.tensor.kind == "activation":
                last_use[a.tensor.name] = i
                size[a.tensor.name] = a.tensor.bytes
    dying: dict[int, list[str]] = {}
    for name, i in last_use.items():
        dying.setdefault(i, []).append(name)
    live, peak, seen = 0.0, 0.0, set()
    for i, op in enumerate(ops):
        for a in op.writes:
            if a.tensor.kind == "activation" and a.tensor.name not in seen:
                seen.add(a.tensor.name)
                live += size[a.tensor.name]
        peak = max(peak, live)
        for name in dying.get(i, ()):
            live -= size[name]
    return peak


def _ops(graph: OpGraph | list[Op]) -> list[Op]:
    return graph.ops if isinstance(graph, OpGraph) else graph


def footprint(graph: OpGraph | list[Op]) -> Footprint:
    """What one device holds: the tensors its ops touch (one stage's shard under parallelism).
    Hardware-independent, so it is computed once per op list."""
    ops = _ops(graph)
    key = (id(ops), len(ops))
    cached = _FOOTPRINTS.get(key)
    if cached is not None and cached[0] is ops:
        return cached[1]
    fp = _footprint(ops)
    _FOOTPRINTS.clear()  # keep only the latest: sweeps revisit one graph many times
    _FOOTPRINTS[key] = (ops, fp)
    return fp


_FOOTPRINTS: dict[tuple[int, int], tuple[list[Op], Footprint]] = {}


def _footprint(ops: list[Op]) -> Footprint:
    tensors = {a.tensor.name: a.tensor for op in ops for a in op.reads + op.writes}.values()
    return Footprint(
        weights=sum(t.bytes for t in tensors if t.kind == "weight"),
        kv_cache=sum(t.bytes for t in tensors if t.kind == "kv_cache"),
        activations=peak_live_activations(ops),
    )


def place(graph: OpGraph | list[Op], hw: Hardware, hw_file: str = "hardware") -> Placement:
    fp = footprint(graph)
    homes = [n for n, lvl in hw.levels.items() if lvl.holds_tensors()]
    capacity = {n: level_capacity(hw, n) for n in homes}
    used = dict.fromkeys(homes, 0.0)
    need = {"weight": fp.weights, "kv_cache": fp.kv_cache, "activation": fp.activations}
    home: dict[str, str] = {}
    for kind in KIND_ORDER:
        spot = next((n for n in homes if capacity[n] - used[n] >= need[kind]), None)
        if spot is None:
            have = ", ".join(f"{n} {fmt_bytes(capacity[n] - used[n])} free" for n in homes)
            raise ConfigError(
                f"workload does not fit: {LABEL[kind]} need {fmt_bytes(need[kind])} (weights "
                f"{fmt_bytes(fp.weights)}, KV cache {fmt_bytes(fp.kv_cache)}, activations "
                f"{fmt_bytes(fp.activations)}) but {have}",
                hw_file,
                "device.memory",
            )
        home[kind] = spot
        used[spot] += need[kind]
    return Placement(home=home, footprint=fp, capacity=capacity, used=used)
