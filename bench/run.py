"""Simulator speed: `python bench/run.py [--full]` prints, per case, wall time, simulated ops and events
per second and peak memory, against the targets of issue 6 (2 cores).

(a) GPT-2 generate, 128 prompt + 512 new tokens           target < 2 s
(b) Llama-2-70B TP=8 decode of 2048 tokens                 target < 60 s and < 1 GiB
    (without --full: 16 tokens, reported as measured; the target applies to --full)
(c) 1,000-point sweep of GPT-2 (prefill 128 + 32 decode)   target > 1,000 points/min
    (without --full: 40 points)
(d) Llama-2-70B over a 4-stage pipeline fed 16 micro-batches (batch 16), decode of 64 tokens
    (without --full: 16): the multi-stream engine with stages interleaving; no target yet (issue 18
    asks that the others stay as fast as before it)
(e) a GPT-3 175B training step on 1,024 GPUs (TP 8, PP 16, DP 8, 64 micro-batches of one 2048-token
    sequence, 1F1B, full recomputation; DGX A100 nodes on 25 GB/s NICs)  target < 60 s and < 2 GiB
    (without --full: DP 1, 16 micro-batches on 128 GPUs; --full runs it once, not --repeat times)

(a) and (b) each run `--repeat` times (default 3), each time in a fresh process (nothing kept from an
earlier run: a second run in one process would reuse the first one's graph and residency walk), and
report the median wall time with the range, and that process's peak memory. Wall times on a shared
VM move by tens of percent between runs; one run is one sample.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim.config import load_run  # noqa: E402
from sim.pipeline import run  # noqa: E402
from sim.report import summarize  # noqa: E402
from sim.sweep import load_sweep, run_sweep  # noqa: E402

#: GPT-3 175B as Megatron-LM trains it (TP 8 in a DGX A100 node, PP 16, 1F1B, full recomputation), on the
#: shipped A100 model with one 200 Gb/s (25 GB/s) HDR NIC per GPU (bench/training.py gives the sources)
GPT3 = [("model.layers", 96), ("model.hidden", 12288), ("model.heads", 96), ("model.ffn", 49152),
        ("model.vocab", 51200), ("model.max_positions", 2048), ("scenario.prompt_tokens", 2048),
        ("parallelism.tensor", 8), ("parallelism.pipeline", 16), ("parallelism.schedule", "1f1b"),
        ("training.recompute", "full"), ("network", {"link": {"bandwidth": "25 GB/s", "latency": "5 us"}})]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def single(path: str, overrides: list) -> tuple[int, int, float]:
    """A run and its summary, as `python -m sim run` does them (the op count is of simulated ops,
    every device counted)."""
    wl, hw, _ = load_run(ROOT / path, overrides)
    t0 = time.perf_counter()
    result = run(wl, hw)
    summary = summarize(result)
    wall = time.perf_counter() - t0
    return summary["ops"], result.events, wall


def sweep_points(points: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench-sweep.yaml"
        lo, hi = 0.5, 8.0
        spec.write_text(
            f"name: bench\nworkload: {ROOT / 'workloads/gpt2.yaml'}\n"
            "set: {scenario.prompt_tokens: 128, scenario.new_tokens: 32}\n"
            f"axes:\n  device.memory.hbm.bandwidth: {{log: ['{lo} TB/s', '{hi} TB/s'], points: {points}}}\n")
        sweep = load_sweep(spec)
        t0 = time.perf_counter()
        run_sweep(sweep, Path(tmp) / "out", workers=len(os.sched_getaffinity(0)))
        return len(sweep.points), time.perf_counter() - t0


def fresh(path: str, overrides: list) -> dict:
    """`single` in a new process: its op and event counts, wall time and peak memory."""
    out = subprocess.run([sys.executable, __file__, "--case", json.dumps([path, overrides])],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the full-size cases of the targets")
    parser.add_argument("--repeat", type=int, default=3, help="fresh-process runs of (a) and (b) (default 3)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one run of one case, for `fresh`
    args = parser.parse_args()
    if args.case:
        path, overrides = json.loads(args.case)
        ops, events, wall = single(path, [tuple(o) for o in overrides])
        print(json.dumps({"ops": ops, "events": events, "wall": wall, "rss": rss_mib()}))
        return
    full = args.full
    table = Table(title=f"memwall simulator speed ({len(os.sched_getaffinity(0))} cores; (a), (b): median of "
                        f"{args.repeat} fresh-process runs, range in brackets)")
    for col in ("case", "ops", "events", "wall s", "ops/s", "events/s", "peak RSS MiB", "target"):
        table.add_column(col, justify="left" if col in ("case", "target") else "right")

    cases = [
        ("(a) GPT-2 generate 128 + 512", "workloads/gpt2.yaml",
         [("scenario.prompt_tokens", 128), ("scenario.new_tokens", 512)], "< 2 s"),
        (f"(b) Llama-2 70B TP=8 decode {2048 if full else 16} tokens", "workloads/llama2-70b-tp8.yaml",
         [("scenario.new_tokens", 2048 if full else 16)], "< 60 s, < 1 GiB (full)"),
        (f"(d) Llama-2 70B PP=4 m=16 decode {64 if full else 16} tokens", "workloads/llama2-70b-tp8.yaml",
         [("parallelism.tensor", 1), ("parallelism.pipeline", 4), ("parallelism.microbatches", 16),
          ("scenario.batch", 16), ("scenario.new_tokens", 64 if full else 16)], "-"),
        (f"(e) GPT-3 175B train step, {1024 if full else 128} GPUs", "workloads/gpt2-train.yaml", GPT3 + [
            ("parallelism.data", 8 if full else 1), ("parallelism.microbatches", 64 if full else 16),
            ("scenario.batch", 512 if full else 16), ("nodes", 128 if full else 16)], "< 60 s, < 2 GiB (full)"),
    ]
    for label, path, overrides, target in cases:
        repeat = 1 if full and label.startswith("(e)") else max(1, args.repeat)
        runs = [fresh(path, overrides) for _ in range(repeat)]
        walls = [r["wall"] for r in runs]
        wall = statistics.median(walls)
        ops, events = runs[0]["ops"], runs[0]["events"]
        spread = f" [{min(walls):.2f}-{max(walls):.2f}]" if len(walls) > 1 else ""
        table.add_row(label, f"{ops:,}", f"{events:,}", f"{wall:.2f}{spread}", f"{ops / wall:,.0f}",
                      f"{events / wall:,.0f}", f"{max(r['rss'] for r in runs):.0f}", target)
    n, wall = sweep_points(1000 if full else 40)
    table.add_row(f"(c) sweep, {n} points of GPT-2 128 + 32", "", "", f"{wall:.2f}", "", "", f"{rss_mib():.0f}",
                  f"> 1,000 points/min (measured {60 * n / wall:,.0f})")
    Console(width=170).print(table)


if __name__ == "__main__":
    main()
