"""Tensor / pipeline / data parallel mapping: which device runs which op, with which peers.

Device `stage * tensor + rank` runs pipeline stage `stage` as tensor-parallel rank `rank` of the
first data-parallel replica. Replicas are identical and independent in inference, so one is simulated
and throughput counts all of them. Every rank of a stage runs the same shard ops; collectives name
their group (the stage's ranks, or the matching ranks of two stages for a pipeline send).

The result is a list of `Program`s for the engine: one per stage, standing for all its ranks (they run
identical plans; see the engine), or with `collapse=False` one per device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sim.config.hardware import Hardware
from sim.config.workload import Workload
from sim.errors import ConfigError
from sim.graph.ops import Block, Collective
from sim.graph.schedule import stage_order
from sim.graph.transformer import OpGraph
from sim.mapping.collectives import CollectivePlan, plan_collective
from sim.mapping.placement import Placement, place
from sim.mapping.plan import OpPlan, Planner
from sim.mapping.prefetch import gather_buffer, insert_copies, staged, wanted


@dataclass(frozen=True)
class Program:
    """What a device runs: its blocks with their plans in program order (the order the host dispatches
    them), run on `devices` (several: identical ranks, one simulation for all). The engine runs each op
    on its plan's stream. `collectives` gives each collective op of the program its transfers."""

    stage: int
    devices: tuple[int, ...]
    blocks: list[tuple[Block, tuple[OpPlan, ...]]]
    collectives: dict[Collective, CollectivePlan]


def stage_blocks(graph: OpGraph, stage: int, stages: int, rank=None) -> list[Block]:
    """The blocks of one pipeline stage, each cut to the ops that stage runs (sends into it included).
    Blocks that share ops keep sharing them after the cut. `rank(block)`, where given, orders them first
    (a training schedule's order of forward and backward passes), the graph's order within."""
    if stages == 1:
        return graph.blocks  # the whole graph (its footprint is then cached across runs)
    cut: dict[int, tuple] = {}
    placed: list[tuple[float, Block]] = []
    latest: dict[int, int] = {}  # micro-batch -> position of the stage's latest block of it
    for i, blk in enumerate(graph.blocks):
        known = cut.get(id(blk.ops))
        if known is None:
            mine = tuple(op for op in blk.ops if op.stage == stage or (
                op.collective is not None and op.collective.kind == "p2p" and op.collective.dst_stage == stage))
            sends_only = bool(mine) and all(
                op.collective is not None and op.collective.kind == "p2p" and op.stage == stage for op in mine)
            known = cut[id(blk.ops)] = (blk.ops, mine, sends_only)
        if known[1]:
            # a stage sends as soon as it has produced what it sends: right after its latest block of the
            # same micro-batch (the sampled token: the head of that micro-batch's last pass, not the head
            # of the pass that precedes the next one in the graph)
            at = latest[blk.micro] + 0.5 if known[2] and blk.micro in latest else float(i)
            placed.append(((rank(blk), at) if rank is not None else at, dataclasses.replace(blk, ops=known[1])))
            latest[blk.micro] = i
    placed.sort(key=lambda x: x[0])
    return [b for _, b in placed]


def map_devices(graph: OpGraph, workload: Workload, hw: Hardware, hw_file: str = "hardware",
                workload_file: str = "workload", collapse: bool = True,
                memo: bool = True) -> tuple[list[Program], dict[int, Placement]]:
    par = workload.parallelism
    tp, pp = par.tensor, par.pipeline
    if par.devices > hw.total_devices:
        raise ConfigError(
            f"tensor x pipeline x data = {par.devices} devices, but the hardware has {hw.total_devices}",
            workload_file, "parallelism")
    streams: list[Program] = []
    placements: dict[int, Placement] = {}
    for stage in range(pp):
        blocks = stage_blocks(graph, stage, pp, _schedule(workload, stage))
        placement = place(blocks, hw, hw_file)
        prefetch = wanted(placement, workload.scenario.offload_prefetch)
        planning = placement
        if prefetch:  # weights in host memory, copied ahead into a staging buffer and read from there
            planning, placement = staged(placement, blocks, hw_file)
        if workload.scenario.phase == "train" and workload.train.zero == 3 and par.data > 1:
            placement = gather_buffer(placement, blocks, hw_file)  # FSDP's gathered weights, read from there
            planning = dataclasses.replace(placement, home={**placement.home, "weight": next(iter(placement.staged))})
        placements[stage] = placement
        planner = Planner(hw, planning, hw_file, memo=memo)
        planned = planner.plan_blocks(blocks)
        if prefetch:
            planned = insert_copies(planned, planning, hw)
        colls = {op.collective for blk in blocks for op in blk.ops if op.collective is not None}
        # alike ranks share a stream unless pipeline sends pair them off (rank r to rank r of the next
        # stage): those transfers may end at different times on different routes
        # inference simulates one data-parallel replica (they are independent); training all of them, which
        # meet in their gradients' collectives. Alike replicas share the program of their rank, and alike
        # ranks one program unless each rank has data-parallel collectives of its own (on other links)
        replicas = par.data if workload.scenario.phase == "train" else 1
        ranks = [tuple(range(tp))] if collapse and pp == 1 and replicas == 1 else [(r,) for r in range(tp)]
        per = tp * pp
        for rs in ranks:
            # one program for all replicas only where its collectives are all theirs (data parallel alone):
            # with tensor parallelism too, a replica's ranks meet other links than another replica's
            together = collapse and tp == 1
            groups = [tuple(range(replicas))] if together else [(d,) for d in range(replicas)]
            for ds in groups:
                plans = {c: _collective(c, stage, rs, tp, hw, placement.home["activation"], replicas, per,
                                        0 if together else ds[0] * per)
                         for c in colls}
                devices = tuple(d * per + stage * tp + r for d in ds for r in rs)
                streams.append(Program(stage, devices, planned, plans))
    return streams, placements


def _collective(coll: Collective, stage: int, ranks: tuple[int, ...], tp: int, hw: Hardware,
                level: str, replicas: int = 1, per: int = 1, base: int = 0) -> CollectivePlan:
    """A stage's collective over its tensor-parallel group or over the data-parallel replicas of its
    (first) rank, or a pipeline send of rank r to rank r of the next stage, in the replica whose first
    device is `base`; its buffers live where activations do."""
    if coll.group == "data":
        return plan_collective(coll, tuple(d * per + stage * tp + ranks[0] for d in range(replicas)), hw, level)
    if coll.kind != "p2p":
        return plan_collective(coll, tuple(base + stage * tp + r for r in range(tp)), hw, level)
    (rank,) = ranks
    return plan_collective(coll, (base + coll.src_stage * tp + rank, base + coll.dst_stage * tp + rank), hw, level)


def _schedule(workload: Workload, stage: int):
    """A training step's order of its micro-batches' forward and backward passes on `stage` (its schedule,
    GPipe or 1F1B), the update last; None for inference (the graph's order)."""
    par = workload.parallelism
    if workload.scenario.phase != "train" or par.pipeline == 1:
        return None
    order = {step: i for i, step in enumerate(stage_order(stage, par.pipeline, par.microbatches, par.schedule))}
    last = len(order)

    def rank(blk: Block) -> int:
        if blk.phase == "optimizer":
            return last
        return order[(blk.micro, "F" if blk.phase == "forward" else "B")]
    return rank
