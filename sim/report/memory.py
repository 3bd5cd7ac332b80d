"""Memory over time: per device and memory level, the bytes allocated by tensor kind over the run.

Weights and KV caches are allocated in their home level for the whole run (a KV cache at its final
length, as the footprint counts it). An activation is allocated when the op that writes it begins and
freed when the last op that reads it ends, so the live set rises through a pass and falls back; its
peak is the footprint's peak live set. A long run is thinned to at most `limit` points per track,
each the highest point of its stretch (peaks survive)."""

from __future__ import annotations

from collections import defaultdict

from sim.config.hardware import HOST_LEVEL
from sim.config.units import fmt_bytes
from sim.engine.records import RunResult
from sim.graph.ops import TENSOR_KINDS
from sim.mapping.placement import reserved_level

#: the prefetch's staging buffer (weights copied from host memory ahead of use), held all run
STAGING = "staging"
#: the runtime's memory outside the graph (context, workspaces, communication buffers), held all run
RUNTIME = "runtime"


#: a tensor kind's name among a level's peak parts in the summary (`memory.<level>`)
PART = {"weight": "weights", "gradient": "gradients", "optimizer_state": "optimizer", "activation": "activations"}


def peaks(result: RunResult) -> dict[str, dict]:
    """Per memory level of the fullest device: its `peak_bytes` and their parts by tensor kind
    (`weights`, `gradients`, `optimizer`, `activations`, `kv_cache`, `staging`, `runtime`)."""
    placement = result.placement
    if placement is None:
        return {}
    out: dict[str, dict] = {}
    held = [(kind, level, nbytes) for level, kinds in placement.held().items() for kind, nbytes in kinds.items()]
    held += [(STAGING, level, nbytes) for level, nbytes in placement.staged.items()]
    level = reserved_level(result.hw)
    if level is not None and result.hw.device.memory_reserved:
        held.append((RUNTIME, level, result.hw.device.memory_reserved))
    for kind, level, nbytes in held:
        if nbytes:
            entry = out.setdefault(level, {"peak_bytes": 0.0})
            entry["peak_bytes"] += nbytes
            entry[PART.get(kind, kind)] = nbytes
    return out


def spills(result: RunResult) -> list[str]:
    """A warning line naming the tensor classes some stage had to place in host memory and how much of
    them stayed there (they stream over the host link: a real device would run out of memory, or
    offload on purpose); none where everything is on the device."""
    left: dict[str, float] = {}  # kind -> bytes in host memory, over the stages
    for p in result.placements.values():
        for k, lvl in p.home.items():
            if lvl == HOST_LEVEL and p.footprint.of(k):
                left[k] = left.get(k, 0.0) + p.footprint.of(k) - sum(p.partial.get(k, {}).values())
    if not left or result.hw.host is None:
        return []
    link = result.hw.host.link.bandwidth
    kinds = " and ".join(f"{TENSOR_KINDS[k]} ({fmt_bytes(b)})" for k, b in sorted(left.items()))
    return [f"{kinds}: no room in device memory, placed in host memory; streamed over the host link "
            f"({link / 1e9:.0f} GB/s)"]


def memory_timeline(result: RunResult, limit: int = 4096) -> list[dict]:
    """[{"device", "level", "capacity_bytes", "points": [[t_s, {kind: bytes}], ...]}], one entry per
    device and level that holds anything."""
    if result.spec is None or not result.placements:
        return []
    par = result.spec.parallelism
    tp, per = par.tensor, par.tensor * par.pipeline
    runs: dict[tuple[int, ...], list] = defaultdict(list)  # devices that ran alike -> their block records
    for b in result.blocks:
        runs[b.devices].append(b)
    tracks: dict[int, list[dict]] = {}
    for devices, blocks in runs.items():  # one timeline per group of alike devices, given to each of them
        placement = result.placements.get((devices[0] % per) // tp)  # the device's pipeline stage
        if placement is None:
            continue
        for track in _tracks(placement, blocks, limit):
            for d in devices:
                tracks.setdefault(d, []).append({"device": d, **track})
    return [t for d in sorted(tracks) for t in tracks[d]]


def _tracks(placement, blocks: list, limit: int) -> list[dict]:
    """The timeline of each level one device's placement fills, from the block records it ran."""
    out = []
    act_level = placement.home["activation"]
    born: dict = {}
    last: dict = {}
    size: dict = {}
    for b in blocks:
        blk, t0 = b.block, b.start_s
        for op, r in zip(blk.ops, b.ops):
            began, end = t0 + r.start_s + r.overhead_s, t0 + r.end_s
            for a in op.writes:
                if a.tensor.kind == "activation":
                    k = a.tensor.name if blk.bound else a.tensor.key(blk.layer, blk.seq)
                    if k not in born:
                        born[k], size[k] = began, a.tensor.bytes
                    last[k] = max(last.get(k, end), end)
            for a in op.reads:
                if a.tensor.kind == "activation":
                    k = a.tensor.name if blk.bound else a.tensor.key(blk.layer, blk.seq)
                    if k in born:
                        last[k] = max(last[k], end)
    deltas: dict[float, float] = defaultdict(float)
    for k, t in born.items():
        deltas[t] += size[k]
        deltas[last[k]] -= size[k]
    levels: dict[str, dict[str, float]] = defaultdict(dict)
    for level, kinds in placement.held().items():  # what is held all run
        for kind, nbytes in kinds.items():
            if kind != "activation" and nbytes:
                levels[level][kind] = nbytes
    for level, nbytes in placement.staged.items():
        levels[level][STAGING] = nbytes
    if deltas:
        levels.setdefault(act_level, {})
    for level, kinds in sorted(levels.items()):
        base = dict(kinds)
        points = [[0.0, {**base}]]
        if level == act_level and deltas:
            live = 0.0
            for t in sorted(deltas):
                live += deltas[t]
                points.append([t, {**base, "activation": max(live, 0.0)}])
        out.append({"level": level, "capacity_bytes": placement.capacity.get(level),
                    "points": _thin(points, limit)})
    return out


def _thin(points: list, limit: int) -> list:
    """At most `limit` points: each stretch of the run keeps its highest point (and the last point)."""
    if len(points) <= limit:
        return points
    step = len(points) / (limit - 1)
    kept = []
    for i in range(limit - 1):
        chunk = points[int(i * step): int((i + 1) * step)] or [points[int(i * step)]]
        kept.append(max(chunk, key=lambda p: sum(p[1].values())))
    kept.append(points[-1])
    return kept


def kind_label(kind: str) -> str:
    return "prefetch staging" if kind == STAGING else TENSOR_KINDS.get(kind, kind)
