"""Two microbenchmarks numpy cannot do, compiled at calibration time with the system C compiler.

- `read_bandwidth(nbytes, threads)`: bytes per second that `threads` cores together read from private
  arrays of `nbytes` each. A numpy call costs microseconds, longer than reading a whole L1 or L2, and
  every numpy reduction also writes, so the private caches' read bandwidth needs a plain loop
  (eight independent vector accumulators, so the adds never limit the loads).
- `load_latency(nbytes)`: seconds per dependent load chasing a random cycle of cache lines through an
  array of `nbytes`: the latency of whichever level holds it.

`available()` is False where no compiler works; calibration then falls back to numpy and says so.
ctypes releases the GIL during a call, so threads run on separate cores.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from sim.validate.timing import typical_time

SOURCE = r"""
typedef float v8 __attribute__((vector_size(32), aligned(4)));
float read_sum(const float *a, long n, long reps) {
    v8 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0}, s7 = {0};
    for (long r = 0; r < reps; r++) {
        __asm__ volatile("" : : "r"(a) : "memory");  /* re-read every pass */
        for (long i = 0; i + 64 <= n; i += 64) {
            const v8 *p = (const v8 *)(a + i);
            s0 += p[0]; s1 += p[1]; s2 += p[2]; s3 += p[3]; s4 += p[4]; s5 += p[5]; s6 += p[6]; s7 += p[7];
        }
    }
    v8 s = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
    float t = 0;
    for (int j = 0; j < 8; j++) t += s[j];
    return t;
}
long chase(const long *next, long steps) {
    long p = 0;
    for (long i = 0; i < steps; i++) p = next[p];
    return p;
}
"""

LINE = 64  # bytes per cache line


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="memwall-calibrate-"))
    try:  # the library stays mapped once loaded: its build folder goes whatever happens
        src, lib = folder / "bench.c", folder / "bench.so"
        src.write_text(SOURCE)
        for flags in (["-O2", "-march=native"], ["-O2"]):
            done = subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", str(lib), str(src)], capture_output=True)
            if done.returncode == 0:
                break
        else:
            return None
        try:
            dll = ctypes.CDLL(str(lib))
        except OSError:
            return None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    dll.read_sum.restype, dll.read_sum.argtypes = ctypes.c_float, [ctypes.c_void_p, ctypes.c_long, ctypes.c_long]
    dll.chase.restype, dll.chase.argtypes = ctypes.c_long, [ctypes.c_void_p, ctypes.c_long]
    return dll


def available() -> bool:
    return _library() is not None


def read_bandwidth(nbytes: int, threads: int = 1, seconds: float = 0.05, repeats: int = 5) -> float:
    lib = _library()
    n = max(64, nbytes // 4 // 64 * 64)
    arrays = [np.ones(n, np.float32) for _ in range(threads)]
    reps = max(1, int(seconds * 50e9 / (n * 4)))  # ~`seconds` at 50 GB/s per core
    pool = ThreadPoolExecutor(threads)

    def all_read():
        list(pool.map(lambda a: lib.read_sum(a.ctypes.data, n, reps), arrays))

    try:
        return threads * reps * n * 4 / typical_time(all_read, min_time=0, repeats=repeats)
    finally:
        pool.shutdown()


@cache
def _cycle(nbytes: int) -> np.ndarray:
    """A random cycle through the cache lines of `nbytes`, made once per size: a round that allocated
    and faulted in hundreds of MiB afresh slowed what was measured next (a cold 512 MiB GEMV right after
    the DRAM copies, which allocated theirs each time, read 29.6 GB/s against 34.8 alone, medians of six
    rounds on this project's VM)."""
    lines = max(2, nbytes // LINE)
    stride = LINE // 8  # int64 slots per line
    order = np.random.default_rng(0).permutation(lines)
    nxt = np.zeros(lines * stride, np.int64)
    nxt[order * stride] = np.roll(order, -1) * stride
    return nxt


def load_latency(nbytes: int, steps: int = 2_000_000, repeats: int = 3) -> float:
    lib, nxt = _library(), _cycle(nbytes)
    return typical_time(lambda: lib.chase(nxt.ctypes.data, steps), min_time=0, repeats=repeats) / steps
