"""Host offload with prefetch: weights that live in host memory are copied to the device a layer ahead.

Where a workload asks for it (`scenario.offload_prefetch`) and its weights had to be placed in host
memory, every block that reads weights left there (not filled into the device's room) gets a copy op
ahead of it: at the start of the block before it
in the same forward pass (so the copy runs on the device's copy stream while that block computes), or
at its own start when it opens a pass. The copy reads the block's weights from host memory and writes
them into a staging buffer of two blocks' weights in the activations' level (double buffering: the
copy for block i + 2 starts when block i has finished with its buffer, which the copy stream's order
and the block boundary give). The block's ops then read their weights from the staging level.
"""

from __future__ import annotations

import dataclasses

from sim.config.hardware import HOST_LEVEL, Hardware
from sim.config.units import fmt_bytes
from sim.errors import ConfigError
from sim.graph.ops import Access, Block, Op
from sim.mapping.placement import Placement, block_weights, staging_bytes
from sim.mapping.plan import OpPlan

COPY = "copy"  # the kernel, op class, engine and stream of a prefetch


def wanted(placement: Placement, prefetch: bool) -> bool:
    return prefetch and placement.home.get("weight") == HOST_LEVEL


def staged(placement: Placement, blocks: list[Block], hw_file: str) -> tuple[Placement, Placement]:
    """(the placement the stage's ops are planned against: weights read from the staging level; the
    placement as it is: weights in host memory, the staging level holding two blocks' weights on top of
    what it held)."""
    level = placement.home["activation"]
    if level == HOST_LEVEL:
        raise ConfigError("offload_prefetch needs a device memory level for its staging buffer; the "
                          "activations live in host memory too", hw_file, "device.memory")
    buffer = staging_bytes(blocks)
    used = dict(placement.used)
    used[level] += buffer
    if used[level] > placement.capacity[level]:
        raise ConfigError(f"offload_prefetch's staging buffer ({fmt_bytes(buffer)}: two layers' weights) does not "
                          f"fit in {level} ({fmt_bytes(placement.capacity[level] - placement.used[level])} free)",
                          hw_file, f"device.memory.{level}.capacity")
    actual = dataclasses.replace(placement, used=used, staged={level: buffer})
    return dataclasses.replace(actual, home={**placement.home, "weight": level}), actual


def gather_buffer(placement: Placement, blocks: list[Block], hw_file: str) -> Placement:
    """ZeRO-3: the placement with room for two blocks' gathered weights (the one in use and the one being
    prefetched), shown as a staging buffer: in the innermost device level with room (`place(gather=True)`
    kept it in the innermost one), wherever the shards live."""
    buffer = staging_bytes(blocks)
    outward = list(placement.capacity)  # innermost first
    level = next((n for n in outward if n != HOST_LEVEL and placement.capacity[n] - placement.used[n] >= buffer),
                 None)
    if level is None:
        free = ", ".join(f"{n} {fmt_bytes(placement.capacity[n] - placement.used[n])} free" for n in outward)
        raise ConfigError(f"ZeRO-3's gathered weights ({fmt_bytes(buffer)}: two layers' weights) do not fit "
                          f"on the device ({free})", hw_file, "device.memory")
    used = dict(placement.used)
    used[level] += buffer
    return dataclasses.replace(placement, used=used, staged={level: buffer})


def insert_copies(planned: list[tuple[Block, tuple[OpPlan, ...]]], placement: Placement,
                  hw: Hardware) -> list[tuple[Block, tuple[OpPlan, ...]]]:
    """The stage's blocks with their prefetch copies in front (see the module docstring)."""
    level = next(iter(placement.staged))
    dispatch, launch = hw.device.dispatch_for(COPY), hw.device.launch_for(COPY)
    made: dict[tuple, tuple] = {}
    out: list[tuple[Block, tuple[OpPlan, ...]]] = []
    ahead: list[list[tuple[Op, OpPlan]]] = [[] for _ in planned]  # the copies each block starts with
    for j, (blk, _) in enumerate(planned):
        # the weights the placement left in host memory (those filled into the device are read there)
        weights = {t: n for t, n in block_weights(blk.ops).items() if t.key(blk.layer, blk.seq) not in placement.split}
        if not weights:
            continue
        prev = planned[j - 1][0] if j else None
        host = j - 1 if prev is not None and (prev.seq, prev.micro) == (blk.seq, blk.micro) else j
        shift = blk.layer - planned[host][0].layer
        key = (id(blk.ops), shift, blk.label, tuple(t.name for t in weights))
        copy = made.get(key)
        if copy is None:
            accesses = tuple(Access(t.shifted(-shift), n) for t, n in weights.items())
            nbytes = sum(a.bytes for a in accesses)
            # named for the block whose weights it copies (it runs in the block before)
            op = Op(name=f"prefetch_{blk.label}", kind="prefetch", op_class=COPY, engine=COPY, phase=blk.phase,
                    step=0, layer=0, dtype="", flops=0.0, reads=accesses, writes=accesses, kernel=COPY)
            copy = made[key] = (blk.ops, (op, OpPlan(op=op, unit=COPY, compute_s=0.0, utilization=1.0,
                                                     loads=((HOST_LEVEL, nbytes),), stores=((level, nbytes),),
                                                     hits=(), chunks=(1.0,), overhead_s=dispatch, launch_s=launch,
                                                     stream=COPY)))
        ahead[host].append(copy[1])
    joined: dict[tuple, tuple] = {}
    for (blk, plans), copies in zip(planned, ahead):
        if not copies:
            out.append((blk, plans))
            continue
        key = (id(blk.ops), id(plans), *(op for op, _ in copies))
        known = joined.get(key)
        if known is None or known[0] is not blk.ops:
            known = joined[key] = (blk.ops, (*(op for op, _ in copies), *blk.ops),
                                   (*(p for _, p in copies), *plans))
        out.append((dataclasses.replace(blk, ops=known[1]), known[2]))
    return out
