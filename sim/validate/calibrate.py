"""`python -m sim calibrate`: measure this machine with microbenchmarks and write a hardware model.

What is measured, and how (each figure's method is written into the YAML's `calibration:` section):
- cache sizes and which cores share them: from the OS (/sys/devices/system/cpu/cpu0/cache);
- bandwidth of each cache level and of DRAM: private levels by a C read loop on every core (see
  `native`; numpy's per-call cost is longer than reading a whole L1/L2), shared ones by BLAS GEMVs
  over weights resident in them, 1/16 to 1/2 of the level (`efficiency_by_size`; less the matmul's
  dispatch, which the model adds to every GEMV op, as for DRAM's cold GEMVs); DRAM by numpy copies
  and cold BLAS GEMVs over a matrix far larger than the last cache and of 1-64 MiB (`efficiency_by_size`;
  the bandwidth the fastest of them, as GEMVs use every core); cold: each weight cut from a pool 16x
  the largest cache.
  DRAM's GEMV weights have long rows (LONG_ROW columns), and DRAM is also measured by the length of
  the weight's rows (`efficiency_by_run`: short rows are short contiguous runs); so is a shared cache,
  on GEMVs of a quarter of it with CACHE_ROW columns and fewer;
- latency of each level: a C pointer chase through a random cycle of cache lines sized to the level;
- peak GEMM FLOP/s per dtype: large square matmuls with the BLAS numpy uses;
- a biased linear's epilogue: numpy's bias add `y += b`, a pass of its own after the product
  (`epilogue_rate`);
- per kernel (layernorm, softmax, GELU, add, ...: the reference's functions, `kernels`), its dispatch
  (its time on a tiny input, where only the framework's cost remains, right after a GEMV that streamed
  its weight, as in a pass) and its vector rate (on
  L2-resident data, in FLOPs by the graph's conventions per second, beyond the dispatch): an eager
  layernorm is nine numpy calls, a GELU's tanh costs ten adds; the medians are the device-wide figures.
Every figure is measured in `ROUNDS` rounds and the median round kept (each round's figure is itself
a median of batches: `timing.typical_time`). Nothing here looks at an end-to-end run: calibration never
fits what validation then predicts.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np
import yaml

from sim.config.units import Dim, parse_quantity
from sim.errors import ConfigError
from sim.graph.transformer import ACT_FLOPS, NORM_FLOPS, ROPE_FLOPS, SOFTMAX_FLOPS
from sim.validate import kernels as k
from sim.validate import native
from sim.validate.timing import typical_time

LATENCY_ASSUMED = {1: "1.5 ns", 2: "5 ns", 3: "20 ns"}  # without a C compiler; typical orders


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def os_caches() -> list[dict]:
    """Data/unified caches of cpu0: level, size in bytes, and whether one core has it to itself."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    caches = []
    for index in sorted(base.glob("index*")) if base.exists() else []:
        try:
            kind = (index / "type").read_text().strip()
            if kind == "Instruction":
                continue
            size = (index / "size").read_text().strip()
            factor = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size[-1], 1)
            shared = (index / "shared_cpu_list").read_text().strip()
            private = "," not in shared and "-" not in shared
            cache = {"level": int((index / "level").read_text()), "bytes": int(size.rstrip("KMG")) * factor,
                     "private": private}
            with contextlib.suppress(OSError, ValueError):  # its sets' span: addresses that far apart share one
                cache["span"] = int((index / "number_of_sets").read_text()) * int(
                    (index / "coherency_line_size").read_text())
            caches.append(cache)
        except (OSError, ValueError):
            continue
    return caches


def last_cache_bytes(caches: list[dict]) -> int:
    """Size of the largest (last-level) cache in `caches` (32 MiB if none is known)."""
    return max((c["bytes"] for c in caches), default=32 << 20)


@functools.cache
def operand(shape: tuple[int, ...], dtype: type = np.float32, which: int = 0) -> np.ndarray:
    """A read-only array of ones, made once per process, shape and `which` (distinct arrays of one
    shape): calibration's GEMM and GEMV operands live as long as the cases' and a model's weights do.
    Made afresh each round, the L3's 8 MiB GEMV with 1024 columns took 148 us (median of eight rounds
    inside `validate`) against 124 us for the same shape made once, timed seconds later; made once,
    146 against 141 us in the next run (one run each: within this machine's noise)."""
    a = np.ones(shape, dtype)
    a.flags.writeable = False
    return a


@functools.cache
def owned(kern: ModuleType, shape: tuple[int, ...], dtype: type = np.float32, which: int = 0):
    """`operand` in `kern`'s framework's own memory (`own`), made once per process like the operand."""
    return kern.own(operand(shape, dtype, which))


@functools.cache
def _copy_pairs(n: int, threads: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Source and destination arrays of `n` floats per thread, made (and faulted in) once: see
    `native._cycle` for what allocating them every round did to the next measurement."""
    return [(np.ones(n, np.float32), np.ones(n, np.float32)) for _ in range(threads)]


def copy_bandwidth(nbytes: int, threads: int = 1) -> float:
    """Read + write bytes per second of numpy copies of `nbytes` per thread, `threads` at once
    (numpy releases the GIL while copying, so threads run on separate cores)."""
    n = max(1024, nbytes // 8)
    pairs = _copy_pairs(n, threads)
    if threads == 1:
        src, dst = pairs[0]
        return 2 * src.nbytes / typical_time(lambda: np.copyto(dst, src))
    pool = ThreadPoolExecutor(threads)
    reps = max(8, int(4e7 // (n * 4)))  # each task copies ~40 MB so thread start-up does not count

    def all_copy():
        list(pool.map(lambda p: [np.copyto(p[1], p[0]) for _ in range(reps)], pairs))

    try:
        return 2 * n * 4 * threads * reps / typical_time(all_copy, repeats=3)
    finally:
        pool.shutdown()


def read_bandwidth(nbytes: int) -> float:
    """Bytes per second one core reads from an `nbytes` array that stays in its cache: one numpy call
    sums many stride-0 copies of it, so per-call overhead does not count."""
    n = max(256, nbytes // 4)
    a, out = np.ones(n, np.float32), np.empty(n, np.float32)
    reps = max(16, int(1e8 // a.nbytes))
    view = np.broadcast_to(a, (reps, n))
    return reps * a.nbytes / typical_time(lambda: np.sum(view, axis=0, out=out), repeats=3)


def gemm_rate(dtype, n: int, kern: ModuleType = k) -> float:
    a, b = owned(kern, (n, n), dtype), owned(kern, (n, n), dtype, which=1)
    return 2 * n**3 / typical_time(lambda: a @ b, repeats=3)


ROWS = (16, 64, 256, 1024)


#: The size of the square GEMM the fp32 peak is measured on.
MATRIX_SIZE = 2048


def rows_side(caches: list[dict]) -> int:
    """K = N of the square fp32 weight `matrix_efficiency` is measured on: the largest multiple of 256
    (768 to MATRIX_SIZE) whose weight fits in a quarter of the last cache, as the shared cache's
    bandwidth is measured, so that the rate is the BLAS's (packing, threading), not memory's. Medians of
    five interleaved rounds on this project's VM (32 MiB L3), 16 rows: 76, 87 and 83 GFLOP/s on weights
    of 768, 1024 and 1536 a side (2.3-9 MiB), 64 and 66 on 2048 and 3072 (16-36 MiB); at 64 and 256
    rows all within 10%. A 512 x 512 weight ran 16-64 rows 25-40% slower than every larger one. A side
    whose rows would alias in the cache (4 x side a multiple of the L1's set span: 1024, 2048 here) steps
    by 256 (down, but not below 768): that costs `matrix_efficiency_aliased`, measured apart."""
    side = min(MATRIX_SIZE, max(768, int((last_cache_bytes(caches) / 4 / 4) ** 0.5) // 256 * 256))
    stride = aliasing_stride(caches)
    if stride > 1024 and 4 * side % stride == 0:  # rows that alias in the cache: their own table (a set
        side += -256 if side > 768 else 256        # span of 1 KiB or less aliases every multiple of 256:
    return side                                    # the general table then holds it, the aliased one ~1)


def aliasing_stride(caches: list[dict]) -> int:
    """The span of the innermost cache's sets (its size over its ways; 4 KiB if unknown): rows of a
    weight a multiple of it apart fall into the same sets."""
    return max(64, _inner(caches).get("span") or 4096)


def _inner(caches: list[dict]) -> dict:
    """The innermost cache (the smallest of the lowest level; empty if none is known)."""
    return min(caches, key=lambda c: (c["level"], c["bytes"]), default={})


#: Rows M `matrix_efficiency_aliased` is measured at
ALIAS_ROWS = (1, *ROWS)


def aliasing_rates(side: int, stride: int, kern: ModuleType = k) -> dict[int, float]:
    """Per rows M, the GEMM rate of M x `side` @ a side x N fp32 weight whose rows are a multiple of
    `stride` apart (N the first such at or above `side`), over the mean rate with 256 columns fewer and
    more (rows not so aligned): the cost of the cache conflicts alone. On this project's VM (32 KiB
    8-way L1, 4 KiB), numpy, 1280 x 2048 against 1792 and 2304: 0.83-0.98, 0.65-0.80, 0.86-0.90,
    0.94-0.96 and 0.92-0.97 at 1, 16, 64, 256 and 1024 rows (spot checks and a 16-round calibration);
    16 x 1024 x 1024 ran 85.6 GFLOP/s against 130.8 for 16 x 1000 x 1000."""
    columns = max(1, stride // 4)
    n = -(-side // columns) * columns
    out = {}
    for m in ALIAS_ROWS:
        x = owned(kern, (m, side))
        rate = {}
        for cols in (n - 256, n, n + 256):
            w = owned(kern, (side, cols), which=1)
            rate[cols] = 2 * m * side * cols / typical_time(lambda x=x, w=w: x @ w, repeats=5)
        out[m] = rate[n] / ((rate[n - 256] + rate[n + 256]) / 2)
    return out


def matrix_rates(side: int, kern: ModuleType = k, cold: bool = False) -> dict[int, float]:
    """GEMM FLOP/s by rows M on a `side` x `side` fp32 weight (`rows_side`): one weight re-read (it stays
    in the last cache), or, `cold`, each call's weight the least recently used of the cold pool (from
    DRAM, as a pass reads a model's weights)."""
    w, pool = owned(kern, (side, side), which=1), cold_pool()
    out = {}
    for m in ROWS:
        x = owned(kern, (m, side))
        call = (lambda x=x: x @ kern.array(pool.take(side, side))) if cold else (lambda x=x: x @ w)
        out[m] = 2 * m * side * side / typical_time(call, repeats=5)
    return out


#: Reduction depths K `matrix_efficiency_by_depth` is measured at, on DEPTH_SIDE x DEPTH_SIDE outputs
#: (a per-head attention GEMM's size: K is its head_dim or context), against the same output at
#: K = MATRIX_SIZE: 256 x 256 outputs ran at 67, 91 and 139 GFLOP/s with K = 64, 128 and 256, 139 at
#: 2048, on this project's VM (best of three rounds).
DEPTHS = (64, 128, 256)
DEPTH_SIDE = 256


def depth_rates(kern: ModuleType = k) -> dict[int, float]:
    """GEMM FLOP/s of DEPTH_SIDE x K @ K x DEPTH_SIDE by reduction depth K (DEPTHS and MATRIX_SIZE)."""
    out = {}
    for depth in DEPTHS + (MATRIX_SIZE,):
        x, w = owned(kern, (DEPTH_SIDE, depth)), owned(kern, (depth, DEPTH_SIDE), which=1)
        out[depth] = 2 * DEPTH_SIDE * DEPTH_SIDE * depth / typical_time(lambda x=x, w=w: x @ w, repeats=5)
    return out


def _weight_shape(nbytes: int, columns: int | None) -> tuple[int, int]:
    """K x N of an fp32 weight of about `nbytes` with `columns` columns (square if None)."""
    n = columns or int((nbytes / 4) ** 0.5)
    return max(1, nbytes // (4 * n)), n


def gemv_time(nbytes: int, columns: int | None = None, kern: ModuleType = k) -> float:
    """Seconds per call of a BLAS GEMV re-reading one fp32 weight of about `nbytes` (warm: where it
    fits, the cache holding it serves it), K x `columns` (square if None)."""
    rows, cols = _weight_shape(nbytes, columns)
    w, x = owned(kern, (rows, cols), which=1), owned(kern, (1, rows))
    return typical_time(lambda: x @ w, repeats=3)


def gemv_bandwidth(nbytes: int, columns: int | None = None, overhead: float = 0.0, kern: ModuleType = k) -> float:
    """Bytes per second of `gemv_time`'s GEMV, less the per-call framework cost `overhead`."""
    rows, cols = _weight_shape(nbytes, columns)
    return _net_rate(4 * rows * cols, gemv_time(nbytes, columns, kern), overhead)


def _net_rate(nbytes: int, per_call: float, overhead: float) -> float:
    """Bytes per second of a call moving `nbytes` in `per_call` seconds, `overhead` of which is the
    framework's (the model adds that back as the op's dispatch; not below a tenth of the call)."""
    return nbytes / max(per_call - overhead, per_call / 10)


#: A shared cache's bandwidth is measured on weights with CACHE_ROW columns (16 KiB rows) and its
#: `efficiency_by_run` at CACHE_RUN_COLUMNS: a warm x @ W of a quarter of this VM's L3 streamed at 62-74,
#: 67-78 and 84-95 GB/s with 256, 1024 and 4096 columns in two runs of five rounds, and GPT-2's tall
#: 3072 x 768 weight slower than its wide ones in every run. Not longer: with 16384 columns a quarter
#: of the L3 is 128 rows, whose 64 KiB output row spills L1.
CACHE_ROW = 4096
CACHE_RUN_COLUMNS = (256, 1024)
#: ... and its `efficiency_by_size` on weights of these fractions of its capacity (the run table's at a
#: quarter): a cache shared with other cores (and, on a cloud VM, other tenants) serves a larger working
#: set at a lower rate, as more of it is evicted between reads. Inside `validate` on this project's VM
#: (medians of six rounds) a 1024-column GEMV of 8 MiB took 112-140 us where the 4 MiB one took 58-60:
#: per byte, 8 MiB ran 5-15% slower, and the one-row GEMM (4 MiB) predicted from 8 MiB came out 12-26%
#: slow in seven of eight runs.
CACHE_FRACTIONS = (16, 8, 4, 2)


#: Data that must come from DRAM is taken from a pool at least this many times the largest cache. A
#: flush (streaming other data through) is not enough where the cache's replacement policy protects
#: lines from streams: this machine's L3 kept part of a 64 MiB weight re-read after another
#: stream. No policy can hold more than 1/16 of the pool.
POOL_FACTOR = 16


class ColdPool:
    """Weights cut, one after the other, from a pool of distinct memory far larger than the caches:
    each taken weight is the least recently used data in the pool."""

    def __init__(self, nbytes: int):
        raw = np.ones(nbytes // 4 + 16, np.float32)
        start = (-raw.ctypes.data % 64) // 4  # on a cache line, as a framework's allocator places a weight
        self.buffer = raw[start:start + nbytes // 4]
        self.at = 0

    def take(self, k: int, n: int) -> np.ndarray:
        size = k * n
        if size > self.buffer.size:
            raise ValueError(f"a {4 * size >> 20} MiB weight is larger than the cold pool")
        if self.at + size > self.buffer.size:
            self.at = 0
        w = self.buffer[self.at:self.at + size].reshape(k, n)
        self.at += -(-size // 16) * 16  # the next weight on a cache line too
        return w


@functools.cache
def cold_pool() -> ColdPool:
    """The pool, made once: `POOL_FACTOR` x the largest cache, and at least as large as any weight taken
    from it (256 MiB; calibration's largest is `POOL_FACTOR` x the largest cache)."""
    return ColdPool(max(POOL_FACTOR * last_cache_bytes(os_caches()), 256 << 20))


def cold_gemv_rate(nbytes: int, overhead: float = 0.0, repeats: int = 7, columns: int | None = None,
                   kern: ModuleType = k) -> float:
    """Bytes per second of one BLAS GEMV x @ W over an fp32 weight W of `nbytes` streamed from DRAM (a
    weight from the cold pool each call), less the per-call framework cost `overhead`: how fast one op
    moves that many bytes. W is K x `columns` (square if None): each of its rows is one contiguous run."""
    rows, cols = _weight_shape(nbytes, columns)
    pool, x = cold_pool(), owned(kern, (1, rows))
    return _net_rate(4 * rows * cols, typical_time(lambda: x @ kern.array(pool.take(rows, cols)), repeats=repeats),
                     overhead)


#: Transfer sizes DRAM's `efficiency_by_size` is measured at, on weights with LONG_ROW columns (prefetchers
#: and threads ramp up per call, so short streams are slower) ...
COLD_SIZES = (1 << 20, 4 << 20, 16 << 20, 64 << 20)
LONG_ROW = 16384
#: ... and the row lengths (columns) its `efficiency_by_run` is measured at, on RUN_SIZE weights: a row
#: of a few KiB is a run too short for the prefetchers (x @ W of a 64 MiB W with 256 columns streamed at
#: about half the rate of one with 16384 on this project's VM).
#: The LONG_ROW figure is the size table's at RUN_SIZE, measured once: prediction for a RUN_SIZE weight is
#: then that one measurement of its row length, not a ratio of two best rounds of the same GEMV times a third.
RUN_COLUMNS = (256, 1024, 4096)
RUN_SIZE = 64 << 20
assert RUN_SIZE in COLD_SIZES


def _kernel_cases(n: int, kern: ModuleType = k) -> dict[str, tuple[Callable[[], object], float]]:
    """Per graph kernel, (the reference's call for one such op in `kern`'s framework, its FLOPs by the
    graph's conventions) on an (n/64) x 64 input; rope is two calls (the graph's one op rotates queries
    and keys)."""
    rows, cols = max(1, n // 64), 64
    a = kern.own
    x = a(np.ones((rows, cols), np.float32))
    g, b = a(np.ones(cols, np.float32)), a(np.zeros(cols, np.float32))
    half_rows = max(1, rows // 2)
    half = a(np.ones((half_rows, cols), np.float32))
    cos, sin = a(np.ones(cols // 2, np.float32)), a(np.zeros(cols // 2, np.float32))
    elems = rows * cols
    return {
        "layernorm": (lambda: kern.layernorm(x, g, b), NORM_FLOPS["layernorm"] * elems),
        "rmsnorm": (lambda: kern.rmsnorm(x, g), NORM_FLOPS["rmsnorm"] * elems),
        "softmax": (lambda: kern.softmax(kern.copy(x), 0.125), SOFTMAX_FLOPS * elems),
        "gelu": (lambda: kern.gelu(x), ACT_FLOPS["gelu"] * elems),
        "silu": (lambda: kern.silu_gate(x, x), ACT_FLOPS["silu"] * elems),
        "relu": (lambda: kern.relu(x), ACT_FLOPS["relu"] * elems),
        "add": (lambda: kern.add(x, x), elems),
        "rope": (lambda: (kern.rope(half, cos, sin), kern.rope(half, cos, sin)), ROPE_FLOPS * 2 * half_rows * cols),
    }


def vector_elements(caches: list[dict]) -> int:
    """Elements the kernels' rates are measured on: a few arrays of them stay in L2."""
    return max(4096, next((c["bytes"] for c in caches if c["level"] == 2), 256 << 10) // 16)


def kernel_rates(n: int, dispatch: dict[str, float], kern: ModuleType = k) -> dict[str, float]:
    """Per kernel, graph FLOPs per second of its time beyond dispatch on `n` elements (the model adds
    the dispatch to every op; so does the measurement). Not larger than L2: a kernel timed alone on
    arrays over glibc's mmap threshold (128 KiB) faults its temporaries in afresh on every call, which
    inside a forward pass, with the heap grown, it does not."""
    return {name: flops / max(typical_time(fn) - dispatch[name], 1e-9)
            for name, (fn, flops) in _kernel_cases(n, kern).items()}


#: Columns of the output the bias add's rate is measured on (a BERT / GPT-2 hidden size). With rows of a
#: multiple of 4 KiB, numpy's `y += b` ran 2-3.7 ns per element where every row started at the bias's
#: offset modulo 4 KiB (loads and stores 4K-aliased), 0.22-0.35 elsewhere (L2- and L3-sized outputs, this
#: project's VM); 3 KiB rows cycle through four offsets and ran 0.25-0.33.
EPILOGUE_COLUMNS = 768


def epilogue_rate(n: int, kern: ModuleType = k) -> float:
    """Elements per second of the bias add `y += b` (in `kern`'s framework) over an output of about `n`
    elements (L2-resident) with EPILOGUE_COLUMNS columns, beyond the same call on 8 elements: the
    epilogue a biased linear runs as a pass of its own after the product (the tiny call is part of the
    linear's dispatch)."""
    cols, rows = EPILOGUE_COLUMNS, max(1, n // EPILOGUE_COLUMNS)
    y, b = kern.own(np.ones((rows, cols), np.float32)), kern.own(np.ones(cols, np.float32))
    y8, b8 = kern.own(np.ones((1, 8), np.float32)), kern.own(np.ones(8, np.float32))

    def add(y, b):
        y += b

    full, tiny = typical_time(lambda: add(y, b)), typical_time(lambda: add(y8, b8))
    return (rows * cols - 8) / max(full - tiny, 1e-9)


def tiny_kernels(kern: ModuleType = k) -> dict[str, Callable[[], object]]:
    """Per kernel, its call on a tiny input, where only the framework's cost remains; matmul is a bare
    1 x 8 x 8 `x @ w`, linear the same with a bias (two calls, the product and `y += b`: 2.6 against 4.5 us
    in a tight loop in numpy)."""
    out = {name: fn for name, (fn, _) in _kernel_cases(64, kern).items()}
    w, x = kern.own(np.ones((8, 8), np.float32)), kern.own(np.ones((1, 8), np.float32))
    out["matmul"] = lambda: kern.linear(x, w)
    out["linear"] = lambda: kern.linear(x, w, w[0])
    return out


def kernel_dispatch(stream_bytes: int, calls: int = 20, batches: int = 3, kern: ModuleType = k) -> dict[str, float]:
    """Per kernel, its tiny call's time right after a cold GEMV over `stream_bytes`: as ops run in a
    pass, after another op has streamed its weight through the caches and evicted the framework's own
    state. The mean over a batch of `calls` such calls, median batch — as `typical_time` keeps a batch's
    mean, not the fastest call: a pass adds its ops' typical times, and a tiny call's fastest is
    far below its typical one (a layer norm on 768 floats after a cold GEMV: 37 us fastest, 58 us
    median). On this project's VM a call costs 2-11 us more after the stream than in a tight loop (the
    fastest: a layer norm 27 -> 38 us, an add 1 -> 3 us, the same in three repetitions), and a GPT-2
    decode step's layer norms took ~50 us each inside the pass."""
    rows, columns = _weight_shape(stream_bytes, 1024)
    pool, x = cold_pool(), owned(kern, (1, rows))
    out = {}
    for name, fn in tiny_kernels(kern).items():
        means = []
        for _ in range(batches):
            spent = 0.0
            for _ in range(calls):
                x @ kern.array(pool.take(rows, columns))
                t0 = time.perf_counter()
                fn()
                spent += time.perf_counter() - t0
            means.append(spent / calls)
        out[name] = statistics.median(means)
    return out


ROUNDS = 3  # every figure is measured once per round, the rounds one after another


#: The stages of a round, in order; after each, `calibrate`'s `between` hook runs (validation times the
#: cases that depend most on that stage's figures there, seconds after them).
STAGES = ("caches", "gemm", "kernels", "dram")


def _measure_once(caches: list[dict], cores: int, compiled: bool, dram_bytes: int,
                  progress: Callable[[str], None], after: Callable[[str], None],
                  kern: ModuleType = k) -> dict[str, float]:
    """One round of every raw figure, the matmuls and kernels in `kern`'s framework: rates in bytes or
    FLOPs per second, latencies in seconds; `after(stage)` runs after each of STAGES."""
    out: dict[str, float] = {}
    warm: dict[str, tuple[int, int]] = {}  # a shared cache's GEMVs: figure -> (bytes, columns)
    for c in caches:
        name = f"l{c['level']}"
        progress(f"bandwidth and latency of {name} ({c['bytes'] // 1024} KiB)")
        if c["private"]:
            out[f"{name}.bw"] = native.read_bandwidth(c["bytes"] // 2, cores) if compiled \
                else cores * read_bandwidth(c["bytes"] // 2)
        else:  # per-call times here, rates once the matmul's dispatch is known (below)
            level = {f"{name}.size.{c['bytes'] // f}": (c["bytes"] // f, CACHE_ROW) for f in CACHE_FRACTIONS} | {
                f"{name}.run.{n}": (c["bytes"] // 4, n) for n in CACHE_RUN_COLUMNS}
            warm.update(level)
            out.update({key: gemv_time(*shape, kern) for key, shape in level.items()})
        if compiled:
            out[f"{name}.lat"] = native.load_latency(c["bytes"] // (2 if c["private"] else 8))
    after("caches")
    progress("GEMM peak (fp32, fp16) and rate by rows")
    out["fp32"], out["fp16"] = gemm_rate(np.float32, MATRIX_SIZE, kern), gemm_rate(np.float16, 256, kern)
    out.update({f"rows.{m}": r for m, r in matrix_rates(rows_side(caches), kern).items()})
    out.update({f"cold_rows.{m}": r for m, r in matrix_rates(rows_side(caches), kern, cold=True).items()})
    out.update({f"depth.{depth}": r for depth, r in depth_rates(kern).items()})
    out.update({f"alias.{m}": r for m, r in aliasing_rates(rows_side(caches), aliasing_stride(caches), kern).items()})
    after("gemm")
    progress("each kernel's dispatch and vector rate")
    dispatch = kernel_dispatch(last_cache_bytes(caches) // 4, kern=kern)
    out.update({f"dispatch.{name}": t for name, t in dispatch.items()})
    hot = {name: typical_time(fn) for name, fn in tiny_kernels(kern).items()}  # the rates' loops run hot
    out.update({f"vector.{name}": r for name, r in kernel_rates(vector_elements(caches), hot, kern).items()})
    out["epilogue.linear"] = epilogue_rate(vector_elements(caches), kern)
    for key, (nbytes, columns) in warm.items():  # net of dispatch, as DRAM's GEMVs are: the model adds it
        k, n = _weight_shape(nbytes, columns)
        out[key] = _net_rate(4 * k * n, out[key], dispatch["matmul"])
    after("kernels")
    progress("bandwidth and latency of DRAM (copy, GEMV, pointer chase), by transfer size and row length")
    out["dram.copy"] = copy_bandwidth(dram_bytes // cores, cores)
    out["dram.gemv"] = cold_gemv_rate(dram_bytes, columns=LONG_ROW, kern=kern)
    if compiled:
        out["dram.lat"] = native.load_latency(dram_bytes)
    gemv = dispatch["matmul"]  # a GEMV op pays the matmul's dispatch in the model
    out.update({f"cold.{size}": cold_gemv_rate(size, gemv, columns=LONG_ROW, kern=kern) for size in COLD_SIZES})
    out.update({f"dram.run.{n}": cold_gemv_rate(RUN_SIZE, gemv, columns=n, kern=kern) for n in RUN_COLUMNS})
    after("dram")
    return out


def _median_of_rounds(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Per figure, its median round: the machine as it typically runs in these minutes, as validation's
    cases are measured. The best round would describe the machine's calmest moments, which a longer run
    cannot stay inside (see `timing`); a round that fell into a burst of load moves the median little."""
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def calibrate(progress: Callable[[str], None] = lambda _msg: None, rounds: int = ROUNDS,
              between: Callable[[int, str], None] | None = None, kern: ModuleType = k) -> dict:
    """Measure, with `kern`'s framework (numpy, or PyTorch: its matmuls and kernels; the caches and DRAM
    also by C loops and numpy copies), and return the model as a hardware YAML dict with the framework's
    costs in it (`split_runtime` makes the two files). `between(r, stage)` runs after each stage of
    round r (validation times its cases there, each group right after the figures it depends on most,
    so that calibration and cases see the machine in the same seconds)."""
    cores = cpu_count()
    caches = os_caches() or [{"level": 2, "bytes": 1 << 20, "private": True}]
    compiled = native.available()
    dram_bytes = max(256 << 20, 16 * last_cache_bytes(caches))
    for _attempt in (1, 2):  # a contradiction is measured again once
        measured = []
        for r in range(rounds):
            measured.append(_measure_once(caches, cores, compiled, dram_bytes,
                                          lambda msg, r=r: progress(f"round {r + 1} of {rounds}: {msg}"),
                                          lambda stage, r=r: between(r, stage) if between is not None else None,
                                          kern))
        data = _model(_median_of_rounds(measured), caches, cores, compiled, dram_bytes, rounds, kern.NAME)
        odd = contradictions(data["device"]["memory"])
        if not odd:
            return data
        progress(f"{odd[0][1]}: measuring again")
    key, why = odd[0]
    raise ConfigError(f"measured twice, {why}; nothing written (calibrate on a quieter machine)", "calibration",
                      key)


def contradictions(memory: dict) -> list[tuple[str, str]]:
    """(key, why) for each measured level faster than the level inside it: figures a real hierarchy cannot
    have, which a burst of load during one measurement can produce."""
    levels = list(memory.items())
    out = []
    for (inner, a), (outer, b) in zip(levels, levels[1:]):
        fa, fb = parse_quantity(a["bandwidth"], Dim.BANDWIDTH), parse_quantity(b["bandwidth"], Dim.BANDWIDTH)
        if fb > fa:
            out.append((f"device.memory.{outer}.bandwidth",
                        f"{outer} read at {fb / 1e9:.1f} GB/s, faster than {inner} inside it at {fa / 1e9:.1f} GB/s"))
    return out


def _model(fig: dict[str, float], caches: list[dict], cores: int, compiled: bool, dram_bytes: int,
           rounds: int, framework: str = "numpy") -> dict:
    """The hardware YAML (a dict) the measured figures describe."""
    kept = f"median of {rounds} rounds"
    notes: dict[str, str] = {}
    memory: dict[str, dict] = {}
    for c in caches:
        name, private = f"l{c['level']}", c["private"]
        # a private cache: every core reading its own half-capacity array at once (a C loop: a numpy call
        # costs longer than reading a whole L1 or L2); a shared one: a BLAS GEMV over a weight a quarter
        # its size, the rate a BLAS kernel streams from it (a numpy copy on every core counted 40-70%
        # more, which left L3-resident GEMVs predicted 30-50% fast)
        if private and compiled:
            method = f"{cores} threads of a C read loop over {c['bytes'] // 2048} KiB each"
        elif private:
            method = f"{cores} cores x one core's numpy read of {c['bytes'] // 2048} KiB (no C compiler)"
        else:
            sizes = " / ".join(f"{c['bytes'] // f >> 10}" for f in sorted(CACHE_FRACTIONS, reverse=True))
            method = (f"the fastest of BLAS GEMVs (all its threads) re-reading an fp32 weight of {sizes} KiB with "
                      f"{CACHE_ROW} columns that stays in the level, less the matmul dispatch overhead; "
                      f"efficiency_by_size = each of them over it; efficiency_by_run = the {c['bytes'] // 4096} "
                      f"KiB one with {' and '.join(map(str, CACHE_RUN_COLUMNS))} columns, over that with {CACHE_ROW}")
        chased = c["bytes"] // (2 if private else 8)  # well inside the level (a shared one's far end misses the TLB)
        warm_by_size = {} if private else {c["bytes"] // f: fig[f"{name}.size.{c['bytes'] // f}"]
                                           for f in CACHE_FRACTIONS}
        bandwidth = max(warm_by_size.values()) if warm_by_size else fig[f"{name}.bw"]
        memory[name] = {
            "capacity": f"{c['bytes'] // 1024} KiB", "bandwidth": f"{bandwidth / 1e9:.3f} GB/s",
            "latency": f"{fig[name + '.lat'] * 1e9:.1f} ns" if compiled else LATENCY_ASSUMED.get(c["level"], "20 ns"),
            "scope": "per_unit" if private else "shared", "kind": "cache",
        }
        if not private:
            memory[name]["efficiency_by_size"] = {_size_key(size): round(rate / bandwidth, 3)
                                                  for size, rate in sorted(warm_by_size.items())}
            memory[name]["efficiency_by_run"] = _run_table(
                {n: fig[f"{name}.run.{n}"] for n in CACHE_RUN_COLUMNS}, CACHE_ROW, warm_by_size[c["bytes"] // 4])
        notes[f"device.memory.{name}"] = (
            f"capacity from /sys (cpu0, {'private' if private else 'shared'}); bandwidth = {method}; latency = "
            + (f"C pointer chase over a random cycle of lines in {chased // 1024} KiB" if compiled
               else "assumed (no C compiler)") + f"; {kept}")
    by_size = {size: fig[f"cold.{size}"] for size in COLD_SIZES} | {dram_bytes: fig["dram.gemv"]}
    dram_bw = max(fig["dram.copy"], *by_size.values())  # the table's fractions all below it, none clipped
    memory["dram"] = {
        "capacity": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**20} MiB",
        "bandwidth": f"{dram_bw / 1e9:.3f} GB/s",
        "latency": f"{fig['dram.lat'] * 1e9:.1f} ns" if compiled else "90 ns",
        "scope": "shared", "kind": "dram",
        "efficiency_by_size": {_size_key(size): round(rate / dram_bw, 3)
                               for size, rate in sorted(by_size.items())},
        "efficiency_by_run": _run_table({n: fig[f"dram.run.{n}"] for n in RUN_COLUMNS}, LONG_ROW,
                                        fig[f"cold.{RUN_SIZE}"]),
    }
    notes["device.memory.dram"] = (
        f"capacity = physical memory; bandwidth = the fastest of a numpy copy over {dram_bytes >> 20} MiB "
        f"({fig['dram.copy'] / 1e9:.2f} GB/s) and the cold BLAS GEMVs of efficiency_by_size ({LONG_ROW} columns; "
        f"{fig['dram.gemv'] / 1e9:.2f} GB/s over {dram_bytes >> 20} MiB); latency = "
        + (f"C pointer chase over {dram_bytes >> 20} MiB" if compiled else "assumed (no C compiler)")
        + f"; efficiency_by_size = BLAS GEMV of an fp32 weight of that size with {LONG_ROW} columns, each call's "
        f"weight the least recently used of a pool {POOL_FACTOR}x the largest cache (cold), less the matmul "
        f"dispatch overhead, over the bandwidth; efficiency_by_run = the same on a {RUN_SIZE >> 20} MiB weight "
        f"by its row length (4 bytes x columns), over the {LONG_ROW}-column one; {kept}")
    fp32 = fig["fp32"]
    efficiency = {m: round(min(1.0, fig[f"rows.{m}"] / fp32), 3) for m in ROWS}
    cold_efficiency = {m: round(min(1.0, fig[f"cold_rows.{m}"] / fp32), 3) for m in ROWS}
    side = rows_side(caches)
    notes["device.compute.matrix_efficiency"] = (
        f"{framework} matmul M x {side} x {side} fp32 (a weight in a quarter of the last cache), rate / fp32 "
        f"peak; {kept}")
    notes["device.compute.matrix_efficiency_cold"] = (
        f"{framework} matmul M x {side} x {side} fp32, each call's weight the least recently used of a pool "
        f"{POOL_FACTOR}x the largest cache (from DRAM), rate / fp32 peak; {kept}")
    by_depth = {d: round(min(1.0, fig[f"depth.{d}"] / fig[f"depth.{MATRIX_SIZE}"]), 3) for d in DEPTHS} | {
        MATRIX_SIZE: 1.0}
    notes["device.compute.matrix_efficiency_by_depth"] = (
        f"{framework} matmul {DEPTH_SIDE} x K x {DEPTH_SIDE} fp32 by K, rate / the same at K = {MATRIX_SIZE}; {kept}")
    stride = aliasing_stride(caches)
    aliased = {m: round(min(1.0, fig[f"alias.{m}"]), 3) for m in ALIAS_ROWS}
    notes["device.compute.matrix_efficiency_aliased"] = (
        f"{framework} matmul M x {side} x N fp32 with N x 4 bytes a multiple of the aliasing stride "
        f"({stride} B: " + ("the L1's sets x its line, from sysfs" if _inner(caches).get("span")
                             else "assumed, sysfs does not say") + f"), N the first such at or above {side}, "
        f"rate / the mean of N - 256 and N + 256 columns; {kept}")
    notes["device.compute.peak"] = (
        f"{framework} matmul: fp32 {MATRIX_SIZE}^3, fp16 256^3; {kept}")
    costs, rates = _costs(fig)
    n = vector_elements(caches)
    notes["device.kernels"] = (
        f"each reference kernel in {framework} (sim/validate/{'' if framework == 'numpy' else framework + '_'}"
        f"kernels.py; matmul: 1 x 8 x 8, linear: the same with a bias): "
        f"dispatch = its call on "
        f"64 elements right after a cold GEMV over a quarter of the last cache (the framework's state evicted, as "
        f"in a pass), mean of a batch of 20, median of 3; vector = graph FLOPs / (time - time on 64 elements, "
        f"both in a loop) on {n} elements (L2-resident); "
        + f"linear's epilogue = elements / (time - time on 8 elements) of the bias add y += b on about {n} "
        f"elements, {EPILOGUE_COLUMNS} columns; {kept}")
    notes["device.compute.vector"] = f"median of the kernels' vector rates (for ops without their own); {kept}"
    notes["device.dispatch_overhead"] = f"median of the kernels' dispatch (for ops without their own); {kept}"
    mhz = _clock_mhz()
    return {
        "name": f"this machine ({platform.processor() or platform.machine()}, {cores} cores, {framework})",
        "source": f"measured by `python -m sim calibrate` on {time.strftime('%Y-%m-%d')}; see calibration",
        "devices": 1,
        "device": {
            "compute": {
                "units": cores, "clock": f"{mhz:.0f} MHz",
                "peak": {"fp32": f"{fp32 / 1e9:.2f} GFLOP/s", "fp16": f"{fig['fp16'] / 1e9:.3f} GFLOP/s"},
                "emulate": {"tf32": "fp32", "bf16": "fp32", "fp8": "fp32"},
                "vector": f"{float(np.median(list(rates.values()))) / 1e9:.3f} GFLOP/s",
                "matrix_efficiency": efficiency,
                "matrix_efficiency_cold": cold_efficiency,
                "matrix_efficiency_by_depth": by_depth,
                "aliasing_stride": f"{stride} B",
                "matrix_efficiency_aliased": aliased,
            },
            "memory": memory,
            **costs,
        },
        "calibration": notes,
    }


def _costs(fig: dict[str, float]) -> tuple[dict, dict[str, float]]:
    """The framework's per-op costs as a device's software keys: the median kernel's dispatch for ops
    without their own, synchronous (a CPU runs the op on the dispatching thread), each kernel's
    dispatch, vector rate and epilogue; and its vector rates by kernel."""
    kernels = sorted(name.split(".", 1)[1] for name in fig if name.startswith("dispatch."))
    dispatch = {name: fig[f"dispatch.{name}"] for name in kernels}
    rates = {name: fig[f"vector.{name}"] for name in kernels if f"vector.{name}" in fig}
    epilogue = {name: fig[f"epilogue.{name}"] for name in kernels if f"epilogue.{name}" in fig}
    return {
        "dispatch_overhead": f"{float(np.median(list(dispatch.values()))) * 1e6:.3f} us",
        "dispatch_mode": "sync",
        "kernels": {name: {"dispatch": f"{dispatch[name] * 1e6:.3f} us"}
                    | ({"vector": f"{rates[name] / 1e9:.3f} GFLOP/s"} if name in rates else {})
                    | ({"epilogue": f"{epilogue[name] / 1e9:.3f} GFLOP/s"} if name in epilogue else {})
                    for name in kernels},
    }, rates


def _size_key(nbytes: int) -> str:
    """A size table's key in whole units ("2 MiB"), as the YAML reference writes them (`fmt_bytes`, for
    reports, gives two decimals)."""
    return f"{nbytes >> 20} MiB" if nbytes % (1 << 20) == 0 else f"{nbytes >> 10} KiB"


def _run_table(rates: dict[int, float], long_columns: int, long_rate: float) -> dict[str, float]:
    """A level's efficiency_by_run: the rate with each column count (fp32 rows of 4 x columns bytes) over
    the rate with `long_columns`."""
    return {f"{4 * n // 1024} KiB": round(min(1.0, rate / long_rate), 3) for n, rate in sorted(rates.items())} | {
        f"{4 * long_columns // 1024} KiB": 1.0}


def _clock_mhz() -> float:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("cpu mhz"):
                return float(line.split(":")[1])
    except OSError:
        pass
    return 1000.0


#: what the runtime of the framework calibrated says (the rest describes the machine)
RUNTIME_KEYS = ("dispatch_overhead", "dispatch_mode", "kernels")


def split_runtime(data: dict, framework: str = "numpy") -> tuple[dict, dict]:
    """`calibrate`'s model as a hardware file (the machine: `platform: cpu`, its compute and memory as
    `framework`'s matmuls reach them) and a runtime file (the framework's costs on it: per-op dispatch,
    sync, each kernel's own costs)."""
    device = {k: v for k, v in data["device"].items() if k not in RUNTIME_KEYS}
    notes = data.get("calibration") or {}
    hardware = {**data, "device": {"platform": "cpu", **device},
                "calibration": {k: v for k, v in notes.items() if k.split(".")[-1] not in RUNTIME_KEYS}}
    runtime = {"name": f"{framework} on this machine",
               "source": data["source"],
               "calibration": {k: v for k, v in notes.items() if k.split(".")[-1] in RUNTIME_KEYS},
               "platforms": {"cpu": {k: data["device"][k] for k in RUNTIME_KEYS if k in data["device"]}}}
    return hardware, runtime


def write_model(data: dict, hardware_out: Path, runtime_out: Path, framework: str = "numpy") -> None:
    """Write the hardware and the runtime file `data` amounts to: both, or neither (through exclusive
    temporary files; a failure is one ConfigError)."""
    from sim.report.export import write_outputs

    head = "# Written by `python -m sim calibrate`; rerun it rather than editing by hand.\n"
    write_outputs({out: head + yaml.safe_dump(doc, sort_keys=False, width=110)
                   for out, doc in zip((hardware_out, runtime_out), split_runtime(data, framework))})
