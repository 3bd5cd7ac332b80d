"""End-to-end figures and the per-op-class breakdown, computed from a RunResult's op records."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from sim.engine.records import OpRecord, RunResult
from sim.graph.ops import CLASS_GROUP, PASSES
from sim.report.context import context
from sim.report.memory import peaks
from sim.report.metrics import GROUPS, RUN

#: host dispatch time over total time from which the host, not the device, paces a run
HOST_PACED = 0.95



class Totals:
    """Running totals of a set of op records, fed one record at a time (one pass over a run)."""

    __slots__ = ("ops", "time", "flops", "by_level", "parts", "hit", "held")

    def __init__(self) -> None:
        self.ops = 0
        self.time = 0.0
        self.flops = 0.0
        self.by_level: dict[str, float] = defaultdict(float)
        self.parts: dict[str, float] = defaultdict(float)  # compute busy, overhead, each stall
        self.hit: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.held: dict[str, float] = defaultdict(float)  # resource times, for the bound

    def add(self, r: OpRecord, n: int = 1) -> None:
        """Count record `r` `n` times (it stands for `n` identical runs)."""
        self.add_own(r, n)
        self.add_shared(r.bytes, r.stall_s, r.level_busy_s, n)

    def add_own(self, r: OpRecord, n: int) -> None:
        """The figures a record has to itself: time, FLOPs, compute, overhead, cache hits."""
        self.ops += n
        self.time += n * r.duration_s
        self.flops += n * r.flops
        self.parts["compute"] += n * r.compute_s
        self.parts["overhead"] += n * r.overhead_s
        self.held["compute"] += n * r.compute_s
        self.held["overhead"] += n * r.overhead_s
        for cache, (h, looked) in r.hits.items():
            self.hit[cache][0] += n * h
            self.hit[cache][1] += n * looked

    def add_shared(self, nbytes: dict, stall: dict, busy: dict, n: int) -> None:
        """Bytes per level, stalls and resource times (what `OpRecord.resource_times` gives, less
        compute and overhead), which records of ops with one timeline share."""
        for lvl, b in nbytes.items():
            self.by_level[lvl] += n * b
        held = self.held
        for k, v in stall.items():
            self.parts[k] += n * v
            if not (k.startswith("memory:") and k[7:] in busy):
                held[k] += n * v
        for lvl, b in busy.items():
            if not lvl.startswith("link:"):
                key = "memory:" + lvl
                s = stall.get(key, 0.0)
                held[key] += n * (b if b > s else s)

    def merge(self, other: Totals) -> None:
        self.ops += other.ops
        self.time += other.time
        self.flops += other.flops
        for target, source in ((self.by_level, other.by_level), (self.parts, other.parts), (self.held, other.held)):
            for k, v in source.items():
                target[k] += v
        for cache, (h, looked) in other.hit.items():
            self.hit[cache][0] += h
            self.hit[cache][1] += looked

    def result(self, level: str) -> dict:
        """Time, FLOPs, bytes and intensity per level, cache hit rates, achieved rates, stall shares
        and the bound. `intensity_flop_per_byte` is taken at `level`."""
        time, flops = self.time, self.flops
        nbytes = sum(self.by_level.values())
        at_level = self.by_level.get(level, 0.0)
        return {
            "ops": self.ops,
            "time_s": time,
            "flops": flops,
            "bytes": nbytes,
            "bytes_per_level": dict(sorted(self.by_level.items())),
            "intensity_flop_per_byte": flops / at_level if at_level else None,
            "intensity_per_level": {lvl: (flops / b if b else None) for lvl, b in sorted(self.by_level.items())},
            "hit_rate": {c: (h / n if n else None) for c, (h, n) in sorted(self.hit.items())},
            "achieved_flops_per_s": flops / time if time else 0.0,
            "achieved_bytes_per_s": nbytes / time if time else 0.0,
            "bytes_at_level": at_level,
            "achieved_bytes_per_s_at_level": at_level / time if time else 0.0,
            "time_share": {k: (v / time if time else 0.0) for k, v in sorted(self.parts.items())},
            "bound": max(self.held.items(), key=lambda kv: (kv[1], kv[0]))[0] if self.held else None,
        }


def _pass_order(phase: str) -> tuple[int, str]:
    order = list(PASSES)
    return (order.index(phase) if phase in order else len(order), phase)


def balance_level(result: RunResult) -> str:
    """The memory the balance point is taken against: where the weights live."""
    placement = result.placement
    if placement is not None:
        return placement.home["weight"]
    first = next((r for b in result.blocks for r in b.ops if r.bytes), None)
    return next(iter(first.bytes), "") if first else ""


def summarize(result: RunResult, top: int = 10) -> dict:
    """The run's figures, from its block records: a block's records are shared by its identical runs,
    so each distinct (records, phase) is added once, times how many ops it stands for."""
    blocks = result.blocks
    meta = context(result)
    level = balance_level(result)
    wl = meta.get("workload", {})
    batch, new_tokens = wl.get("batch", 1), wl.get("new_tokens", 0)
    total = max((b.end_s for b in blocks), default=0.0)
    first_phase = [b for b in blocks if b.block.phase in ("prefill", "encode") and b.ops]
    decode = [b for b in blocks if b.block.phase == "decode" and b.ops]
    prefill_end = max((b.end_s for b in first_phase), default=0.0)
    decode_s = total - prefill_end if decode else 0.0
    steps = sorted({b.block.step for b in decode})
    if first_phase:
        ttft = prefill_end
    else:
        ttft = max((b.end_s for b in decode if b.block.step == steps[0]), default=0.0) if steps else 0.0
    tpot = decode_s / len(steps) if steps else None
    if not first_phase and not decode:  # a training step: no token comes first, no phase is decode
        ttft = prefill_end = decode_s = None
    if decode:
        tokens = batch * new_tokens
        tokens_s = tokens / (total if first_phase else decode_s) if total else 0.0
    else:
        tokens_s = batch * wl.get("prompt_tokens", 0) / total if total else 0.0

    # one pass over distinct records: each feeds the run's totals, its class's, its phase's, its kind's
    runs: dict[tuple[int, str], list] = {}
    for b in blocks:
        phase = b.block.phase
        if b.block.bound:  # hand-made ops carry their own phase
            for r in b.ops:
                runs.setdefault((id(r), r.phase), [(r,), r.phase, 0])[2] += len(b.devices)
            continue
        entry = runs.setdefault((id(b.ops), phase), [b.ops, phase, 0])
        entry[2] += len(b.devices)
    finest: dict[tuple[str, str, str], Totals] = {}  # (phase, kind, class): the rest are sums of these
    shared: dict[tuple, list] = {}  # records of one timeline share their per-level dicts: add them once
    for records, phase, n in runs.values():
        for r in records:
            key = (phase, r.kind, r.op_class)
            t = finest.get(key)
            if t is None:
                t = finest[key] = Totals()
            t.add_own(r, n)
            entry = shared.get((key, id(r.bytes), id(r.stall_s), id(r.level_busy_s)))
            if entry is None:
                shared[(key, id(r.bytes), id(r.stall_s), id(r.level_busy_s))] = [t, r, n]
            else:
                entry[2] += n
    for t, r, n in shared.values():
        t.add_shared(r.bytes, r.stall_s, r.level_busy_s, n)
    all_totals = Totals()
    by_group: dict[str, Totals] = {}
    by_phase: dict[str, Totals] = {}
    by_kind: dict[tuple[str, str], tuple[Totals, str]] = {}
    for (phase, kind, op_class), t in sorted(finest.items()):
        all_totals.merge(t)
        by_group.setdefault(CLASS_GROUP[op_class], Totals()).merge(t)
        by_phase.setdefault(phase, Totals()).merge(t)
        if top:
            by_kind.setdefault((phase, kind), (Totals(), op_class))[0].merge(t)
    device_time = all_totals.time
    devices = sorted({d for b in blocks for d in b.devices if b.ops})
    # the host's own work: one dispatch per op (its kernel's cost) on the busiest device's stream. Where
    # it nearly fills the run, the host sets the pace and no faster device would shorten it much
    host_ops, host_s = host_dispatch(blocks, meta.get("hardware", {}))
    paced_by = "host" if host_s >= HOST_PACED * total > 0 else "device"

    def share(t: dict) -> float:
        return t["time_s"] / device_time if device_time else 0.0

    classes = {}
    for group in GROUPS:
        if group in by_group:
            agg = by_group[group].result(level)
            classes[group] = {**agg, "share_of_total": share(agg)}
    phases = {p: by_phase[p].result(level) for p in sorted(by_phase, key=_pass_order)}
    top_ops = []
    for (phase, kind), (totals, op_class) in by_kind.items():
        agg = totals.result(level)
        top_ops.append({**agg, "phase": phase, "kind": kind, "op_class": op_class, "share_of_total": share(agg)})
    # times equal but for float rounding (summed in another order) rank by name: the order must not hinge
    # on how many devices one record stood for
    top_ops.sort(key=lambda a: (-float(f"{a['time_s']:.12g}"), a["phase"], a["kind"]))

    comm, exposed, bubble = overlap(runs.values(), len(devices), total)
    pass_flops = {p: t.flops for p, t in by_phase.items()}
    facts = Facts(peak=peaks(result),
                  result=result, ctx=meta, level=level, total=total, device_time=device_time, pass_flops=pass_flops,
                  devices=len(devices), ttft=ttft, tpot=tpot, tokens_s=tokens_s, prefill_end=prefill_end,
                  decode_s=decode_s, everything=all_totals.result(level), ops=all_totals.ops, host_ops=host_ops,
                  host_s=host_s, paced_by=paced_by, comm=comm, exposed=exposed, bubble=bubble)
    return {
        "workload": wl.get("name", result.name),
        "hardware": result.hardware,
        **{m.name: m.get(facts) for m in RUN},
        "classes": classes,
        "phases": phases,
        "top_ops": top_ops[:top],
        "memory": {**meta.get("memory", {}), **facts.peak},
    }


@dataclass(frozen=True)
class Facts:
    """What the registry's run figures (`metrics.RUN`) are computed from: one pass over the run."""

    result: RunResult
    ctx: dict  # report.context
    level: str  # the balance level
    pass_flops: dict  # FLOPs of each pass (forward, backward, recompute, optimizer, prefill, ...)
    total: float
    device_time: float
    devices: int
    ttft: float | None  # None: a training step
    tpot: float | None
    tokens_s: float
    prefill_end: float | None
    decode_s: float | None
    everything: dict  # the aggregate of every op (`Totals.result`)
    ops: int
    host_ops: int
    host_s: float
    paced_by: str
    comm: float
    exposed: float
    bubble: float
    peak: dict  # per memory level of the fullest device: `peak_bytes` and its parts (report.memory.peaks)


def host_dispatch(blocks: list, hw: dict) -> tuple[int, float]:
    """(ops, seconds) the host spends dispatching on the device it keeps busiest."""
    default = hw.get("dispatch_overhead_s", 0.0)
    by_kernel = hw.get("dispatch_by_kernel_s", {})
    costs: dict[int, Counter] = {}  # id(ops) -> {dispatch cost: ops} (the blocks keep the ops alive)
    runs: Counter = Counter()  # (id(ops), devices) -> blocks run with those ops on those devices
    for b in blocks:
        ops = b.block.ops
        if id(ops) not in costs:
            costs[id(ops)] = Counter(by_kernel.get(op.kernel, default) for op in ops)
        runs[(id(ops), b.devices)] += 1
    per_device: dict[int, Counter] = defaultdict(Counter)
    for (ops_id, devices), n in runs.items():
        c = costs[ops_id]
        for d in devices:
            mine = per_device[d]
            for cost, k in c.items():
                mine[cost] += n * k
    # summed by cost, so that equal costs give exactly ops x cost
    totals = [(sum(cost * n for cost, n in sorted(c.items())), c.total()) for c in per_device.values()]
    seconds, ops = max(totals, default=(0.0, 0))
    return ops, seconds


def overlap(runs, devices: int, total: float) -> tuple[float, float, float]:
    """(communication time, the part of it the compute streams waited for, mean bubble per device), from
    the distinct record tuples `runs` ([records, phase, devices × runs they stand for]).

    A collective's communication time is its transfers' time: its duration less its dispatch wait and
    its wait for late peers (summed over devices); waiting for peers is not communication but idleness.
    A device is busy while its compute stream runs an op (a collective run in line included, but not its
    wait for late peers) or waits for the transfers of one issued on another stream; the rest of the
    run, waiting for other devices (a pipeline stage before its first micro-batch arrives and after its
    last has left, a rank waiting for a slower one), is its bubble."""
    comm = exposed = busy = 0.0
    for records, _, n in runs:
        for r in records:
            sync = r.stall_s.get("sync", 0.0)
            if r.unit == "link":
                comm += n * (r.duration_s - r.overhead_s - sync)
                exposed += n * r.exposed_s
            if r.stream == "compute":
                busy += n * (r.duration_s - sync)
            else:  # beside the compute stream: busy only while waited for
                busy += n * r.exposed_s
    bubble = total - busy / devices if devices else 0.0
    return comm, exposed, bubble if bubble > 1e-9 * total else 0.0  # below that: the sums' rounding
