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


def block_tiled(shape: tuple[int, int, int, int], flops: float, tiles: list[tuple[int, int]], k_step: int,
                units: int, rate: float, a_bytes: float, b_bytes: float, feed_bandwidth: float,
                ) -> tuple[float, float, tuple[int, int]]:
    """A GEMM library's kernel choice: (time, useful fraction of the peak, tile).

    Each unit computes one bm x bn output tile at a time (K padded to `k_step`), so the tiles run in
    whole waves over the units (wave quantisation; partial tiles do full work: tile quantisation).
    A tile's operands come from the shared level outside the units, the M x K one once per column of
    tiles and the K x N one once per row: small tiles fill the waves better but need more of that
    level's bandwidth per FLOP (`feed_bandwidth`; 0: not a limit). The library takes the tile that
    finishes first, at the larger tile on a tie; `rate` is the matrix peak times its efficiency."""
    batch, m, n, k = shape
    k_padded = ceil(k / k_step) * k_step
    best: tuple | None = None
    for bm, bn in tiles:
        waves = ceil(batch * ceil(m / bm) * ceil(n / bn) / units)
        util = batch * m * n * k / (waves * units * bm * bn * k_padded)
        time = flops / (rate * util)
        if feed_bandwidth:
            fed = batch * (m * k * a_bytes * ceil(n / bn) + k * n * b_bytes * ceil(m / bm))
            time = max(time, fed / feed_bandwidth)
        key = (time, -bm * bn)
        if best is None or key < best[0]:
            best = (key, util, (bm, bn))
    assert best is not None
    return best[0][0], best[1], best[2]
