"""Per-op execution plans: which compute unit, how long at peak, which bytes each memory level serves,
and how the op is split into chunks for double buffering.

Traffic follows the hierarchy. An operand comes from its source (the innermost shared cache holding
it, else its home) and passes every level inside it on the way to the compute units; level j serves
what the level inside it asks for, which for a matmul operand is its size times its re-read factor
under tiles that fit level j-1 (see tiling). The innermost level serves each operand once. Results are
written through the inner levels into the outermost cache that takes them, or into their home.

Everything here is arithmetic on config and graph plus the residency walk; the engine only schedules.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from math import ceil

from sim.config.hardware import Hardware, MemoryLevel, flat_bandwidths
from sim.errors import ConfigError
from sim.graph.ops import Block, Op
from sim.graph.transformer import OpGraph
from sim.mapping.placement import Placement, level_capacity
from sim.mapping.residency import CacheLevel, Residency, shifted_equal
from sim.mapping.tiling import block_tiled, reuse_factors

#: Most chunks an op is split into. Overlap inside a chunk is at tile granularity (see engine), so
#: chunking does not change uncontended times; it sets how finely the op's traffic interleaves with
#: other traffic on shared resources, at a bounded cost in events.
MAX_CHUNKS = 2
#: An op whose compute or traffic is below this fraction of the other is not split.
SPLIT_THRESHOLD = 0.01


@dataclass(frozen=True, slots=True)
class Traffic:
    """What an op moves: (level, bytes) each memory level serves for its reads (incl. write-back
    reads) and takes for its writes, and its (shared cache, hit bytes, looked-up bytes). It depends on
    the memory's structure (levels, capacities, pins, homes), not on its speeds."""

    loads: tuple[tuple[str, float], ...]
    stores: tuple[tuple[str, float], ...]
    hits: tuple[tuple[str, float, float], ...]
    weight_dram: float = 0.0  # bytes of its weight operands a DRAM-kind level served (before re-reads)


NO_TRAFFIC = Traffic((), (), ())
#: How the walk names a tensor's scope (see `Tensor.key`).
SCOPE_CODE = {"global": 0, "layer": 1, "pass": 2}
#: Walks kept across planners: (id(blocks), len, structure) -> (blocks, traffic per block).
_WALKS: dict[tuple, tuple] = {}


@dataclass(frozen=True)
class OpPlan:
    op: Op
    unit: str  # compute unit: "matrix" or "vector"
    compute_s: float  # uncontended compute time on that unit, incl. tile/wave quantisation
    utilization: float  # useful fraction of the unit's peak (tile and wave quantisation)
    loads: tuple[tuple[str, float], ...]  # (memory level, bytes) it serves for reads (incl. write-back reads)
    stores: tuple[tuple[str, float], ...]  # (memory level, bytes) written into it
    hits: tuple[tuple[str, float, float], ...]  # (shared cache, hit bytes, looked-up bytes)
    chunks: tuple[float, ...]  # fractions of the op, summing to 1
    overhead_s: float  # host dispatch
    launch_s: float = 0.0  # device time before it starts: kernel launch, a matmul's fixed cost
    run_bytes: float = 0.0  # contiguous run its weight is read in (see `run_bytes`; 0: long or unknown)
    #: the device stream it is assigned to: `compute`, `comm` (a collective: the engine runs it in line
    #: where the next op needs it at once) or `copy` (a prefetch from host memory)
    stream: str = "compute"


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


def transfer_s(levels: dict[str, MemoryLevel], moves: tuple[tuple[str, float], ...],
               flat: dict[str, float] | None = None, run: float = 0.0) -> dict[str, float]:
    """Per level, the time its transfers take one after another (a level serves one at a time), each at
    the bandwidth its size and the op's contiguous `run` achieve (`flat`: `flat_bandwidths(levels)`,
    precomputed by a caller in a loop)."""
    flat = flat_bandwidths(levels) if flat is None else flat
    out: dict[str, float] = {}
    for lvl, b in moves:
        out[lvl] = out.get(lvl, 0.0) + b / (flat[lvl] or levels[lvl].bandwidth_for(b, run))
    return out


def run_bytes(op: Op) -> float:
    """The contiguous run a matmul reads its weight in: one row of the weight as it lies in memory, N x
    element bytes for a K x N weight, K x element bytes for one stored N x K (`Op.weight_layout`; 0 for
    other ops: their runs are long or unknown)."""
    if op.op_class not in ("gemm", "gemv") or len(op.shape) != 4 or len(op.reads) < 2:
        return 0.0
    return op.weight_row * op.element_bytes[1]


def weight_row_bytes(op: Op) -> float:
    """How far apart a matmul's weight rows lie as stored (N elements of a K x N weight, K of one stored
    N x K), in the weight's own bytes, without its bias or quantization scales; 0 where the K x N operand
    is not a weight (a KV cache's rows are a head apart, whatever the context)."""
    if not op.weight_element_bytes or len(op.shape) != 4:
        return 0.0
    return op.weight_row * op.weight_element_bytes


def chunk_schedule(compute_s: float, memory_s: float, latency_s: float) -> tuple[float, ...]:
    """Equal chunks, each long enough (>= 2 latencies) that double buffering hides the latency."""
    longer, shorter = max(compute_s, memory_s), min(compute_s, memory_s)
    if longer == 0 or shorter / longer < SPLIT_THRESHOLD:
        return (1.0,)
    n = MAX_CHUNKS if latency_s == 0 else int(min(MAX_CHUNKS, max(1, longer // (2 * latency_s))))
    return (1.0 / n,) * n


def matrix_utilization(hw: Hardware, shape: tuple[int, ...]) -> float:
    """Useful fraction of the matrix engine: MMA-tile padding of M, N, K, then whole waves of tiles
    over the compute units (a GEMV with M = 1 fills one row of a 16-row MMA tile)."""
    tile = hw.device.compute.tile
    if tile is None or len(shape) != 4:
        return 1.0
    batch, m, n, k = shape
    tm, tn, tk = tile
    tiles = batch * ceil(m / tm) * ceil(n / tn)
    units = hw.device.compute.units
    waves = ceil(tiles / units)
    padded = waves * units * tm * tn * ceil(k / tk) * tk
    return batch * m * n * k / padded


class Planner:
    """Plans ops in execution order, carrying cache residency from one op to the next.

    Reuse of identical work: a block's plans depend only on its ops and on the cache state it finds,
    seen relative to the block (see `Residency.snapshot`). A block whose ops tuple and relative state
    were planned before gets those plans and the state they left, without walking its ops again
    (exact: `memo=False` walks every op, and a test holds the two equal)."""

    def __init__(self, hw: Hardware, placement: Placement, hw_file: str = "hardware", memo: bool = True):
        self.hw, self.placement, self.hw_file, self.memo = hw, placement, hw_file, memo
        dev = hw.device
        self.levels = hw.levels
        self.order = list(self.levels)
        self.index = {name: i for i, name in enumerate(self.order)}
        caches = [CacheLevel(n, lvl.capacity, frozenset(lvl.pin)) for n, lvl in self.levels.items()
                  if lvl.kind == "cache" and lvl.scope == "shared"]
        self.residency = Residency(caches, self.order)
        # capacity a level offers to one tile: per unit for per-unit levels; a scratchpad's free space
        self.tile_capacity = {}
        for name, lvl in self.levels.items():
            cap = level_capacity(hw, name) - placement.used.get(name, 0.0)
            self.tile_capacity[name] = cap / dev.compute.units if lvl.scope == "per_unit" else cap
        # plain numbers for the per-op loop (it runs once per op of the whole scenario)
        self._latency = {n: lvl.latency for n, lvl in self.levels.items()}
        self._flat_bandwidth = flat_bandwidths(self.levels)
        self._overhead = dev.dispatch_overhead
        self._dispatch_for = dev.dispatch_for
        self._launch_for = dev.launch_for
        self._fixed_for = dev.fixed_for
        # block tiles' operands come from the innermost shared level (a GPU's L2)
        feed = next((lvl for lvl in self.levels.values() if lvl.scope == "shared"), None)
        self._feed_bandwidth = feed.effective_bandwidth if feed is not None and any(
            lvl.scope == "per_unit" for lvl in self.levels.values()) else 0.0
        self._vector_for = dev.vector_for
        self._epilogue_for = dev.epilogue_for
        self._row_element_for = dev.row_element_for
        self._cold_table = bool(dev.compute.matrix_efficiency_cold)
        self._dram_levels = frozenset(n for n, lvl in self.levels.items() if lvl.kind == "dram")
        self._home = dict(placement.home)
        self._split = placement.split  # tensors served from a faster level than their kind's home
        self._compute_of: dict[tuple, tuple] = {}
        self._factors_of: dict[tuple, list] = {}
        self._accesses: dict[int, tuple] = {}  # id(op) -> (op, its access specs)
        self._routes: dict[tuple | None, dict] = {}  # (re-read signature, operand) -> route per source
        # (id(ops), state fingerprint) -> [(ops, state before, traffic, state after, {shift: fixed}), ...]
        self._blocks: dict[tuple, list] = {}
        # a hit's resulting state is written into the caches only when something needs them; meanwhile
        # (walk, layer, seq) says which walk's result it is and where. Not with pinning caches, whose
        # pins a walk result does not carry
        self._chain: tuple | None = None
        self._lazy = not any(c.pin for c in self.residency.caches)
        self._touched: dict[int, tuple] = {}
        self._traffic: dict[tuple, tuple] = {}  # (id(ops), traffic) -> (ops, traffic)
        # what the walk depends on: the levels, what they hold, and the tiles they offer
        self.structure = (
            tuple((n, lvl.kind, lvl.scope, lvl.capacity, tuple(lvl.pin)) for n, lvl in self.levels.items()),
            dev.compute.units, dev.compute.registers, tuple(sorted(placement.home.items())),
            tuple(sorted(placement.used.items())),
        )
        # levels an operand crosses from a source: the source and every level inside it
        self._path = {name: self.order[: i + 1] for i, name in enumerate(self.order)}

    def plan_blocks(self, blocks: list[Block]) -> list[tuple[Block, tuple[OpPlan, ...]]]:
        """Plan blocks in order: their traffic (see `walk_blocks`), then their timing, once per
        distinct traffic tuple (so blocks that share traffic share plans)."""
        timed: dict[int, tuple] = {}
        per_op: dict[tuple, OpPlan] = {}  # (id(op), traffic) -> plan: an op with equal traffic in another block
        out = []
        for b, traffic in zip(blocks, self.walk_blocks(blocks)):
            known = timed.get(id(traffic))
            if known is None:
                plans = []
                for op, t in zip(b.ops, traffic):
                    p = per_op.get((id(op), t))
                    if p is None:
                        p = per_op[(id(op), t)] = self.timed(op, t)
                    plans.append(p)
                known = timed[id(traffic)] = (traffic, tuple(plans))
            out.append((b, known[1]))
        return out

    def walk_blocks(self, blocks: list[Block]) -> list[tuple[Traffic, ...]]:
        """Each block's traffic, walking cache residency in order. The walk depends on the memory's
        structure, not on its speeds, so it is kept for the next planner of the same blocks on the
        same structure (a sweep over bandwidths or FLOP/s walks once per process). An ops tuple's
        first block cannot find a memo entry and its last need not leave one, which spares
        snapshotting blocks that occur once."""
        if any("activation" in c.pin for c in self.residency.caches):
            return self._walk_freeing(blocks)
        if not self.memo or self._split:  # (a split's homes differ by layer: no walk is another's)
            return [tuple(self.walk(op, b.layer, b.seq) for op in b.ops) for b in blocks]
        key = (id(blocks), len(blocks), self.structure)
        known = _WALKS.get(key)
        if known is not None and known[0] is blocks:
            return known[1]
        left = Counter(id(b.ops) for b in blocks)
        seen: set[int] = set()
        out = []
        for b in blocks:
            i = id(b.ops)
            left[i] -= 1
            out.append(self._walk_block(b, lookup=i in seen, store=left[i] > 0))
            seen.add(i)
        self._settle()
        if len(_WALKS) >= 4:
            _WALKS.clear()
        _WALKS[key] = (blocks, out)
        return out

    def _walk_freeing(self, blocks: list[Block]) -> list[tuple[Traffic, ...]]:
        """Every op walked in order, each activation's pins released after its last use (a cache that
        pins activations would otherwise fill with dead ones and push out everything else). Liveness
        spans blocks (a layer's output is the next one's input), so no block's walk is replayed."""
        last: dict[tuple, tuple[int, int]] = {}
        for bi, b in enumerate(blocks):
            for oi, op in enumerate(b.ops):
                for a in op.reads + op.writes:
                    if a.tensor.kind == "activation":
                        last[a.tensor.key(b.layer, b.seq)] = (bi, oi)
        dying: dict[tuple[int, int], list[tuple]] = {}
        for key, at in last.items():
            dying.setdefault(at, []).append(key)
        release = self.residency.release
        out = []
        for bi, b in enumerate(blocks):
            traffic = []
            for oi, op in enumerate(b.ops):
                traffic.append(self.walk(op, b.layer, b.seq))
                for key in dying.get((bi, oi), ()):
                    release(key)
            out.append(tuple(traffic))
        return out

    def _walk_block(self, block: Block, lookup: bool, store: bool) -> tuple[Traffic, ...]:
        ops, layer, seq = block.ops, block.layer, block.seq
        if not (lookup or store):
            return tuple(self.walk(op, layer, seq) for op in ops)
        touched = self._touched.get(id(ops))  # the tensors it touches, relative to it
        if touched is None or touched[0] is not ops:
            keys = {a.tensor.key(0, 0): None for op in ops for a in op.reads + op.writes}
            touched = self._touched[id(ops)] = (ops, tuple(keys))
        touched = touched[1]
        residency = self.residency
        chain = self._chain
        if chain is not None:
            # the state is a recorded walk's result, not yet written back: if this block is the same
            # ops seen one step on, and that walk's result equals its start one step on, it hits again
            walk, at_layer, at_seq = chain
            if lookup and walk[0] is ops:
                shift = (layer - at_layer, seq - at_seq)
                fixed = walk[4].get(shift)
                if fixed is None:
                    fixed = walk[4][shift] = shifted_equal(walk[3], walk[1], *shift)
                if fixed:
                    self._chain = (walk, layer, seq)
                    return walk[2]
            self._settle()
        key = (id(ops), residency.fingerprint(layer, seq, touched))
        if lookup:
            for walk in self._blocks.get(key, ()):
                if walk[0] is ops and residency.equals(walk[1], layer, seq):
                    if self._lazy:
                        self._chain = (walk, layer, seq)
                    else:
                        residency.restore(walk[3], layer, seq, touched)
                    return walk[2]
        if not store:
            return tuple(self.walk(op, layer, seq) for op in ops)
        before = residency.save(layer, seq, touched)
        traffic = tuple(self.walk(op, layer, seq) for op in ops)
        # a different state can still give the same traffic (the same hits): share one tuple then,
        # so the engine sees the blocks as identical
        known = self._traffic.setdefault((id(ops), traffic), (ops, traffic))
        if known[0] is ops:
            traffic = known[1]
        if len(self._blocks) > 50_000:  # bounded; dropping entries only costs walking again
            self._blocks.clear()
            self._touched.clear()
            self._traffic.clear()
        walks = self._blocks.setdefault(key, [])
        walks.append((ops, before, traffic, residency.save(layer, seq, touched), {}))
        del walks[:-4]
        return traffic

    def _settle(self) -> None:
        """Write a deferred walk result into the caches (see `_walk_block`)."""
        if self._chain is not None:
            walk, layer, seq = self._chain
            self._chain = None
            self.residency.restore(walk[3], layer, seq, ())

    def plan(self, op: Op, layer: int = 0, seq: int = 0) -> OpPlan:
        """Plan one op of the block at (`layer`, forward pass `seq`), updating cache residency."""
        return self.timed(op, self.walk(op, layer, seq))

    def walk(self, op: Op, layer: int = 0, seq: int = 0) -> Traffic:
        """The op's traffic per memory level and its cache hits, updating cache residency."""
        if self._chain is not None:
            self._settle()
        if op.collective is not None:  # its transfers are planned per device group (mapping.parallel)
            return NO_TRAFFIC
        known = self._accesses.get(id(op))
        if known is None or known[0] is not op:
            known = self._accesses[id(op)] = (op, self._access_specs(op))
        reads, writes = known[1]
        served: dict[str, float] = {}
        written: dict[str, float] = {}
        hits: dict[str, list[float]] = {}
        read, write, path, split = self.residency.read, self.residency.write, self._path, self._split
        # counted whatever the compute tables: a walk's traffic depends on the memory's structure alone
        weight_dram, drams = 0.0, self._dram_levels
        for name, dl, scope, kind, nbytes, home, routes in reads:
            key = (name, None, None) if scope == 0 else (name, layer + dl, seq if scope == 2 else None)
            if split:
                home = split.get(key, home)
            sources, writebacks, looked = read(key, kind, nbytes, home)
            for source, b in sources:
                for lvl, reuse in routes[source]:
                    served[lvl] = served.get(lvl, 0.0) + (b if reuse is None else b * reuse)
                if source in drams and kind == "weight":
                    weight_dram += b
            if writebacks:
                self._writebacks(writebacks, served, written)
            for cache, hit, n in looked:
                h = hits.get(cache)
                if h is None:
                    hits[cache] = [hit, n]
                else:
                    h[0] += hit
                    h[1] += n
        for name, dl, scope, kind, nbytes, home in writes:
            key = (name, None, None) if scope == 0 else (name, layer + dl, seq if scope == 2 else None)
            if split:
                home = split.get(key, home)
            landing, writebacks = write(key, kind, nbytes, home)
            for lvl in path[landing]:
                written[lvl] = written.get(lvl, 0.0) + nbytes
            if writebacks:
                self._writebacks(writebacks, served, written)
        return Traffic(
            loads=tuple(served.items()) if 0.0 not in served.values() else tuple(
                (lvl, b) for lvl, b in served.items() if b > 0),
            stores=tuple(written.items()) if 0.0 not in written.values() else tuple(
                (lvl, b) for lvl, b in written.items() if b > 0),
            hits=tuple((c, h, n) for c, (h, n) in hits.items()),
            weight_dram=weight_dram,
        )

    def _access_specs(self, op: Op) -> tuple[tuple, tuple]:
        """What the walk needs of an op's accesses, as plain tuples (it runs once per op of the run):
        per read (name, dl, scope code, kind, bytes, home, route per source level), per write the
        same without routes. A route lists the levels an operand crosses from that source with the
        re-read factor each serves it at (None: once); re-read factors depend on the op's arithmetic
        only, so ops of equal shape share them."""
        sig = (op.dtype, op.shape, op.operand_bytes, op.operands)
        factors = self._factors_of.get(sig)
        if factors is None:
            factors = self._factors_of[sig] = self._factors(op)
        reads = []
        for i, access in enumerate(op.reads):
            t = access.tensor
            role = op.operand_of(i) if factors else None
            reuse = None if role is None else factors[role]
            key = None if reuse is None else (sig, i)  # operands read once share one set of routes
            routes = self._routes.get(key)
            if routes is None:
                routes = self._routes[key] = {
                    source: tuple((lvl, None if j == 0 or reuse is None else reuse[levels[j - 1]])
                                  for j, lvl in enumerate(levels))
                    for source, levels in self._path.items()}
            reads.append((t.name, t.dl, SCOPE_CODE[t.scope], t.kind, access.bytes, self._home[t.kind], routes))
        writes = tuple((a.tensor.name, a.tensor.dl, SCOPE_CODE[a.tensor.scope], a.tensor.kind, a.bytes,
                        self._home[a.tensor.kind]) for a in op.writes)
        return tuple(reads), writes

    def timed(self, op: Op, t: Traffic) -> OpPlan:
        """The op's plan: its compute unit and time at this hardware's speeds, and its chunks."""
        if op.collective is not None:
            return OpPlan(op=op, unit="link", compute_s=0.0, utilization=1.0, loads=(), stores=(),
                          hits=(), chunks=(1.0,), overhead_s=self._overhead, stream="comm")
        cold = self._cold_weight(op, t)
        sig = (op.engine, op.kernel, op.row, op.dtype, op.flops, op.epilogue, op.shape, weight_row_bytes(op),
               op.operand_bytes, cold)
        known = self._compute_of.get(sig)
        if known is None:
            known = self._compute_of[sig] = self._compute(op, cold)
        unit, compute_s, util = known
        run = run_bytes(op)
        per_level = transfer_s(self.levels, t.loads + t.stores, self._flat_bandwidth, run)
        memory_s = max(per_level.values(), default=0.0)
        latency_s = max((self._latency[lvl] for lvl in per_level), default=0.0)
        return OpPlan(op=op, unit=unit, compute_s=compute_s, utilization=util, loads=t.loads, stores=t.stores,
                      hits=t.hits, chunks=chunk_schedule(compute_s, memory_s, latency_s),
                      overhead_s=self._dispatch_for(op.kernel),
                      launch_s=self._launch_for(op.kernel) + self._fixed_for(op.kernel, op.engine == "matrix"),
                      run_bytes=run)

    def _cold_weight(self, op: Op, t: Traffic) -> bool:
        """Whether a GEMM's weight came mostly from DRAM (a DRAM-kind level served at least half its
        bytes, re-reads aside), where the hardware has a cold-weight efficiency table. Only weights:
        attention's products over the KV cache and the backward pass's over gradients are not what the
        table measures."""
        if not self._cold_table or len(op.shape) != 4 or not t.weight_dram:
            return False
        weight = sum(a.bytes for a in op.reads if a.tensor.kind == "weight")
        return t.weight_dram >= 0.5 * weight

    def _compute(self, op: Op, cold: bool = False) -> tuple[str, float, float]:
        """Matmul-like ops run on the matrix engine or the vector units, whichever is faster (a GEMV
        wastes most of an MMA tile); everything else runs on the vector units. An epilogue the framework
        does not fuse (`epilogue_for`) follows the product at its own rate."""
        if op.engine != "matrix":  # a row-wise reduction computes for at least one row's serial time
            vector_s = op.flops / self._vector_for(op.kernel)
            return "vector", max(vector_s, op.row * self._row_element_for(op.kernel)), 1.0
        rate = self._epilogue_for(op.kernel) if op.epilogue else None
        if rate is None:
            return self._product(op, op.flops, cold)
        unit, product_s, util = self._product(op, op.flops - op.epilogue, cold)
        return unit, product_s + op.epilogue / rate, util

    def _product(self, op: Op, flops: float, cold: bool = False) -> tuple[str, float, float]:
        """Unit, time and utilization of a matmul-like op's `flops` (its product, and a fused epilogue).
        The library's efficiency for the shape holds on whichever units run it: on a CPU the matrix and
        vector units are the same SIMD FMAs, and a GEMM does not reach their peak on either."""
        compute = self.hw.device.compute
        peak = matrix_peak(self.hw, op.dtype, self.hw_file)
        gemm = len(op.shape) == 4
        efficiency = compute.efficiency(op.shape[1], compute.emulate.get(op.dtype, op.dtype), op.shape[3], cold,
                                        weight_row_bytes(op)) if gemm else 1.0
        vector_s = flops / (self._vector_for(op.kernel) * efficiency)
        if compute.block_tiles and gemm and len(op.reads) >= 2:
            k_step = compute.tile[2] if compute.tile else 1
            matrix_s, _, _ = block_tiled(op.shape, flops, compute.block_tiles, k_step, compute.units,
                                         peak * efficiency, *op.element_bytes, self._feed_bandwidth)
            util = flops / (peak * matrix_s)
        else:
            util = matrix_utilization(self.hw, op.shape) * efficiency
            matrix_s = flops / (peak * util)
        return ("matrix", matrix_s, util) if matrix_s <= vector_s else ("vector", vector_s, efficiency)

    def _factors(self, op: Op) -> list[dict[str, int]]:
        """Per matmul operand (M x K, K x N: the reads `Op.operands` gives each), its re-read factor under tiles
        that fit each level."""
        if len(op.shape) != 4 or len(op.reads) < 2:
            return []
        _, m, n, k = op.shape
        a, b = op.element_bytes
        out: list[dict[str, int]] = [{}, {}]
        registers = self.hw.device.compute.registers
        for name, cap in self.tile_capacity.items():
            per_unit = self.levels[name].scope == "per_unit"
            fa, fb = reuse_factors(m, n, k, round(a, 6), round(b, 6), cap, registers if per_unit else None)
            out[0][name], out[1][name] = fa, fb
        return out

    @staticmethod
    def _writebacks(writebacks, served, written) -> None:
        for cache, home, nbytes in writebacks:
            served[cache] = served.get(cache, 0.0) + nbytes
            written[home] = written.get(home, 0.0) + nbytes


def plan(graph: OpGraph, hw: Hardware, placement: Placement, hw_file: str = "hardware") -> list[OpPlan]:
    """Every op of the graph, in order (a flat list; the pipeline plans per block)."""
    planner = Planner(hw, placement, hw_file)
    return [p for _, plans in planner.plan_blocks(graph.blocks) for p in plans]


def plan_op(op: Op, hw: Hardware, placement: Placement, hw_file: str = "hardware") -> OpPlan:
    """Plan a single op on an empty machine (no residency from earlier ops)."""
    return Planner(hw, placement, hw_file).plan(op)


def roofline_s(p: OpPlan, hw: Hardware) -> float:
    """The no-contention bound the engine must reproduce: max(compute, traffic per level) + memory
    latency + dispatch, launch and matmul overhead (an op dispatched alone, so nothing hides them)."""
    levels = hw.levels
    mem = max(transfer_s(levels, p.loads + p.stores, run=p.run_bytes).values(), default=0.0)
    latency = max((levels[lvl].latency for lvl, _ in p.loads + p.stores), default=0.0)
    return max(p.compute_s, mem) + latency + p.overhead_s + p.launch_s
