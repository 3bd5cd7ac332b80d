"""The data flow in one place: config -> graph -> mapping -> engine -> RunResult (with its inputs).

The CLI and sweeps call `run`; reports are rebuilt from the RunResult alone.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from functools import lru_cache

from sim.config.hardware import Hardware
from sim.config.workload import Workload
from sim.engine import RunResult, simulate
from sim.graph import build_graph
from sim.mapping.parallel import map_devices


@lru_cache(maxsize=4)
def graph_of(workload: Workload):
    """The graph depends on the workload only: sweeps over hardware build it once per process."""
    return build_graph(workload)


#: Frozen objects past which a run first collects the cycles earlier runs left (see below).
FROZEN_LIMIT = 2_000_000


@contextmanager
def _no_cycle_collection():
    """A run allocates hundreds of thousands of long-lived objects (ops, plans, records) and almost
    no reference cycles; Python's cyclic collector would re-scan all of them every few thousand
    allocations (a third of a long run's time). It is paused for the run. After it, everything alive
    is frozen (`gc.freeze`) before collection resumes: otherwise the first collections after the run
    scan all of its objects once per generation, 0.3 s after GPT-2's 512-token generation. Frozen
    objects are still freed when their last reference goes; only the few cycles a run leaves (simpy's
    finished processes) wait, and they are collected once the frozen objects pass `FROZEN_LIMIT` (a
    long sweep in one process)."""
    enabled = gc.isenabled()
    gc.disable()
    if gc.get_freeze_count() > FROZEN_LIMIT:
        gc.unfreeze()
        gc.collect()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            gc.enable()


def run(workload: Workload, hw: Hardware, hw_file: str = "hardware", workload_file: str = "workload",
        exact: bool = False) -> RunResult:
    """`exact=True` turns off every reuse of identical work (planning and simulating each op of each
    device on its own): the reference the fast path is tested against."""
    with _no_cycle_collection():
        return _run(workload, hw, hw_file, workload_file, exact)


def _run(workload: Workload, hw: Hardware, hw_file: str, workload_file: str, exact: bool) -> RunResult:
    graph = graph_of(workload)
    programs, placements = map_devices(graph, workload, hw, hw_file, workload_file, collapse=not exact,
                                       memo=not exact)
    result = simulate(programs, hw, workload.name, replay=not exact)
    result.spec, result.placements, result.hw_file = workload, placements, hw_file
    return result
