"""Timing a call on a machine that others share: the best of repeated batches of calls."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], min_time: float = 0.1, repeats: int = 7) -> float:
    """Best per-call time over `repeats` batches of calls lasting at least `min_time` each."""
    fn()
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - t0 >= min_time / 4 or calls > 1 << 20:
            break
        calls *= 4
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best
