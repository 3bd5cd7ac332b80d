"""Tensor / pipeline / data parallel mapping: which device runs which op, with which peers.

Device `stage * tensor + rank` runs pipeline stage `stage` as tensor-parallel rank `rank` of the
first data-parallel replica. Replicas are identical and independent in inference, so one is simulated
and throughput counts all of them. Every rank of a stage runs the same shard ops; collectives name
their group (the stage's ranks, or the matching ranks of two stages for a pipeline send).
"""

from __future__ import annotations

from dataclasses import replace

from sim.config.hardware import Hardware
from sim.config.workload import Workload
from sim.errors import ConfigError
from sim.graph.ops import Op
from sim.graph.transformer import OpGraph
from sim.mapping.collectives import plan_collective
from sim.mapping.placement import Placement, place
from sim.mapping.plan import OpPlan, Planner


def _stage_ops(graph: OpGraph, stage: int, stages: int) -> list[Op]:
    if stages == 1:
        return graph.ops  # the whole graph (its footprint is then cached across runs)
    return [op for op in graph.ops if op.stage == stage
            or (op.collective is not None and op.collective.kind == "p2p" and op.collective.dst_stage == stage)]


def map_devices(graph: OpGraph, workload: Workload, hw: Hardware, hw_file: str = "hardware",
                workload_file: str = "workload") -> tuple[dict[int, list[OpPlan]], dict[int, Placement]]:
    par = workload.parallelism
    tp, pp = par.tensor, par.pipeline
    if par.devices > hw.devices:
        raise ConfigError(
            f"tensor x pipeline x data = {par.devices} devices, but the hardware has {hw.devices}",
            workload_file, "parallelism")
    plans: dict[int, list[OpPlan]] = {}
    placements: dict[int, Placement] = {}
    for stage in range(pp):
        ops = _stage_ops(graph, stage, pp)
        placement = place(ops, hw, hw_file)
        placements[stage] = placement
        planner = Planner(hw, placement, hw_file)
        shard = [planner.plan(op) for op in ops]
        memo: dict = {}  # every rank of a group shares one collective plan
        for rank in range(tp):
            device = stage * tp + rank
            plans[device] = [_for_device(p, device, stage, rank, tp, hw, memo) for p in shard]
    return plans, placements


def _for_device(p: OpPlan, device: int, stage: int, rank: int, tp: int, hw: Hardware, memo: dict) -> OpPlan:
    coll = p.op.collective
    if coll is None:
        return p if p.device == device else replace(p, device=device)
    if coll.kind == "p2p":
        group = (coll.src_stage * tp + rank, coll.dst_stage * tp + rank)
    else:
        group = tuple(stage * tp + r for r in range(tp))
    key = (coll, group)
    if key not in memo:
        memo[key] = plan_collective(coll, group, hw)
    return replace(p, device=device, collective=memo[key])
