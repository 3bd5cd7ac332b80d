"""End-to-end figures and the per-op-class breakdown, computed from a RunResult's op records."""

from __future__ import annotations

from collections import defaultdict

from sim.engine.records import OpRecord, RunResult
from sim.graph.ops import CLASS_GROUP

GROUPS = ("GEMM", "GEMV", "attention", "collective", "other")


def time_parts(ops: list[OpRecord]) -> dict[str, float]:
    """Where the device's time went: compute busy, each stall resource, dispatch overhead."""
    parts: dict[str, float] = defaultdict(float)
    for r in ops:
        parts["compute"] += r.compute_s
        parts["overhead"] += r.overhead_s
        for k, v in r.stall_s.items():
            parts[k] += v
    return dict(sorted(parts.items()))


def balance_level(result: RunResult) -> str:
    """The memory the balance point is taken against: where the weights live."""
    hw = result.meta.get("hardware", {})
    return hw.get("balance_level") or next(iter(result.ops[0].bytes), "") if result.ops else ""


def bound(ops: list[OpRecord]) -> str | None:
    """The resource that held a set of ops up longest, summed over the ops."""
    held: dict[str, float] = defaultdict(float)
    for r in ops:
        for k, v in r._resource_times.items():
            held[k] += v
    return max(held.items(), key=lambda kv: (kv[1], kv[0]))[0] if held else None


def aggregate(ops: list[OpRecord], level: str) -> dict:
    """Totals of a set of ops: time, FLOPs, bytes and intensity per level, cache hit rates, achieved
    rates, stall shares and the bound. `intensity_flop_per_byte` is taken at `level`."""
    time = sum(r.duration_s for r in ops)
    flops = sum(r.flops for r in ops)
    by_level: dict[str, float] = defaultdict(float)
    for r in ops:
        for lvl, b in r.bytes.items():
            by_level[lvl] += b
    nbytes = sum(by_level.values())
    parts = time_parts(ops)
    shares = {k: (v / time if time else 0.0) for k, v in parts.items()}
    hit: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in ops:
        for cache, (h, n) in r.hits.items():
            hit[cache][0] += h
            hit[cache][1] += n
    at_level = by_level.get(level, 0.0)
    return {
        "ops": len(ops),
        "time_s": time,
        "flops": flops,
        "bytes": nbytes,
        "bytes_per_level": dict(sorted(by_level.items())),
        "intensity_flop_per_byte": flops / at_level if at_level else None,
        "intensity_per_level": {lvl: (flops / b if b else None) for lvl, b in sorted(by_level.items())},
        "hit_rate": {c: (h / n if n else None) for c, (h, n) in sorted(hit.items())},
        "achieved_flops_per_s": flops / time if time else 0.0,
        "achieved_bytes_per_s": nbytes / time if time else 0.0,
        "bytes_at_level": at_level,
        "achieved_bytes_per_s_at_level": at_level / time if time else 0.0,
        "time_share": shares,
        "bound": bound(ops),
    }


def summarize(result: RunResult, top: int = 10) -> dict:
    ops = result.ops
    meta = result.meta
    level = balance_level(result)
    wl = meta.get("workload", {})
    batch, new_tokens = wl.get("batch", 1), wl.get("new_tokens", 0)
    total = max((r.end_s for r in ops), default=0.0)
    # with several devices, op times add up to device-time: shares are of that
    device_time = sum(r.duration_s for r in ops)
    first_phase = [r for r in ops if r.phase in ("prefill", "encode")]
    decode = [r for r in ops if r.phase == "decode"]
    prefill_end = max((r.end_s for r in first_phase), default=0.0)
    decode_s = total - prefill_end if decode else 0.0
    steps = sorted({r.step for r in decode})
    if first_phase:
        ttft = prefill_end
    else:
        first_step = [r for r in decode if r.step == steps[0]] if steps else []
        ttft = max((r.end_s for r in first_step), default=0.0)
    tpot = decode_s / len(steps) if steps else None
    if decode:
        tokens = batch * new_tokens
        tokens_s = tokens / (total if first_phase else decode_s) if total else 0.0
    else:
        tokens_s = batch * wl.get("prompt_tokens", 0) / total if total else 0.0

    classes = {}
    for group in GROUPS:
        members = [r for r in ops if CLASS_GROUP[r.op_class] == group]
        if members:
            agg = aggregate(members, level)
            agg["share_of_total"] = agg["time_s"] / device_time if device_time else 0.0
            classes[group] = agg

    phases = {}
    for phase in ("encode", "prefill", "decode"):
        members = [r for r in ops if r.phase == phase]
        if members:
            phases[phase] = aggregate(members, level)

    by_kind: dict[tuple[str, str], list[OpRecord]] = defaultdict(list)
    for r in ops if top else ():
        by_kind[(r.phase, r.kind)].append(r)
    top_ops = []
    for (phase, kind), members in by_kind.items():
        agg = aggregate(members, level)
        agg.update(phase=phase, kind=kind, op_class=members[0].op_class,
                   share_of_total=agg["time_s"] / device_time if device_time else 0.0)
        top_ops.append(agg)
    top_ops.sort(key=lambda a: (-a["time_s"], a["phase"], a["kind"]))

    everything = aggregate(ops, level)
    return {
        "workload": wl.get("name", result.workload),
        "hardware": result.hardware,
        "total_s": total,
        "device_time_s": device_time,
        "devices": len({r.device for r in ops}),
        "ttft_s": ttft,
        "tpot_s": tpot,
        "tokens_per_s": tokens_s,
        "prefill_s": prefill_end,
        "decode_s": decode_s,
        "flops": everything["flops"],
        "bytes": everything["bytes"],
        "bytes_per_level": everything["bytes_per_level"],
        "intensity_per_level": everything["intensity_per_level"],
        "hit_rate": everything["hit_rate"],
        "time_share": everything["time_share"],
        "bound": everything["bound"],
        "ops": len(ops),
        "events": result.events,
        "classes": classes,
        "phases": phases,
        "top_ops": top_ops[:top],
        "memory": meta.get("memory", {}),
        "balance_point_flop_per_byte": meta.get("hardware", {}).get("balance_point_flop_per_byte"),
    }
