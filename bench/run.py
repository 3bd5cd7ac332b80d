"""Simulator speed: `python bench/run.py` prints wall time, simulated ops/s and events/s per case.

Performance targets live here, not in unit tests.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim.config import load_hardware, load_workload  # noqa: E402
from sim.pipeline import run  # noqa: E402

CASES = [
    ("GPT-2 generate 512 + 64 (headline)", "workloads/gpt2.yaml", []),
    ("GPT-2 generate 128 + 512", "workloads/gpt2.yaml",
     [("scenario.prompt_tokens", 128), ("scenario.new_tokens", 512)]),
    ("Llama-2 7B generate 1024 + 32", "workloads/llama2-7b.yaml", []),
    ("BERT-Large encode 8 x 512", "workloads/bert-large.yaml", []),
]


def main() -> None:
    table = Table(title="memwall simulator speed")
    for col in ("case", "ops", "events", "wall s", "ops/s", "events/s", "peak RSS MiB"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for label, path, overrides in CASES:
        wl, hw_path = load_workload(ROOT / path, overrides)
        hw = load_hardware(hw_path)
        t0 = time.perf_counter()
        result = run(wl, hw)
        wall = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        n = len(result.ops)
        table.add_row(label, str(n), str(result.events), f"{wall:.2f}", f"{n / wall:,.0f}",
                      f"{result.events / wall:,.0f}", f"{rss:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
