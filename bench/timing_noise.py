"""How this machine's speed varies with the length of what is timed: `python bench/timing_noise.py`.

One small GEMM (256 x 512 @ 512 x 512 fp32, ~1 ms) is called back to back for `--seconds`; the table
gives, per window length, the fastest and the median mean call time over all windows of that length,
as multiples of the fastest single call. On a machine others share, the fastest window gets slower as
windows get longer (a long run cannot fit inside one calm moment), while the median does not move.
That is why `validate` and `calibrate` keep the median of their rounds, not the best: a 250 ms forward
pass and a 25 ms microbenchmark batch would otherwise be compared at different points of the spread.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

WINDOWS_MS = (1, 5, 25, 50, 100, 250, 500, 1000)


def call_times(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 512), dtype=np.float32)
    w = rng.standard_normal((512, 512), dtype=np.float32)
    x @ w
    out, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        x @ w
        out.append(time.perf_counter() - t0)
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to call the GEMM")
    args = parser.parse_args()
    times = call_times(args.seconds)
    fastest, typical = times.min(), float(np.median(times))
    table = Table(title=f"{len(times)} calls in {args.seconds:g} s: fastest {fastest * 1e6:.0f} us, "
                        f"median {typical * 1e6:.0f} us")
    for column in ("window", "calls", "fastest window (x fastest call)", "median window (x fastest call)"):
        table.add_column(column, justify="right")
    for window_ms in WINDOWS_MS:
        n = max(1, round(window_ms * 1e-3 / typical))
        if n > len(times):
            break
        means = np.convolve(times, np.ones(n), "valid") / n
        table.add_row(f"{window_ms} ms", str(n), f"{means.min() / fastest:.3f}",
                      f"{np.median(means) / fastest:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
