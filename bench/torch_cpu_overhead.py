"""Measure what PyTorch's software adds per op on this CPU: the figures of `runtimes/eager-pytorch.yaml`'s
and `runtimes/compiled.yaml`'s `cpu` sections.

    python bench/torch_cpu_overhead.py

Needs PyTorch (not part of memwall's install or tests). One thread, tiny operands (1 x 64), so that the
arithmetic is negligible and what is timed is the framework: each figure is the median of 7 repeats of
thousands of calls, after warm-up. A chain of n (matmul, GELU) pairs is timed as model code runs it (a
Python loop) eagerly and through torch.compile (inductor, C++ kernels); per op = the slope between n = 1
and n = 32 over 2 ops per pair; compiled per call = the chain of 1 less its pair (guards and wrapper).
"""

from __future__ import annotations

import statistics
import time


def per_call(fn, x, calls: int = 3000) -> float:
    for _ in range(calls // 10):
        fn(x)
    reps = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(calls):
            fn(x)
        reps.append((time.perf_counter() - start) / calls)
    return statistics.median(reps)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    x = torch.randn(1, 64)
    weights = [torch.randn(64, 64) for _ in range(32)]
    norm = torch.nn.LayerNorm(64)

    def chain(n: int):
        def f(x):
            for w in weights[:n]:
                x = torch.nn.functional.gelu(x @ w)
            return x
        return f

    rows = []
    with torch.no_grad():
        for name, fn in {"add": lambda x: x + x, "gelu": torch.nn.functional.gelu,
                         "softmax": lambda x: torch.softmax(x, -1), "layernorm": norm,
                         "linear": lambda x: x @ weights[0]}.items():
            rows.append((f"eager {name}, one call", per_call(fn, x)))
        eager = {n: per_call(chain(n), x) for n in (1, 32)}
        compiled = {}
        for n in (1, 32):
            fn = torch.compile(chain(n))
            fn(x)
            compiled[n] = per_call(fn, x)
    rows.append(("eager, per op in a Python loop", (eager[32] - eager[1]) / 62))
    pair = (compiled[32] - compiled[1]) / 31
    rows.append(("torch.compile, per kernel", pair / 2))
    rows.append(("torch.compile, per call (guards, wrapper)", compiled[1] - pair))
    print(f"PyTorch {torch.__version__}, 1 thread")
    print(f"{'what':44s} {'us':>8s}")
    for what, seconds in rows:
        print(f"{what:44s} {seconds * 1e6:8.2f}")


if __name__ == "__main__":
    main()
