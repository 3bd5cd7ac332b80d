"""Placement: which memory level is the home of each tensor, and whether the workload fits at all.

Tensors are placed by class — weights first, then the KV cache, then the activations' peak live set —
each class wholly into the innermost level that can hold tensors (`scratchpad` or `dram`, not a
`cache`) and still has room. So a model whose weights fit in an on-chip SRAM is served from it, and one
whose weights do not streams them from DRAM every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.config.hardware import Hardware
from sim.config.units import fmt_bytes
from sim.errors import ConfigError
from sim.graph.ops import TENSOR_KINDS, Block, Op, Tensor, loose
from sim.graph.transformer import OpGraph

KIND_ORDER = ("weight", "gradient", "optimizer_state", "kv_cache", "activation")
LABEL = TENSOR_KINDS


@dataclass(frozen=True)
class Footprint:
    """Bytes a device must hold, by class."""

    weights: float
    kv_cache: float
    activations: float  # peak live set over the schedule
    optimizer: float = 0.0  # optimizer state, master weights included
    gradients: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations + self.optimizer + self.gradients

    def of(self, kind: str) -> float:
        """Bytes of one tensor kind."""
        return {"weight": self.weights, "kv_cache": self.kv_cache, "activation": self.activations,
                "optimizer_state": self.optimizer, "gradient": self.gradients}.get(kind, 0.0)


@dataclass(frozen=True)
class Placement:
    home: dict[str, str]  # tensor kind -> memory level name
    footprint: Footprint
    capacity: dict[str, float]  # usable capacity of each tensor-holding level
    used: dict[str, float]  # bytes placed in each level
    #: weights in host memory prefetched to the device: level -> bytes of its staging buffer
    staged: dict[str, float] = field(default_factory=dict)


def level_capacity(hw: Hardware, name: str) -> float:
    level = hw.levels[name]
    return level.capacity * (hw.device.compute.units if level.scope == "per_unit" else 1)


def peak_live_activations(ops: list[Op], keys: list[list[tuple]] | None = None) -> float:
    """Largest sum of activations alive at once: each lives from its producer to its last reader.
    `keys[i]` are op i's tensors' identities (default: their names, for bound ops)."""
    if keys is None:
        keys = [[a.tensor.name for a in op.reads + op.writes] for op in ops]
    last_use: dict = {}
    size: dict = {}
    for i, (op, ks) in enumerate(zip(ops, keys)):
        for a, k in zip(op.reads + op.writes, ks):
            if a.tensor.kind == "activation":
                last_use[k] = i
                size[k] = a.tensor.bytes
    dying: dict[int, list] = {}
    for k, i in last_use.items():
        dying.setdefault(i, []).append(k)
    live, peak, seen = 0.0, 0.0, set()
    for i, (op, ks) in enumerate(zip(ops, keys)):
        for a, k in zip(op.writes, ks[len(op.reads):]):
            if a.tensor.kind == "activation" and k not in seen:
                seen.add(k)
                live += size[k]
        peak = max(peak, live)
        for k in dying.get(i, ()):
            live -= size[k]
    return peak


def footprint(blocks: list[Block]) -> Footprint:
    """What one device holds: the tensors its blocks touch (one stage's shard under parallelism).
    Hardware-independent, so it is computed once per block list."""
    key = (id(blocks), len(blocks))
    cached = _FOOTPRINTS.get(key)
    if cached is not None and cached[0] is blocks:
        return cached[1]
    fp = _footprint(blocks)
    _FOOTPRINTS.clear()  # keep only the latest: sweeps revisit one graph many times
    _FOOTPRINTS[key] = (blocks, fp)
    return fp


_FOOTPRINTS: dict[tuple[int, int], tuple[list[Block], Footprint]] = {}


def _footprint(blocks: list[Block]) -> Footprint:
    """Weights and KV caches: every distinct one a block touches. Activations: the peak live set of
    each forward pass. Decode passes differ only in context length and no activation shrinks as it
    grows, so among them the last has the largest live set and is the only one walked."""
    held: dict[tuple, tuple[str, float]] = {}
    seen: set[tuple] = set()
    for blk in blocks:
        tensors = _held_tensors(blk.ops)
        if (id(tensors), blk.layer) in seen:
            continue
        seen.add((id(tensors), blk.layer))
        for t in tensors:
            held[t.key(blk.layer, blk.seq)] = (t.kind, t.bytes)
    passes: dict[int, list[Block]] = {}
    for blk in blocks:
        passes.setdefault(blk.seq, []).append(blk)
    last_decode = max((s for s, bs in passes.items() if bs[0].phase == "decode"), default=None)
    peak = 0.0
    for seq, bs in passes.items():
        if bs[0].phase == "decode" and seq != last_decode:
            continue
        ops = [op for blk in bs for op in blk.ops]
        keys = [[a.tensor.key(blk.layer, blk.seq) for a in op.reads + op.writes] for blk in bs for op in blk.ops]
        peak = max(peak, peak_live_activations(ops, keys))
    return Footprint(
        weights=sum(b for kind, b in held.values() if kind == "weight"),
        kv_cache=sum(b for kind, b in held.values() if kind == "kv_cache"),
        activations=peak,
        optimizer=sum(b for kind, b in held.values() if kind == "optimizer_state"),
        gradients=sum(b for kind, b in held.values() if kind == "gradient"),
    )


_HELD: dict[int, tuple[tuple[Op, ...], tuple[Tensor, ...]]] = {}


def _held_tensors(ops: tuple[Op, ...]) -> tuple[Tensor, ...]:
    """The weights and KV caches an ops tuple touches (memoised per tuple: blocks share them)."""
    known = _HELD.get(id(ops))
    if known is not None and known[0] is ops:
        return known[1]
    found = tuple({a.tensor: None for op in ops for a in op.reads + op.writes if a.tensor.kind != "activation"})
    found = _INTERNED.setdefault(found, found)  # equal tuples from other passes become one object
    if len(_HELD) > 4096:
        _HELD.clear()
    _HELD[id(ops)] = (ops, found)
    return found


_INTERNED: dict[tuple[Tensor, ...], tuple[Tensor, ...]] = {}


def place(graph: OpGraph | list[Block] | list[Op], hw: Hardware, hw_file: str = "hardware") -> Placement:
    """Homes for the tensors of a graph, of one stage's blocks, or of a list of hand-made ops."""
    if isinstance(graph, OpGraph):
        graph = graph.blocks
    elif graph and isinstance(graph[0], Op):
        graph = [loose(graph)]
    fp = footprint(graph)
    homes = [n for n, lvl in hw.levels.items() if lvl.holds_tensors()]
    capacity = {n: level_capacity(hw, n) for n in homes}
    used = dict.fromkeys(homes, 0.0)
    need = {kind: fp.of(kind) for kind in KIND_ORDER}
    home: dict[str, str] = {}
    for kind in KIND_ORDER:
        if not need[kind] and kind not in ("weight", "kv_cache", "activation"):
            continue  # training's kinds, in a run that has none
        spot = next((n for n in homes if capacity[n] - used[n] >= need[kind]), None)
        if spot is None:
            have = ", ".join(f"{n} {fmt_bytes(capacity[n] - used[n])} free" for n in homes)
            parts = ", ".join(f"{LABEL[k]} {fmt_bytes(need[k])}" for k in KIND_ORDER if need[k])
            raise ConfigError(
                f"workload does not fit: {LABEL[kind]} need {fmt_bytes(need[kind])} ({parts}) but {have}",
                hw_file,
                "device.memory",
            )
        home[kind] = spot
        used[spot] += need[kind]
    return Placement(home=home, footprint=fp, capacity=capacity, used=used)
