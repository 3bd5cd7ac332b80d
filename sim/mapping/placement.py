"""Placement: which memory level is the home of each tensor, and whether the workload fits at all.

Tensors are placed by class — the activations' peak live set first, then the weights, training's
gradients and optimizer state, and the KV cache — each class wholly into the innermost level that can
hold tensors (`scratchpad` or `dram`, not a `cache`) and still has room. Activations go first because
they cannot be split: the weights and KV caches that do not fit whole are then filled tensor by tensor
into the room a shared level has left, those that save the most traffic per byte first (the bytes the
run reads of a tensor over its size: a layer's weights once per pass, a lookup table only the rows it
gathers): they are served from there and the rest streams from their home. So a model whose weights
fit in an on-chip SRAM is served from it, and one whose weights do not streams from DRAM only what the
SRAM could not take — decode time falls smoothly as the SRAM grows, and on a device without host
memory more room never sends the activations out (weights placed first, a weights class that came to
fit pushed the activations to DRAM and the first token came 3.5x later).

Weights homed in host memory are filled into the device's room the same way (with a prefetch, leaving
its staging buffer, two blocks' weights, in the activations' level): only the rest streams over the
host link. A KV cache or activations that must go to host memory go whole, and a per-unit scratchpad
holds a kind only whole. Where something goes to host memory, two more orders are tried — the KV cache
ahead of the weights, and the weights first — and the one that moves the fewest bytes over the host
link in the run is kept (Llama-2-7B on 13 GiB of HBM: its weights would fit whole and push the KV cache
out, which every step reads over the link; with the KV cache ahead, 0.49 GiB of weights stream instead).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sim.config.hardware import HOST_LEVEL, Hardware
from sim.config.units import fmt_bytes
from sim.errors import ConfigError
from sim.graph.ops import TENSOR_KINDS, Block, Op, Tensor, loose
from sim.graph.transformer import OpGraph
from sim.mapping.tiling import reuse_factors

KIND_ORDER = ("activation", "weight", "gradient", "optimizer_state", "kv_cache")
#: the orders also tried where `KIND_ORDER` sends something to host memory: the KV cache ahead of the
#: weights (which can then be filled in from host memory), and the weights first
WEIGHTS_FIRST = ("weight", "gradient", "optimizer_state", "kv_cache", "activation")
HOST_ORDERS = (("activation", "kv_cache", "weight", "gradient", "optimizer_state"), WEIGHTS_FIRST)
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
    #: tensors served from a faster level than their kind's home (its room left after every kind was
    #: placed whole): absolute tensor key -> level
    split: dict[tuple, str] = field(default_factory=dict)
    #: kind -> {level: bytes of that kind placed there ahead of its home}
    partial: dict[str, dict[str, float]] = field(default_factory=dict)

    def held(self) -> dict[str, dict[str, float]]:
        """Level -> {kind: bytes} of what the placement puts there (a split kind in several levels)."""
        out: dict[str, dict[str, float]] = {}
        for kind, level in self.home.items():
            moved = self.partial.get(kind, {})
            rest = self.footprint.of(kind) - sum(moved.values())
            if rest > 0:
                out.setdefault(level, {})[kind] = rest
            for inner, nbytes in moved.items():
                out.setdefault(inner, {})[kind] = nbytes
        return out


def level_capacity(hw: Hardware, name: str) -> float:
    """The room a level has for the graph's tensors: less, in the device's DRAM, what the runtime holds."""
    level = hw.levels[name]
    room = level.capacity * (hw.device.compute.units if level.scope == "per_unit" else 1)
    return room - (hw.device.memory_reserved if name == reserved_level(hw) else 0.0)


def reserved_level(hw: Hardware) -> str | None:
    """The level the runtime's reserved memory comes out of: the device's first DRAM."""
    return next((n for n, lvl in hw.device.memory.items() if lvl.kind == "dram"), None)


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


def place(graph: OpGraph | list[Block] | list[Op], hw: Hardware, hw_file: str = "hardware",
          prefetch: bool = False, gather: bool = False) -> Placement:
    """Homes for the tensors of a graph, of one stage's blocks, or of a list of hand-made ops. With
    `prefetch` (`scenario.offload_prefetch`), weights filled in from host memory leave room in the
    activations' level for the staging buffer of two blocks' weights a prefetch copies into; with
    `gather` (ZeRO-3), the innermost device level keeps room for two blocks' gathered weights."""
    if isinstance(graph, OpGraph):
        graph = graph.blocks
    elif graph and isinstance(graph[0], Op):
        graph = [loose(graph)]
    fp = footprint(graph)
    homes = [n for n, lvl in hw.levels.items() if lvl.holds_tensors()]
    capacity = {n: level_capacity(hw, n) for n in homes}
    # ZeRO-3's buffer of gathered weights is added afterwards (`prefetch.gather_buffer`) in the innermost
    # device level: its room is kept there from the start, so that more memory never refuses a run
    room = dict(capacity)
    if gather and homes[0] != HOST_LEVEL:
        room[homes[0]] = max(0.0, room[homes[0]] - staging_bytes(graph))

    walked: dict = {}  # what the orders compared share of the graph's traffic, each walked once

    def traffic_of(kind: str) -> tuple[dict, dict]:
        if kind not in walked:
            walked[kind] = _traffic_of(graph, kind)
        return walked[kind]

    def placed(order: tuple[str, ...]) -> tuple[dict, dict, dict, dict, float]:
        """(homes, used, split, partial, bytes the run moves over the host link)."""
        home, used = _by_class(order, fp, homes, room, hw_file)
        split, partial, moved = _fill_room(graph, hw, home, homes, room, used, prefetch, traffic_of)
        hosted = [k for k, lvl in home.items() if lvl == HOST_LEVEL]
        if hosted and "classes" not in walked:
            walked["classes"] = _class_traffic(graph)
        traffic = walked.get("classes", {})
        return home, used, split, partial, sum(traffic.get(k, 0.0) - moved.get(k, 0.0) for k in hosted)

    error = None
    try:
        chosen = placed(KIND_ORDER)
    except ConfigError as e:
        chosen, error = None, e
    if chosen is None or HOST_LEVEL in chosen[0].values():
        for order in HOST_ORDERS:
            try:
                other = placed(order)
            except ConfigError:
                continue
            if chosen is None or other[4] < chosen[4]:
                chosen = other  # less traffic over the host link, once the weights' fill took what it could
    if chosen is None:
        raise error
    home, used, split, partial, _ = chosen
    return Placement(home=home, footprint=fp, capacity=capacity, used=used, split=split, partial=partial)


def _by_class(order: tuple[str, ...], fp: Footprint, homes: list[str], capacity: dict[str, float],
              hw_file: str) -> tuple[dict[str, str], dict[str, float]]:
    """Each class whole into the innermost level with room, in `order`: (homes, bytes used per level)."""
    used = dict.fromkeys(homes, 0.0)
    need = {kind: fp.of(kind) for kind in order}
    home: dict[str, str] = {}
    for kind in order:
        if not need[kind] and kind not in ("weight", "kv_cache", "activation"):
            continue  # training's kinds, in a run that has none
        spot = next((n for n in homes if capacity[n] - used[n] >= need[kind]), None)
        if spot is None:
            have = ", ".join(f"{n} {fmt_bytes(capacity[n] - used[n])} free" for n in homes)
            parts = ", ".join(f"{LABEL[k]} {fmt_bytes(need[k])}" for k in WEIGHTS_FIRST if need[k])
            raise ConfigError(
                f"workload does not fit: {LABEL[kind]} need {fmt_bytes(need[kind])} ({parts}) but {have}",
                hw_file,
                "device.memory",
            )
        home[kind] = spot
        used[spot] += need[kind]
    return home, used


#: the kinds placed tensor by tensor into the room faster levels have left
SPLIT_KINDS = ("weight", "kv_cache")


def _fill_room(blocks: list[Block], hw: Hardware, home: dict[str, str], homes: list[str],
               capacity: dict[str, float], used: dict[str, float], prefetch: bool = False,
               traffic_of: Callable[[str], tuple[dict, dict]] | None = None) -> tuple[dict, dict, dict[str, float]]:
    """Move weights and KV caches homed further out into the room shared levels inside their home have
    left, the most traffic per byte first (updates `used`): (split, partial, per kind the bytes the run
    reads of the tensors moved)."""
    split: dict[tuple, str] = {}
    partial: dict[str, dict[str, float]] = {}
    moved: dict[str, float] = {}
    reserve: dict[str, float] = {}  # per level, fixed before any fill: the matmuls' tiles keep their room
    for kind in SPLIT_KINDS:
        outer = home.get(kind)
        if outer is None or (outer == HOST_LEVEL and kind != "weight"):
            continue
        inner = [n for n in homes[:homes.index(outer)]
                 if hw.levels[n].scope == "shared" and capacity[n] - used[n] > 0]
        if not inner:
            continue
        # the matmuls' tiles keep the room they need: a level filled to the brim would make them re-read;
        # weights filled from host memory for a prefetch leave its staging buffer room in the activations'
        staging = staging_bytes(blocks) if outer == HOST_LEVEL and prefetch else 0.0
        for n in inner:
            if n not in reserve:
                own = staging if n == home["activation"] else 0.0
                reserve[n] = _tile_room(blocks, capacity[n] - used[n]) + own
        sizes, reads = traffic_of(kind) if traffic_of else _traffic_of(blocks, kind)
        order = sorted(sizes, key=lambda k: (-reads.get(k, 0.0) / sizes[k] if sizes[k] else 0.0))
        for key in order:
            nbytes = sizes[key]
            spot = next((n for n in inner if capacity[n] - used[n] - reserve[n] >= nbytes), None)
            if spot is None or not nbytes:
                continue
            split[key] = spot
            used[spot] += nbytes
            used[outer] -= nbytes
            partial.setdefault(kind, {})[spot] = partial.get(kind, {}).get(spot, 0.0) + nbytes
            moved[kind] = moved.get(kind, 0.0) + reads.get(key, 0.0)
    return split, partial, moved


def _class_traffic(blocks: list[Block]) -> dict[str, float]:
    """Bytes the run reads and writes of each tensor class."""
    per_ops: dict[int, tuple] = {}
    out: dict[str, float] = {}
    for blk in blocks:
        known = per_ops.get(id(blk.ops))
        if known is None or known[0] is not blk.ops:
            sums: dict[str, float] = {}
            for op in blk.ops:
                for a in op.reads + op.writes:
                    sums[a.tensor.kind] = sums.get(a.tensor.kind, 0.0) + a.bytes
            known = per_ops[id(blk.ops)] = (blk.ops, sums)
        for kind, b in known[1].items():
            out[kind] = out.get(kind, 0.0) + b
    return out


def block_weights(ops: tuple[Op, ...]) -> dict:
    """The weights a block reads, with the most bytes any of its ops reads of each (an embedding lookup
    reads a few rows of its table: only those)."""
    out: dict = {}
    for op in ops:
        for a in op.reads:
            if a.tensor.kind == "weight":
                out[a.tensor] = max(out.get(a.tensor, 0.0), a.bytes)
    return out


def staging_bytes(blocks: list[Block]) -> float:
    """A buffer for two blocks' weights: the one in use and the one being copied in (a prefetch from host
    memory, ZeRO-3's gathered weights)."""
    return 2 * max((sum(block_weights(b.ops).values()) for b in blocks), default=0.0)


def _tile_room(blocks: list[Block], free: float) -> float:
    """The least room in a level that keeps every matmul's traffic through it (its operands' re-reads
    under the best tiling, `reuse_factors`) what it is with `free` bytes: what a fill must leave."""
    shapes = set()
    seen: set[int] = set()
    for blk in blocks:
        if id(blk.ops) in seen:
            continue
        seen.add(id(blk.ops))
        for op in blk.ops:
            if len(op.shape) == 4 and len(op.reads) >= 2 and op.collective is None:
                _, m, n, k = op.shape
                a, b = (round(x, 6) for x in op.element_bytes)
                shapes.add((m, n, k, a, b))

    def traffic(shape: tuple, room: float) -> float:
        m, n, k, a, b = shape
        fa, fb = reuse_factors(m, n, k, a, b, room)
        return m * k * a * fa + k * n * b * fb

    target = {sh: traffic(sh, free) for sh in shapes}
    lo, hi = 0.0, free
    if all(traffic(sh, lo) <= target[sh] for sh in shapes):
        return 0.0
    for _ in range(40):  # traffic never rises with room: bisect for where it reaches its value at `free`
        mid = (lo + hi) / 2
        if all(traffic(sh, mid) <= target[sh] for sh in shapes):
            hi = mid
        else:
            lo = mid
    return hi


def _traffic_of(blocks: list[Block], kind: str) -> tuple[dict[tuple, float], dict[tuple, float]]:
    """Each tensor of `kind` the blocks touch (absolute key, in first-use order): its size, and the bytes
    the run reads of it."""
    sizes: dict[tuple, float] = {}
    reads: dict[tuple, float] = {}
    per_ops: dict[int, tuple] = {}  # id(ops) -> (ops, [(tensor, bytes read)], [tensor])
    for blk in blocks:
        known = per_ops.get(id(blk.ops))
        if known is None or known[0] is not blk.ops:
            read = [(a.tensor, a.bytes) for op in blk.ops for a in op.reads if a.tensor.kind == kind]
            touched = {a.tensor: None for op in blk.ops for a in op.reads + op.writes if a.tensor.kind == kind}
            known = per_ops[id(blk.ops)] = (blk.ops, read, list(touched))
        for t in known[2]:
            sizes.setdefault(t.key(blk.layer, blk.seq), t.bytes)
        for t, nbytes in known[1]:
            k = t.key(blk.layer, blk.seq)
            reads[k] = reads.get(k, 0.0) + nbytes
    return sizes, reads
