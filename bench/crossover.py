"""Decode batch crossover: `python bench/crossover.py` sweeps the batch of a Llama-2 7B decode step
and prints, per hardware, where the decode GEMVs turn from memory-bound to compute-bound.

A decode-step projection at batch B performs 2*B*N*K FLOPs on N*K weights (2 bytes each in fp16):
B FLOP per byte. It becomes compute-bound near the hardware's balance point (peak / bandwidth); the
simulation shows where, including tile/wave quantisation and achievable bandwidth.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim.config import load_hardware, load_run  # noqa: E402
from sim.config.units import fmt_bytes, fmt_si, fmt_time  # noqa: E402
from sim.pipeline import run  # noqa: E402
from sim.report import summarize  # noqa: E402

HARDWARE = ["a100-sxm4-80gb", "h100-sxm"]
BATCHES = [1, 8, 32, 64, 128, 192, 256, 384, 512]


def sweep(hw_name: str) -> tuple[Table, int | None]:
    hw_path = ROOT / "hardware_models" / f"{hw_name}.yaml"
    table = Table(title=f"Llama-2 7B fp16 decode step, prompt 128, on {load_hardware(hw_path).name}")
    for col in ("batch", "GEMV FLOP/B", "GEMV bound", "GEMV busy", "GEMV TFLOP/s", "time/token", "tokens/s",
                "KV cache"):
        table.add_column(col, justify="right")
    crossover = None
    for batch in BATCHES:
        wl, hw, _ = load_run(ROOT / "workloads/llama2-7b.yaml", [
            ("scenario.phase", "decode"), ("scenario.batch", batch), ("scenario.prompt_tokens", 128),
            ("scenario.new_tokens", 1)], hw_path)
        result = run(wl, hw)
        s = summarize(result)
        gemv = s["classes"]["GEMV"]
        bound = gemv["bound"].replace("memory:", "")
        if crossover is None and bound == "compute":
            crossover = batch
        table.add_row(str(batch), f"{gemv['intensity_flop_per_byte']:.0f}", bound,
                      f"{100 * gemv['time_share'].get('compute', 0):.0f}%",
                      fmt_si(gemv["achieved_flops_per_s"], "FLOP/s"), fmt_time(s["tpot_s"]),
                      f"{s['tokens_per_s']:,.0f}", fmt_bytes(s["memory"]["kv_cache_bytes"]))
    return table, crossover


def main() -> None:
    console = Console(width=140)
    for name in HARDWARE:
        table, crossover = sweep(name)
        console.print(table)
        hw = load_hardware(ROOT / "hardware_models" / f"{name}.yaml")
        balance = hw.device.compute.peak["fp16"] / hw.device.memory["hbm"].effective_bandwidth
        console.print(f"  balance point {balance:.0f} FLOP/B (fp16 peak / achievable HBM bandwidth); "
                      f"GEMVs first compute-bound at batch {crossover}\n")


if __name__ == "__main__":
    main()
