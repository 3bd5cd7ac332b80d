"""Hardware schema: devices with compute units and a memory hierarchy, links between them.

Peak rates are per device (all compute units together). Memory levels are listed innermost first;
`kind` says whether a level can be the home of a tensor (`scratchpad`, `dram`) or only caches
data on its way to the compute units (`cache`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from sim.config.types import Bandwidth, Bytes, Count, Dtype, FlopRate, Frequency, Latency, Size, Spec
from sim.config.units import Dim, parse_quantity
from sim.errors import KeyedError

HOST_LEVEL = "host"

#: the software family a device runs (which section of a runtime file applies to it)
Platform = Literal["cuda", "cpu", "tpu", "accelerator"]
#: What a graph op computes (`Op.kernel`), as a framework calls it: the key of per-kernel costs.
Kernel = Literal["matmul", "linear", "attention", "layernorm", "rmsnorm", "softmax", "gelu", "silu", "relu", "add",
                 "rope", "gather", "tanh"]

#: A kernel without a cost of its own takes this one's before the device-wide figure: a matmul with a bias
#: (`linear`) is a matmul where the framework fuses the bias (a GPU library's epilogue), and two calls
#: where it does not (eager numpy: `x @ w`, then `+= b`).
KERNEL_FALLBACK: dict[str, str] = {"linear": "matmul"}
#: kernels of matmul-like ops (the matrix units'): a fusion's partner, never the op fused into it
MATRIX_KERNELS = ("matmul", "linear", "attention")


def check_fuse(fuse: dict | None) -> None:
    """Refuse a matmul-like kernel in a `fuse` map (it is what others fuse into)."""
    for kernel in fuse or {}:
        if kernel in MATRIX_KERNELS:
            raise KeyedError(f"fuse.{kernel}", "only elementwise and row-wise kernels run inside a neighbour "
                             f"(not {', '.join(MATRIX_KERNELS)})")


def log_interpolate(table: dict[float, float], x: float, default: float) -> float:
    """A table's value at `x`, interpolated linearly in log2(x) between its keys, clamped at the ends;
    `default` for an empty table."""
    items = sorted(table.items())
    if not items:
        return default
    if x <= items[0][0]:
        return items[0][1]
    for (x0, y0), (x1, y1) in zip(items, items[1:]):
        if x <= x1:
            t = (math.log2(x) - math.log2(x0)) / (math.log2(x1) - math.log2(x0))
            return y0 + t * (y1 - y0)
    return items[-1][1]


def flat_bandwidths(levels: dict[str, MemoryLevel]) -> dict[str, float]:
    """Per level, its bandwidth where it does not depend on a transfer's size; 0 where it does (look it
    up with `bandwidth_for`), or on how long its contiguous runs are. Hot loops use it to skip the lookup."""
    return {n: 0.0 if lvl.efficiency_by_size or lvl.efficiency_by_run else lvl.effective_bandwidth
            for n, lvl in levels.items()}


def _scaled(figures: dict, keys: tuple[str, ...] | None, dim: Dim, share: float) -> dict:
    """`figures` (as written: numbers, or strings with their unit) with those under `keys` (None: all)
    times `share`; keys it lacks stay absent."""
    return {k: parse_quantity(v, dim) * share if (keys is None or k in keys) and v is not None else v
            for k, v in figures.items()}


class ComputeUnit(Spec):
    units: Count = Field(description="number of cores / SMs / MXUs sharing the peak")
    clock: Frequency
    peak: dict[Dtype, FlopRate] = Field(min_length=1, description="matrix-engine peak per dtype")
    vector: FlopRate = Field(description="peak of the vector units that run non-matmul ops")

    def efficiency(self, rows: int, dtype: str | None = None, depth: int = 0, cold: bool = False,
                   row_bytes: float = 0) -> float:
        """The matrix efficiency table of `dtype` (or the general one; with `cold`, the cold-weight one
        where given) at `rows`, times the depth table at the reduction depth K (`depth`; 0: unknown,
        none) and, where the K x N operand's rows are `row_bytes` apart and that is a multiple of
        `aliasing_stride`, the aliased table; each interpolated linearly in log2 and clamped at the ends."""
        general = self.matrix_efficiency_cold if cold and self.matrix_efficiency_cold else self.matrix_efficiency
        table = self.matrix_efficiency_by_dtype.get(dtype, general) if dtype else general
        by_depth = log_interpolate(self.matrix_efficiency_by_depth, depth, 1.0) if depth else 1.0
        aliased = self.aliasing_stride and row_bytes and row_bytes % self.aliasing_stride == 0
        by_alias = log_interpolate(self.matrix_efficiency_aliased, rows, 1.0) if aliased else 1.0
        return log_interpolate(table, rows, 1.0) * by_depth * by_alias

    emulate: dict[Dtype, Dtype] = Field(
        default_factory=dict, description="dtypes without native support and the dtype they run as"
    )
    matrix_efficiency: dict[Count, float] = Field(
        default_factory=dict,
        description="achieved fraction of the matrix peak by rows M of a GEMM (interpolated in log M; "
        "e.g. a BLAS's packing and threading costs at small M). Absent: 1",
    )
    matrix_efficiency_by_depth: dict[Count, float] = Field(
        default_factory=dict,
        description="achieved fraction (multiplying `matrix_efficiency`) by a GEMM's reduction depth K "
        "(interpolated in log K, clamped at the ends): a short K spends a BLAS's packing and each tile's "
        "loads on few multiply-adds (attention's per-head GEMMs, K = head_dim). Absent: 1",
    )
    matrix_efficiency_cold: dict[Count, float] = Field(
        default_factory=dict,
        description="the matrix_efficiency table (by rows M) of a GEMM whose weight streams from DRAM, in "
        "place of the others: a CPU BLAS packs such a weight at well under DRAM's bandwidth (PyTorch on "
        "this project's VM: 64 rows over a 1280 x 1280 weight, 164 GFLOP/s cached, 123 from DRAM; the "
        "stream itself is in the rate). A dtype's own table still wins. Absent: the same tables as a "
        "cached weight",
    )
    aliasing_stride: Bytes | None = Field(
        default=None, description="the span of a set-associative cache's sets (its size over its ways: "
        "4 KiB for a 32 KiB 8-way L1): rows of a GEMM's K x N operand a multiple of this apart map onto the "
        "same sets and evict each other, `matrix_efficiency_aliased` then applies")
    matrix_efficiency_aliased: dict[Count, float] = Field(
        default_factory=dict,
        description="achieved fraction (multiplying the others) by rows M of a GEMM whose K x N operand is a "
        "weight whose rows are a multiple of `aliasing_stride` apart as stored (1024, 2048, 3072 fp32 columns of "
        "a K x N weight): a BLAS's kernel reading them conflicts in the cache (this project's VM, numpy: 16 "
        "rows over 1280 x 2048 at 0.65-0.80 of 1280 x 1792 and 2304). Absent: 1",
    )
    matrix_efficiency_by_dtype: dict[Dtype, dict[Count, float]] = Field(
        default_factory=dict,
        description="a matrix_efficiency table for one dtype, in place of the general one (fp8 kernels sustain "
        "a smaller share of their peak than bf16 ones)",
    )
    registers: Bytes | None = Field(
        default=None, description="register file per unit; holds matmul accumulators during tiling"
    )
    tile: tuple[Count, Count, Count] | None = Field(
        default=None, description="M x N x K granularity of the matrix engine (MMA / systolic array shape)"
    )
    block_tiles: list[tuple[Count, Count]] = Field(
        default_factory=list,
        description="M x N output tiles a GEMM library's kernels compute on one unit (a GPU's thread-block "
        "tiles); per shape the library picks the one that finishes first. Empty: waves of `tile`",
    )
    matmul_overhead: Latency = Field(
        default=0.0, description="fixed time of every matmul-like op (GEMM, GEMV, attention) beyond an "
        "elementwise op's: a GEMM kernel's pipeline fill and epilogue, serial with its data and compute",
    )

    @model_validator(mode="after")
    def _fractions(self) -> ComputeUnit:
        tables = {key: getattr(self, key) for key in ("matrix_efficiency", "matrix_efficiency_by_depth",
                                                       "matrix_efficiency_cold", "matrix_efficiency_aliased")}
        tables |= {f"matrix_efficiency_by_dtype.{d}": t for d, t in self.matrix_efficiency_by_dtype.items()}
        for key, table in tables.items():
            for at, value in table.items():
                if not 0 < value <= 1:
                    raise KeyedError(key, f"efficiencies are fractions in (0, 1], got {value} at {at}")
        if self.matrix_efficiency_aliased and not self.aliasing_stride:
            raise KeyedError("matrix_efficiency_aliased", "needs `aliasing_stride` (the stride it applies at)")
        if self.aliasing_stride is not None and (self.aliasing_stride < 64 or self.aliasing_stride % 1):
            raise KeyedError("aliasing_stride", f"a cache's set span is whole bytes, at least a 64-byte line "
                             f"(got {self.aliasing_stride:g} B)")
        return self


class MemoryLevel(Spec):
    capacity: Bytes
    bandwidth: Bandwidth
    latency: Latency
    scope: Literal["per_unit", "shared"]
    kind: Literal["cache", "scratchpad", "dram"]
    efficiency: float = Field(default=1.0, gt=0, le=1, description="achievable fraction of `bandwidth`")
    efficiency_by_size: dict[Bytes, float] = Field(
        default_factory=dict,
        description="achievable fraction of `bandwidth` by the bytes one op moves over this level in one "
        "direction (interpolated in log bytes, clamped at the ends; replaces `efficiency`): a short transfer "
        "does not reach full speed (prefetch ramp-up, thread start, kernel tail). Absent: `efficiency`",
    )
    efficiency_by_run: dict[Bytes, float] = Field(
        default_factory=dict,
        description="achievable fraction (multiplying the size figure) by the length of the contiguous runs "
        "an op reads (a matmul's weight rows: N x element bytes; interpolated in log bytes, clamped at the "
        "ends): short runs defeat prefetchers and open a DRAM page per run. Absent: 1",
    )
    pin: tuple[Literal["weight", "kv_cache", "activation"], ...] = Field(
        default=(), description="tensor kinds a shared cache keeps resident (never evicted)"
    )

    @model_validator(mode="after")
    def _fractions(self) -> MemoryLevel:
        for key in ("efficiency_by_size", "efficiency_by_run"):
            for size, value in getattr(self, key).items():
                if not 0 < value <= 1:
                    raise KeyedError(key, f"efficiencies are fractions in (0, 1], got {value} at {size:.0f} bytes")
        return self

    @property
    def effective_bandwidth(self) -> float:
        """The bandwidth a long transfer achieves."""
        if self.efficiency_by_size:
            return self.bandwidth * self.efficiency_by_size[max(self.efficiency_by_size)]
        return self.bandwidth * self.efficiency

    def bandwidth_for(self, nbytes: float, run: float = 0.0) -> float:
        """The bandwidth an op moving `nbytes` over this level in contiguous runs of `run` bytes (0: long
        or unknown) achieves."""
        base = self.bandwidth * (log_interpolate(self.efficiency_by_size, max(nbytes, 1.0), self.efficiency)
                                 if self.efficiency_by_size else self.efficiency)
        if run and self.efficiency_by_run:
            return base * log_interpolate(self.efficiency_by_run, run, 1.0)
        return base

    def holds_tensors(self) -> bool:
        """Scratchpads and DRAMs are addressable homes for tensors; caches are not."""
        return self.kind != "cache"


class Link(Spec):
    bandwidth: Bandwidth = Field(description="per direction")
    latency: Latency
    efficiency: float = Field(default=1.0, gt=0, le=1, description="achievable fraction of `bandwidth`")

    @property
    def effective_bandwidth(self) -> float:
        return self.bandwidth * self.efficiency


class KernelCost(Spec):
    """One kernel's own costs where the framework's implementation departs from the device-wide figures."""

    dispatch: Latency | None = Field(
        default=None, description="host time to dispatch one such op, in place of `dispatch_overhead`")
    launch: Latency | None = Field(
        default=None, description="device time before such an op starts, in place of `launch_overhead`")
    vector: FlopRate | None = Field(
        default=None, description="rate in the graph's FLOPs, in place of `compute.vector`")
    fixed: Latency | None = Field(
        default=None, description="device time of one such op beyond `launch_overhead` (the kernel's own "
        "ramp-up, grid-wide reductions, epilogue), in place of `compute.matmul_overhead` for matmul-like ops "
        "and of nothing for others")
    epilogue: FlopRate | None = Field(
        default=None, description="rate of a matmul's elementwise epilogue (a bias add) that the framework "
        "runs as a pass of its own after the product (eager numpy: `y += b`), added to the op's compute "
        "time. Absent: fused into the matmul (a GPU library's epilogue), its FLOPs at the matmul's rate")
    row_element: Latency = Field(
        default=0.0, description="time per element of one row of a row-wise reduction (a norm over the "
        "hidden size) that one thread block reduces serially: the op computes for at least the row's width "
        "times this, however few its bytes (a batch-1 norm over 4096 elements)")


class Device(Spec):
    compute: ComputeUnit
    memory: dict[str, MemoryLevel] = Field(min_length=1, description="innermost level first")
    platform: Platform = Field(
        default="accelerator", description="the software family it runs (a runtime's `platforms` section "
        "applies): cuda (an NVIDIA GPU), cpu, tpu, accelerator (a design of its own)")
    dispatch_overhead: Latency = Field(
        default=0.0, description="host time to dispatch one op (the runtime's figure; 0: no software)")
    memory_reserved: Size = Field(
        default=0.0, description="device memory the software holds outside the graph's tensors (a CUDA "
        "context, library workspaces, communication buffers), taken from the device's DRAM (the runtime's "
        "figure)")
    dispatch_mode: Literal["async", "sync"] = Field(
        default="async",
        description="async: the host queues ops ahead of the device (GPU streams); sync: each op's dispatch "
        "starts when the previous op has finished (a CPU framework running op by op)",
    )
    launch_overhead: Latency = Field(
        default=0.0, description="device time from one kernel's end to the next one's start in a stream "
        "(a GPU's front end launching the grid), which no host running ahead hides; not for collectives, "
        "whose fixed cost is `interconnect.collective_overhead`")
    step_overhead: Latency = Field(
        default=0.0, description="host time per forward pass after the previous one has finished (sampling "
        "the token, scheduling the next step) before its first op is dispatched. 0: the framework overlaps "
        "it (on-device sampling, captured graphs) and the host may run ahead across passes")
    fuse: dict[Kernel, Literal["producer", "consumer"]] = Field(
        default_factory=dict, description="per kernel, the neighbour an inference pass runs its elementwise "
        "ops inside (the runtime's figure): `producer`, the op that made its input (a GEMM's epilogue), or "
        "`consumer`, the op that reads its output (the next norm); the other where that one cannot take it. "
        "The fused op pays no launch or fixed time of its own, and an activation only the two exchange never "
        "goes to memory")
    kernels: dict[Kernel, KernelCost] = Field(
        default_factory=dict, description="per kernel (what an op computes: layernorm, gelu, add, ...), costs "
        "that differ from `dispatch_overhead` and `compute.vector`: an eager framework's layernorm is several "
        "library calls, a GELU's tanh costs more per element than an add's sum")
    threads: Count | None = Field(
        default=None, description="the units the framework runs its ops on (the runtime's figure: a CPU "
        "framework's threads, torch.set_num_threads), at most `compute.units`: the device is then that many "
        "units, its matrix and vector peaks, its kernels' own vector and epilogue rates and every memory "
        "level's bandwidth scaled by threads / units (their share of the whole)")

    @model_validator(mode="before")
    @classmethod
    def _on_threads(cls, data: Any) -> Any:
        """The device as `threads` of its units: applied to the figures as written, before they are
        validated (a figure that does not parse is left for its own field to report)."""
        def count(value: Any) -> bool:
            return type(value) is int and value >= 1  # not a bool, which is an int to Python
        if not isinstance(data, dict) or not count(data.get("threads")):
            return data
        compute = data.get("compute")
        units = compute.get("units") if isinstance(compute, dict) else None
        if not count(units) or data["threads"] == units:
            return data
        if data["threads"] > units:
            raise KeyedError("threads", f"at most the device's {units} compute units (got {data['threads']})")
        share = data["threads"] / units
        try:
            memory, kernels = data.get("memory") or {}, data.get("kernels") or {}
            return {**data, "compute": {**_scaled(compute, ("vector",), Dim.COMPUTE, share), "units": data["threads"],
                                        "peak": _scaled(compute.get("peak") or {}, None, Dim.COMPUTE, share)},
                    "memory": {name: _scaled(lvl, ("bandwidth",), Dim.BANDWIDTH, share)
                               for name, lvl in memory.items()},
                    "kernels": {name: _scaled(cost, ("vector", "epilogue"), Dim.COMPUTE, share)
                                for name, cost in kernels.items()}}
        except (ValueError, TypeError, AttributeError):
            return data  # a malformed figure: its own field's validation names it

    def own(self, kernel: str, field: str) -> float | None:
        """`kernel`'s own `field` cost (`dispatch`, `launch`, `vector`, `fixed`, `epilogue`), or its
        `KERNEL_FALLBACK`'s; None where neither has one."""
        while kernel:
            cost = self.kernels.get(kernel)
            if cost is not None and getattr(cost, field) is not None:
                return getattr(cost, field)
            kernel = KERNEL_FALLBACK.get(kernel, "")
        return None

    def dispatch_for(self, kernel: str) -> float:
        """Host dispatch time of one op computing `kernel`."""
        own = self.own(kernel, "dispatch")
        return self.dispatch_overhead if own is None else own

    def launch_for(self, kernel: str) -> float:
        """Device time before an op computing `kernel` starts (its kernel's launch)."""
        own = self.own(kernel, "launch")
        return self.launch_overhead if own is None else own

    def fixed_for(self, kernel: str, matrix: bool) -> float:
        """Device time of an op computing `kernel` beyond the launch (`matrix`: a matmul-like op)."""
        own = self.own(kernel, "fixed")
        if own is None:
            return self.compute.matmul_overhead if matrix else 0.0
        return own

    def row_element_for(self, kernel: str) -> float:
        """Serial time per row element of an op computing `kernel` (0: no floor)."""
        cost = self.kernels.get(kernel)
        return 0.0 if cost is None else cost.row_element

    def epilogue_for(self, kernel: str) -> float | None:
        """Rate of an unfused epilogue of an op computing `kernel`; None where the framework fuses it."""
        return self.own(kernel, "epilogue")

    def vector_for(self, kernel: str) -> float:
        """Vector rate, in graph FLOPs per second, of an op computing `kernel`."""
        own = self.own(kernel, "vector")
        return self.compute.vector if own is None else own

    @model_validator(mode="after")
    def _fuses_elementwise_kernels(self) -> Device:
        check_fuse(self.fuse)
        return self

    @model_validator(mode="after")
    def _reserved_fits(self) -> Device:
        dram = next((lvl for lvl in self.memory.values() if lvl.kind == "dram"), None)
        if self.memory_reserved and (dram is None or self.memory_reserved >= dram.capacity):
            raise KeyedError("memory_reserved", "the runtime's reserved memory needs a DRAM level larger than it")
        return self

    @model_validator(mode="after")
    def _has_a_home(self) -> Device:
        for name, level in self.memory.items():
            if level.pin and (level.kind != "cache" or level.scope != "shared"):
                raise KeyedError(f"memory.{name}.pin", "only a shared cache can pin tensors")
        if not any(level.holds_tensors() for level in self.memory.values()):
            raise ValueError("no memory level of kind 'scratchpad' or 'dram' to hold tensors")
        return self


class Protocol(Spec):
    """How a collective library moves data (NCCL's LL, LL128, Simple): what each call and each algorithm
    step costs, and how much of a link's bandwidth carries data."""

    launch: Latency = Field(default=0.0, description="fixed latency of a call (NCCL's base latency)")
    step: Latency = Field(default=0.0, description="latency of one algorithm step between devices of a node "
                          "(NCCL's NVLink hardware latency); a step takes the longer of this and its links'")
    net_step: Latency | None = Field(default=None, description="the same for a step over the network "
                                     "(default: `step`)")
    bandwidth: float = Field(default=1.0, gt=0, le=1, description="share of a link's bandwidth that carries "
                             "data (LL: 0.5, its 8-byte lines carry 4 bytes and a flag)")
    chunks: dict[Bytes, Bytes] = Field(
        default_factory=dict, description="the chunk the library pipelines a call's data in, by the call's "
        "size: each key is the size from which its chunk applies (below the smallest key, that key's chunk; "
        "NCCL shrinks chunks for smaller calls so that every channel has work); absent: no per-chunk cost")
    chunk_overhead: Latency = Field(
        default=0.0, description="link time each chunk adds to a transfer beyond its bytes (its handshake; "
        "the library's channels run chunks side by side, so this is per chunk over all of them)")

    @model_validator(mode="after")
    def _chunked(self) -> Protocol:
        if self.chunk_overhead and not self.chunks:
            raise KeyedError("chunk_overhead", "a cost per chunk needs the protocol's `chunks`")
        return self

    def chunk(self, size: float) -> float | None:
        """The chunk a call of `size` bytes is pipelined in (None: the protocol gives no chunks)."""
        if not self.chunks:
            return None
        return self.chunks[max((k for k in self.chunks if k <= size), default=min(self.chunks))]


class CollectiveLibrary(Spec):
    """A collective library's cost model: its protocols, the fastest taken per call (as NCCL's tuner
    does), and its in-switch algorithm where the switch can reduce."""

    protocols: dict[str, Protocol] = Field(
        default_factory=lambda: {"simple": Protocol()}, min_length=1,
        description="by name; each collective takes the algorithm and protocol of least estimated time")
    in_switch: Protocol | None = Field(
        default=None, description="an all-reduce inside one node reduced in the switch (NCCL's NVLS), where "
        "`interconnect.in_switch_reduction`: each device sends its buffer up once and receives the result")


class Interconnect(Spec):
    topology: Literal["switch", "ring", "tree", "torus2d", "mesh2d", "torus3d"]
    link: Link
    in_switch_reduction: bool = Field(
        default=False, description="the switch reduces and multicasts (NVLink SHARP on third-generation "
        "NVSwitch): all-reduces may run in the switch (the runtime's `collectives.in_switch`)")
    collective_overhead: Latency = Field(
        default=0.0, description="fixed software cost of each collective (library launch and handshake), "
        "on top of its per-step link latencies")
    library: CollectiveLibrary = Field(
        default_factory=CollectiveLibrary, description="the collective library's protocols (the runtime's "
        "`collectives`; default: one protocol at the links' latency and full bandwidth)")


class HostMemory(Spec):
    capacity: Bytes
    bandwidth: Bandwidth
    latency: Latency


class Host(Spec):
    link: Link
    memory: HostMemory


class Network(Spec):
    """The scale-out network between nodes: each device's own NIC into one non-blocking fabric."""

    link: Link = Field(description="each device's NIC: bandwidth per direction, latency through the fabric")


#: the most devices a machine may have (devices x nodes): the largest clusters have ~100,000 GPUs
MAX_DEVICES = 100_000


class Hardware(Spec):
    name: str = Field(min_length=1)
    source: str = Field(min_length=1, description="public datasheet / whitepaper the figures come from")
    devices: Count = Field(description="devices per node")
    nodes: Count = Field(default=1, description="nodes, joined by `network`")
    device: Device
    interconnect: Interconnect | None = None
    network: Network | None = None
    host: Host | None = None
    calibration: dict[str, str] = Field(default_factory=dict, description="how each figure was measured")
    runtime: str = Field(default="", description="set by the loader: the name of the runtime applied onto the "
                         "hardware file's software figures (none: the hardware file's own)")

    @property
    def total_devices(self) -> int:
        return self.devices * self.nodes

    @model_validator(mode="after")
    def _links_for_many(self) -> Hardware:
        if self.devices * self.nodes > MAX_DEVICES:
            raise KeyedError("nodes" if self.nodes > 1 else "devices", f"{self.devices * self.nodes:,} devices: "
                             f"beyond reason (at most {MAX_DEVICES:,}, more than the largest clusters)")
        if self.devices > 1 and self.interconnect is None:
            raise ValueError(f"{self.devices} devices need an 'interconnect' section")
        if self.nodes > 1 and (self.network is None or self.interconnect is None):
            raise KeyedError("network", f"{self.nodes} nodes need a 'network' section (and an 'interconnect' one)")
        if HOST_LEVEL in self.device.memory:
            raise KeyedError(f"device.memory.{HOST_LEVEL}", f"'{HOST_LEVEL}' is reserved for host memory")
        return self

    def oddities(self) -> list[str]:
        """What is valid but physically odd, one line each (a warning; the run goes on): a memory level
        faster than the level inside it, which no real hierarchy builds — usually a mistyped unit or a
        sweep axis gone past its neighbour."""
        from sim.config.units import fmt_si

        out = []
        levels = self.levels
        names = list(levels)
        for inner, outer in zip(names, names[1:]):
            a, b = levels[inner], levels[outer]
            key = f"device.memory.{outer}" if outer != HOST_LEVEL else "host"
            if b.bandwidth > a.bandwidth:
                out.append(f"{key}: {fmt_si(b.bandwidth, 'B/s')} is faster than the level inside it, {inner}, at "
                           f"{fmt_si(a.bandwidth, 'B/s')}")
        return out

    @property
    def levels(self) -> dict[str, MemoryLevel]:
        """The device's memory levels, innermost first, then host memory reached over the host link
        (if described): what does not fit on the device spills there and streams over PCIe."""
        levels = dict(self.device.memory)
        if self.host is not None:
            link, mem = self.host.link, self.host.memory
            levels[HOST_LEVEL] = MemoryLevel(
                capacity=mem.capacity, bandwidth=min(link.bandwidth, mem.bandwidth),
                latency=link.latency + mem.latency, scope="shared", kind="dram",
            )
        return levels
