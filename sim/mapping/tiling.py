"""Tiling: how many times a matmul's operands cross the boundary of a memory level of given capacity.

An output-stationary tiling keeps a Tm x Tn block of the result (fp32 accumulators) and double-buffered
slices of both operands inside the level; the M x K operand is then read ceil(N / Tn) times and the
K x N operand ceil(M / Tm) times, the result written once. We search tile shapes (powers of two and the
full extents) for the least traffic. A GEMV (M = 1 or batch rows) re-reads nothing of its weights:
its weight matrix streams once, which is why decode has no reuse to exploit.
"""

from __future__ import annotations

from functools import lru_cache
from math import ceil

ACCUMULATOR_BYTES = 4
K_SLICE = 32  # depth of the operand slices staged per step; it only affects what fits


def _candidates(extent: int) -> list[int]:
    out, t = [], 1
    while t < extent:
        out.append(t)
        t *= 2
    return [*out, extent]


@lru_cache(maxsize=65536)
def reuse_factors(m: int, n: int, k: int, a_bytes: float, b_bytes: float, capacity: float,
                  registers: float | None = None) -> tuple[int, int]:
    """(times the M x K operand is read, times the K x N operand is read) through a level of `capacity`.
    With `registers`, the accumulators live there (GPU register files) instead of in the level."""
    acc_in_level = ACCUMULATOR_BYTES if registers is None else 0
    if m * k * a_bytes + k * n * b_bytes + m * n * acc_in_level <= capacity and (
            registers is None or m * n * ACCUMULATOR_BYTES <= registers):
        return 1, 1  # the whole problem fits: compulsory traffic only
    tk = min(k, K_SLICE)
    best: tuple[float, int, int, int] | None = None
    for tm in _candidates(m):
        for tn in _candidates(n):
            if 2 * (tm * tk * a_bytes + tk * tn * b_bytes) + tm * tn * acc_in_level > capacity:
                continue
            if registers is not None and tm * tn * ACCUMULATOR_BYTES > registers:
                continue
            fa, fb = ceil(n / tn), ceil(m / tm)
            traffic = m * k * a_bytes * fa + k * n * b_bytes * fb
            key = (traffic, -tm * tn, fa, fb)
            if best is None or key < best:
                best = key
    if best is None:  # not even a 1 x 1 tile fits: every use re-reads
        return n, m
    return best[2], best[3]
