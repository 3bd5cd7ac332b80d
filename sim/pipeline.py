"""The data flow in one place: config -> graph -> mapping -> engine -> RunResult (with its context).

The CLI and sweeps call `run`; reports are rebuilt from the RunResult alone.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from functools import lru_cache

from sim.config.hardware import KERNEL_FALLBACK, Hardware
from sim.config.workload import Workload
from sim.engine import RunResult, simulate
from sim.graph import build_graph
from sim.mapping.collectives import topology
from sim.mapping.parallel import map_devices
from sim.mapping.plan import matrix_peak


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
    streams, placements = map_devices(graph, workload, hw, hw_file, workload_file, collapse=not exact, memo=not exact)
    result = simulate(streams, hw, workload.name, replay=not exact)
    fullest = max(placements.values(), key=lambda p: p.footprint.total)
    result.meta = context(workload, hw, fullest, hw_file)
    return result


def context(workload: Workload, hw: Hardware, placement, hw_file: str) -> dict:
    """Plain data the reports need besides the op records: what ran, on what, and what it held."""
    sc, m = workload.scenario, workload.model
    dtype = sc.precision.activations
    dram = placement.home["weight"]  # the balance point that matters is against where weights stream from
    peak = matrix_peak(hw, dtype, hw_file)
    return {
        "workload": {
            "name": workload.name,
            "family": m.family, "layers": m.layers, "hidden": m.hidden, "heads": m.heads,
            "kv_heads": m.n_kv_heads, "ffn": m.ffn, "vocab": m.vocab,
            "phase": sc.phase, "batch": sc.batch, "prompt_tokens": sc.prompt_tokens,
            "new_tokens": sc.new_tokens, "precision": sc.precision.model_dump(),
            "weight_bytes_per_param": sc.precision.weight_bytes(),
        },
        "hardware": {
            "name": hw.name, "devices_per_node": hw.devices,
            "devices_simulated": workload.parallelism.tensor * workload.parallelism.pipeline,
            "parallelism": workload.parallelism.model_dump(),
            "topology": hw.interconnect.topology if hw.interconnect else None,
            "links": sorted(d["id"] for _, _, d in topology(hw.interconnect.topology, hw.devices).edges(data=True))
            if hw.interconnect else [],
            "peak_flops": peak, "peak_dtype": dtype, "vector_flops": hw.device.compute.vector,
            "dispatch_overhead_s": hw.device.dispatch_overhead, "launch_overhead_s": hw.device.launch_overhead,
            "dispatch_by_kernel_s": {k: own for k in sorted(set(hw.device.kernels) | set(KERNEL_FALLBACK))
                                     if (own := hw.device.own(k, "dispatch")) is not None},
            "matmul_overhead_s": hw.device.compute.matmul_overhead,
            "memory": {
                name: {"capacity_bytes": lvl.capacity, "bandwidth_bytes_per_s": lvl.bandwidth,
                       "achievable_bandwidth_bytes_per_s": lvl.effective_bandwidth,
                       "latency_s": lvl.latency, "kind": lvl.kind, "scope": lvl.scope}
                for name, lvl in hw.levels.items()
            },
            "balance_point_flop_per_byte": peak / hw.levels[dram].bandwidth,
            # what large GEMMs sustain over what long streams achieve: where the crossover really sits
            "achievable_balance_point_flop_per_byte":
                peak * hw.device.compute.efficiency(1 << 20, hw.device.compute.emulate.get(dtype, dtype))
                / hw.levels[dram].effective_bandwidth,
            "balance_level": dram,
        },
        "memory": {
            "weights_bytes": placement.footprint.weights,
            "kv_cache_bytes": placement.footprint.kv_cache,
            "activations_bytes": placement.footprint.activations,
            "optimizer_bytes": placement.footprint.optimizer,
            "home": dict(placement.home),
            "capacity_bytes": dict(placement.capacity),
            "used_bytes": dict(placement.used),
        },
    }
