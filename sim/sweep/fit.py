"""What fits: the largest batch (or number of layers) a training step keeps in device memory under each
memory-saving strategy — the memory-wall study's Figure 4 question, on any hardware.

Fitting needs no simulation: the graph's footprint and the placement decide it (every tensor kind in a
device memory level; none spilled to host memory). Each answer is then simulated once for its step
time. Candidates are searched by doubling, then bisection, so a search costs ~2 log2(answer) graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sim.config import load_run, load_workload, split_overrides
from sim.config.hardware import HOST_LEVEL, Hardware
from sim.config.workload import Workload
from sim.errors import ConfigError
from sim.graph import build_graph
from sim.mapping.parallel import stage_blocks
from sim.mapping.placement import Placement, place
from sim.mapping.prefetch import gather_buffer

#: strategy -> training overrides
STRATEGIES: dict[str, list[tuple[str, object]]] = {
    "none": [("training.recompute", "none"), ("training.zero", 0)],
    "selective recompute": [("training.recompute", "selective"), ("training.zero", 0)],
    "full recompute": [("training.recompute", "full"), ("training.zero", 0)],
    "ZeRO-1": [("training.recompute", "none"), ("training.zero", 1)],
    "ZeRO-2": [("training.recompute", "none"), ("training.zero", 2)],
    "ZeRO-2 + full recompute": [("training.recompute", "full"), ("training.zero", 2)],
    "ZeRO-3": [("training.recompute", "none"), ("training.zero", 3)],
    "ZeRO-3 + full recompute": [("training.recompute", "full"), ("training.zero", 3)],
}
LIMIT = 1 << 16  # the largest candidate tried


@dataclass
class Fit:
    strategy: str
    value: int  # the largest batch (or layers) that fits; 0: not even the smallest
    placement: Placement | None
    step_s: float | None
    workload: Workload | None


def placement_of(wl: Workload, hw: Hardware, hw_file: str) -> Placement | None:
    """The fullest stage's placement, or None where something does not fit in device memory."""
    graph = build_graph(wl)
    zero3 = wl.train.zero == 3 and wl.parallelism.data > 1
    try:
        placements = []
        for s in range(wl.parallelism.pipeline):
            blocks = stage_blocks(graph, s, wl.parallelism.pipeline)
            p = place(blocks, hw, hw_file)
            placements.append(gather_buffer(p, blocks, hw_file) if zero3 else p)
    except ConfigError:
        return None
    fullest = max(placements, key=lambda p: p.footprint.total)
    return None if HOST_LEVEL in fullest.home.values() else fullest


def largest(fits: Callable[[int], bool], start: int) -> int:
    """The largest n >= start with fits(n) (fits is monotone), or start - 1 if none."""
    if not fits(start):
        return start - 1
    lo, hi = start, start * 2
    while hi <= LIMIT and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, LIMIT + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def fit(workload_path: Path, hardware: Path | None, overrides: list, by: str = "batch",
        runtime: Path | None = None) -> list[Fit]:
    """`overrides` as `sim run` takes them (workload, hardware and `runtime.` keys)."""
    from sim.pipeline import run
    from sim.report import summarize

    base, hw, hw_path = load_run(workload_path, overrides, hardware, runtime)
    if base.scenario.phase != "train":
        raise ConfigError("fit answers for training steps; use scenario.phase: train", str(workload_path),
                          "scenario.phase")
    overrides = split_overrides(overrides)[0]  # the workload's, for each size tried
    step = base.parallelism.data * base.parallelism.microbatches
    out = []
    for strategy, sets in STRATEGIES.items():
        if "ZeRO" in strategy and base.parallelism.data == 1:
            continue

        def make(n: int, sets=sets) -> Workload:
            key = ("scenario.batch", n * step) if by == "batch" else ("model.layers", n)
            return load_workload(workload_path, [*overrides, *sets, key])[0]

        def fits(n: int, make=make) -> bool:
            try:
                wl = make(n)
            except ConfigError:
                return False
            return placement_of(wl, hw, str(hw_path)) is not None

        make(1)  # a setting that is wrong at any size is an error, not "does not fit"
        n = largest(fits, 1)
        if n < 1:
            out.append(Fit(strategy, 0, None, None, None))
            continue
        wl = make(n)
        result = run(wl, hw, str(hw_path), str(workload_path))
        out.append(Fit(strategy, n * (step if by == "batch" else 1), result.placement,
                       summarize(result, top=0)["step_s"], wl))
    return out
