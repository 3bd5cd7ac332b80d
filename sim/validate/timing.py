"""Timing a call on a machine that others share: the median of repeated batches of calls.

The median, not the best: on a shared VM the machine's speed moves within milliseconds, so the fastest
window of a run gets slower the longer the window (`python bench/timing_noise.py`: on this project's
VM the best 25 ms of a 1 ms GEMM ran 1.12x its fastest call, the best 250 ms 1.19x, the best second
1.26x, while the median of every window length was within 1.5%). The best of a 25 ms microbenchmark
batch and the best of a 250 ms forward pass are therefore not the same machine; their medians are.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def typical_time(fn: Callable[[], object], min_time: float = 0.1, repeats: int = 7) -> float:
    """Median per-call time over `repeats` batches of calls lasting at least `min_time` / 4 each."""
    fn()
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - t0 >= min_time / 4 or calls > 1 << 20:
            break
        calls *= 4
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - t0) / calls)
    return statistics.median(per_call)
