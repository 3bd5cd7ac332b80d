"""Tensor / pipeline / data parallel mapping: which device runs which op, with which peers.

Device `replica * tensor * pipeline + stage * tensor + rank` runs pipeline stage `stage` as
tensor-parallel rank `rank` of data-parallel replica `replica`. Inference replicas are identical and
independent, so one is simulated and throughput counts all of them; a training step simulates every
replica (they meet in their gradients' collectives). Every rank of a stage runs the same shard ops;
collectives name their group (the stage's ranks, the matching ranks of the replicas, or the matching
ranks of two stages for a pipeline send).

The result is a list of `Program`s for the engine. One program stands for several devices where that is
proved exact (sim/mapping/symmetry.py: a shift of rank or replica maps the whole run onto itself, and
the devices' collectives run as one without sharing a link): a GPT-3 step on 1,024 GPUs is 16 programs,
one per stage. Otherwise, and with `collapse=False`, each device runs its own.
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
from sim.mapping.fusion import fuse_graph
from sim.mapping.placement import Placement, place
from sim.mapping.plan import OpPlan, Planner
from sim.mapping.prefetch import gather_buffer, insert_copies, staged, wanted
from sim.mapping.symmetry import Relabelling, invariant, union


@dataclass(frozen=True)
class Program:
    """What a device runs: its blocks with their plans in program order (the order the host dispatches
    them), run on `devices` (several: devices proved alike, one simulation for all; the first is the one
    simulated). The engine runs each op on its plan's stream. `collectives` gives each collective op of
    the program its transfers (for several devices, the union of theirs)."""

    stage: int
    devices: tuple[int, ...]
    blocks: list[tuple[Block, tuple[OpPlan, ...]]]
    collectives: dict[Collective, CollectivePlan]
    #: devices proved alike: per device, the link each of the first device's links is to it (what it sent
    #: over its links is the first device's, renamed); None where each device's figures are recorded
    links: tuple[dict[str, str], ...] | None = None


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
    graph = fuse_graph(graph, hw.device.fuse)  # the runtime's fused kernels, before anything is placed
    placements: dict[int, Placement] = {}
    stages: list[tuple[list, list[Collective], str]] = []  # per stage: planned blocks, collectives, buffers
    zero3 = workload.scenario.phase == "train" and workload.train.zero == 3 and par.data > 1
    for stage in range(pp):
        blocks = stage_blocks(graph, stage, pp, _schedule(workload, stage))
        # weights filled in from host memory leave room for the buffer a prefetch or ZeRO-3 copies into
        placement = place(blocks, hw, hw_file, workload.scenario.offload_prefetch, zero3)
        prefetch = wanted(placement, workload.scenario.offload_prefetch)
        planning = placement
        if prefetch:  # weights in host memory, copied ahead into a staging buffer and read from there
            planning, placement = staged(placement, blocks, hw_file)
        if zero3:
            placement = gather_buffer(placement, blocks, hw_file)  # FSDP's gathered weights, read from there
            planning = dataclasses.replace(placement, home={**placement.home, "weight": next(iter(placement.staged))})
        placements[stage] = placement
        planner = Planner(hw, planning, hw_file, memo=memo)
        planned = planner.plan_blocks(blocks)
        if prefetch:
            planned = insert_copies(planned, planning, hw)
        colls = sorted({op.collective for blk in blocks for op in blk.ops if op.collective is not None},
                       key=lambda c: (c.kind, c.group, c.src_stage, c.dst_stage, c.bytes))
        stages.append((planned, colls, placement.home["activation"]))
    # inference simulates one data-parallel replica (they are independent); training all of them, which
    # meet in their gradients' collectives
    replicas = par.data if workload.scenario.phase == "train" else 1
    layout = _Layout(tp, pp, replicas, hw, stages)
    if collapse and pp == 1 and replicas == 1:
        # one stage's ranks run identical plans and meet only in their own group's collectives, which
        # release them together: one program stands for all of them, whatever the collectives' algorithm
        planned, colls, level = stages[0]
        devices = tuple(range(tp))
        return [Program(0, devices, planned, {c: layout.plan(c, 0, 0, 0) for c in colls})], placements
    copies = layout.copies() if collapse else [(0, 0)]
    programs = []
    for stage, (planned, colls, _) in enumerate(stages):
        for k, q in layout.representatives(copies):
            devices = tuple(layout.device(stage, k + dk, q + dq) for dk, dq in copies)
            plans = {c: union(layout.plan(c, stage, k + dk, q + dq) for dk, dq in copies) for c in colls}
            links = layout.link_maps(devices[0], plans.values(), copies) if len(copies) > 1 else None
            programs.append(Program(stage, devices, planned, plans, links))
    return programs, placements


class _Layout:
    """Where each rank of each stage of each replica runs, its collectives, and which devices one program
    may stand for. Device `k * tp * pp + stage * tp + q` runs pipeline stage `stage` as tensor-parallel
    rank `q` of data-parallel replica `k`."""

    def __init__(self, tp: int, pp: int, replicas: int, hw: Hardware, stages: list):
        self.tp, self.pp, self.replicas, self.hw, self.stages = tp, pp, replicas, hw, stages
        self._plans: dict[tuple, CollectivePlan] = {}
        self._shifts: dict[tuple[int, int], Relabelling | None] = {}  # (dk, dq) -> its relabelling

    def device(self, stage: int, k: int, q: int) -> int:
        return (k % self.replicas) * self.tp * self.pp + stage * self.tp + q % self.tp

    def plan(self, coll: Collective, stage: int, k: int, q: int) -> CollectivePlan:
        """The collective as rank q of the stage in replica k takes part in it (one plan per group)."""
        group = _group(coll, stage, q % self.tp, self.tp, self.replicas, self.tp * self.pp,
                       (k % self.replicas) * self.tp * self.pp)
        key = (coll.kind, coll.bytes, group)
        known = self._plans.get(key)
        if known is None:
            level = self.stages[stage][2]
            known = self._plans[key] = plan_collective(coll, group, self.hw, level)
        return known

    def copies(self) -> list[tuple[int, int]]:
        """The (replica, rank) offsets one program stands for, the most that a relabelling proves alike:
        every rank, and every `step`-th replica for the smallest step whose shift maps the run onto
        itself (1, or the replicas a node holds when their rings cross nodes from different members);
        failing that, ranks or replicas alone, or none. Their collectives' unions must keep their parts
        on disjoint links."""
        if self.tp > 1:
            self._shifts[0, 1] = self._invariant(0, 1)
        step = None
        for a in range(1, self.replicas):
            if self.replicas % a == 0:
                self._shifts[a, 0] = self._invariant(a, 0)
                if self._shifts[a, 0] is not None:
                    step = a
                    break
        ranks = list(range(self.tp)) if self._shifts.get((0, 1)) is not None else None
        replicas = list(range(0, self.replicas, step)) if step is not None else None
        candidates = []
        if ranks and replicas:
            candidates.append([(k, q) for k in replicas for q in ranks])
        if ranks:
            candidates.append([(0, q) for q in ranks])
        if replicas:
            candidates.append([(k, 0) for k in replicas])
        for copies in candidates:
            if self._unions_disjoint(copies):
                return copies
        return [(0, 0)]

    def representatives(self, copies: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The (replica, rank) each program runs as, one per class of devices it stands for."""
        step = next((dk for dk, _ in copies if dk), self.replicas)
        qs = range(self.tp) if all(dq == 0 for _, dq in copies) else range(1)
        return [(k, q) for k in range(step) for q in qs]

    def link_maps(self, device: int, plans, copies: list[tuple[int, int]]) -> tuple[dict[str, str], ...]:
        """Per copy, where each link `device` sends over goes under its relabelling (the shifts composed:
        one rank, one replica step at a time)."""
        mine = {lnk for plan in plans for t in plan.transfers if t.src == device for lnk in t.links}
        step = next((dk for dk, _ in copies if dk), 0)
        maps: dict[tuple[int, int], dict[str, str]] = {}
        for dk, dq in copies:
            if (dk, dq) == (0, 0):
                maps[0, 0] = {lnk: lnk for lnk in mine}
                continue
            prev, shift = ((dk, dq - 1), self._shifts[0, 1]) if dq else ((dk - step, dq), self._shifts[step, 0])
            maps[dk, dq] = {lnk: shift.links[to] for lnk, to in maps[prev].items()}
        return tuple(maps[c] for c in copies)

    def _invariant(self, dk: int, dq: int) -> Relabelling | None:
        """Whether shifting every device's replica by dk and rank by dq maps the run onto itself."""
        def image(d: int) -> int:
            per = self.tp * self.pp
            k, rest = divmod(d, per)
            stage, q = divmod(rest, self.tp)
            return self.device(stage, k + dk, q + dq)

        pairs = ((self.plan(c, stage, k, q), self.plan(c, stage, k + dk, q + dq))
                 for stage, (_, colls, _) in enumerate(self.stages)
                 for k in range(self.replicas) for q in range(self.tp) for c in colls)
        return invariant(pairs, image, self.hw)

    def _unions_disjoint(self, copies: list[tuple[int, int]]) -> bool:
        return all(union(self.plan(c, stage, k + dk, q + dq) for dk, dq in copies) is not None
                   for stage, (_, colls, _) in enumerate(self.stages) for c in colls
                   for k, q in self.representatives(copies))


def _group(coll: Collective, stage: int, rank: int, tp: int, replicas: int, per: int, base: int) -> tuple[int, ...]:
    """Who takes part in a stage's collective: its tensor-parallel group, the data-parallel replicas of
    rank `rank`, or (a pipeline send) rank `rank` of the two stages; in the replica whose first device
    is `base`."""
    if coll.group == "data":
        return tuple(d * per + stage * tp + rank for d in range(replicas))
    if coll.kind != "p2p":
        return tuple(base + stage * tp + r for r in range(tp))
    return (base + coll.src_stage * tp + rank, base + coll.dst_stage * tp + rank)


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
