"""What ran on what, as plain data for the reports and `--json`'s `context`: the workload's shape and
scenario, the hardware's peaks, overheads and memory levels, and the footprint and placement, all
taken from the validated inputs a `RunResult` carries."""

from __future__ import annotations

from sim.config.hardware import KERNEL_FALLBACK
from sim.engine.records import RunResult
from sim.mapping.collectives import cluster
from sim.mapping.placement import reserved_level
from sim.mapping.plan import matrix_peak


def context(result: RunResult) -> dict:
    """Plain data the reports need besides the op records (empty for hand-made ops run outside a
    workload)."""
    workload, hw, placement, hw_file = result.spec, result.hw, result.placement, result.hw_file
    if workload is None or placement is None:
        return {}
    sc, m = workload.scenario, workload.model
    level = reserved_level(hw)
    reserved = {level: hw.device.memory_reserved} if level and hw.device.memory_reserved else {}
    dtype = sc.precision.activations
    dram = placement.home["weight"]  # the balance point that matters is against where weights stream from
    peak = matrix_peak(hw, dtype, hw_file)
    return {
        "overrides": list(result.overrides),
        "workload": {
            "name": workload.name,
            "family": m.family, "layers": m.layers, "hidden": m.hidden, "heads": m.heads,
            "kv_heads": m.n_kv_heads, "ffn": m.ffn, "vocab": m.vocab,
            "phase": sc.phase, "batch": sc.batch, "prompt_tokens": sc.prompt_tokens,
            "new_tokens": sc.new_tokens, "precision": sc.precision.model_dump(),
            "weight_bytes_per_param": sc.precision.weight_bytes(),
            "training": workload.train.model_dump() if sc.phase == "train" else None,
        },
        "hardware": {
            "name": hw.name, "runtime": hw.runtime or None, "platform": hw.device.platform,
            "fuse": dict(sorted(hw.device.fuse.items())) or None,
            "threads": hw.device.threads,  # the runtime's threads (the units its ops run on); None: all
            "devices_per_node": hw.devices, "nodes": hw.nodes,
            # inference simulates one data-parallel replica (they are independent), training every replica
            "devices_simulated": workload.parallelism.tensor * workload.parallelism.pipeline * (
                workload.parallelism.data if sc.phase == "train" else 1),
            "parallelism": workload.parallelism.model_dump(),
            "topology": hw.interconnect.topology if hw.interconnect else None,
            "links": links(hw, workload.parallelism.devices),
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
            "gradients_bytes": placement.footprint.gradients,
            "home": dict(placement.home),
            # weights / KV caches served from a faster level than their home, tensor by tensor
            "partial_bytes": {kind: dict(levels) for kind, levels in placement.partial.items()},
            # the whole level, and what is in it: the runtime's reserved memory counted in both
            "capacity_bytes": {n: c + reserved.get(n, 0.0) for n, c in placement.capacity.items()},
            "used_bytes": {n: u + reserved.get(n, 0.0) for n, u in placement.used.items()},
            "reserved_bytes": reserved,
        },
    }


def links(hw, devices: int) -> list[str]:
    """Every physical link of the nodes the run's devices occupy (a cluster's other nodes do not appear)."""
    if hw.interconnect is None:
        return []
    nodes = -(-devices // hw.devices)
    return sorted(d["id"] for _, _, d in cluster(hw.interconnect.topology, hw.devices, nodes).edges(data=True))
