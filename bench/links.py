"""Link sensitivity of Llama-2 70B fp16 decode with TP=8: `python bench/links.py` varies NVLink
bandwidth and latency on the A100 node and prints time per token and the share of device time spent
in collectives (waiting on links)."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim.config import load_run  # noqa: E402
from sim.config.units import fmt_time  # noqa: E402
from sim.pipeline import run  # noqa: E402
from sim.report import summarize  # noqa: E402

CASES = [
    ("300 GB/s, 1 us (A100 NVLink3)", "300 GB/s", "1 us"),
    ("150 GB/s, 1 us", "150 GB/s", "1 us"),
    ("600 GB/s, 1 us", "600 GB/s", "1 us"),
    ("300 GB/s, 0.25 us", "300 GB/s", "0.25 us"),
    ("300 GB/s, 4 us", "300 GB/s", "4 us"),
    ("32 GB/s, 5 us (PCIe-class)", "32 GB/s", "5 us"),
]


def main() -> None:
    path = ROOT / "workloads/llama2-70b-tp8.yaml"
    table = Table(title="Llama-2 70B fp16, TP=8 on 8x A100 (switch), decode after 2048 tokens, batch 1")
    for col in ("link (per direction, latency)", "time/token", "tokens/s", "collective share", "link stall"):
        table.add_column(col, justify="right")
    for label, bandwidth, latency in CASES:
        overrides = [("interconnect.link.bandwidth", bandwidth), ("interconnect.link.latency", latency)]
        wl, hw, _ = load_run(path, [("scenario.new_tokens", 2), *overrides])
        s = summarize(run(wl, hw))
        coll = s["classes"]["collective"]
        link = sum(v for k, v in coll["time_share"].items() if k.startswith("link:")) * coll["share_of_total"]
        table.add_row(label, fmt_time(s["tpot_s"]), f"{s['tokens_per_s']:.1f}", f"{100 * coll['share_of_total']:.1f}%",
                      f"{100 * link:.1f}%")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
