"""Runs op plans on the machine, one stream per device, and measures where each op's time went.

The host dispatches ops one after another, each costing `dispatch_overhead`, and runs ahead of the
device (an asynchronous launch queue; `dispatch_mode: sync` waits for each op instead): the overhead
shows only where the device outruns the host.
On the device an op is one process made of chunks. Chunk i+1's loads are issued when chunk i
starts computing (double buffering). Within a chunk, data and compute overlap at tile granularity:
compute may start once the chunk's first bytes have landed and cannot finish before its last bytes
have. Results stream out as the chunk computes. Every interval in which the compute unit waits is a
stall, charged to the resource it was waiting on, so busy + stalls + overhead = duration exactly.

Reuse of identical work: every device runs one stream and its compute units and memory levels serve
only that stream, so an op always starts on idle resources and nothing else touches them while it runs.
Its timeline relative to its start is therefore a function of its plan alone: the first op with a
given plan is simulated event by event, later ones with the same plan replay that timeline as one
event (exact; `replay=False` turns it off, and a test holds the two equal).

A collective is a rendezvous: each participant's stream reaches it, waits for the others (`sync`:
load imbalance, pipeline bubbles), then for the transfers over the links (`link:<topology>`).
"""

from __future__ import annotations

from dataclasses import dataclass

import simpy

from sim.config.hardware import Hardware
from sim.engine.machine import LevelUse, Machine
from sim.engine.records import OpRecord, RunResult
from sim.mapping.plan import OpPlan


@dataclass(frozen=True)
class Timeline:
    """An op's simulated timeline relative to the moment it was dispatched."""

    duration_s: float
    compute_s: float
    stall_s: dict[str, float]
    uses: dict[str, tuple[float, float, float, float]]  # level -> bytes, busy, first, last (relative)
    events: int


class Executor:
    def __init__(self, hw: Hardware, replay: bool = True):
        self.hw = hw
        self.replay = replay
        self._timelines: dict[tuple, Timeline] = {}
        self.machine = Machine(hw)
        self.env = self.machine.env
        self.records: list[OpRecord] = []
        self._rendezvous: dict[tuple, dict] = {}

    def run(self, plans: list[OpPlan] | dict[int, list[OpPlan]], workload: str = "") -> RunResult:
        streams = plans if isinstance(plans, dict) else {0: plans}
        for device in sorted(streams):
            self.env.process(self._stream(streams[device]))
        self.env.run()
        records = sorted(self.records, key=lambda r: (r.device, r.start_s, r.end_s))
        return RunResult(hardware=self.hw.name, workload=workload, ops=records, events=self.env.scheduled)

    def _stream(self, plans: list[OpPlan]):
        """One in-order stream (like a CUDA stream): each op starts when the previous one ends and
        the host has dispatched it. The host touches no simulated resource, so its dispatch times
        follow from the stream's: async, the n-th op is ready n overheads after the start (the host
        runs ahead); sync, one overhead after the previous op ended."""
        env = self.env
        sync = self.hw.device.dispatch_mode == "sync"
        host_free = 0.0  # when the host has dispatched the op before this one
        for p in plans:
            start, first_event = env.now, env.scheduled
            ready = (start if sync else host_free) + p.overhead_s
            host_free = ready
            if ready > env.now:
                yield env.timeout(ready - env.now)
            if p.collective is not None:
                yield from self._collective(p, start, first_event)
                continue
            key = (p.unit, p.compute_s, p.loads, p.stores, p.chunks)
            known = self._timelines.get(key) if self.replay else None
            if known is None:
                known = yield from self._simulate_op(p)
                self._timelines[key] = known
            else:
                yield env.timeout(known.duration_s)
            self._record(p, start, known, env.scheduled - first_event)

    def _record(self, p: OpPlan, start: float, t: Timeline, events: int) -> None:
        op, end = p.op, self.env.now
        began = end - t.duration_s  # when the device started it (after waiting for dispatch)
        self.records.append(OpRecord(
            name=op.name, kind=op.kind, layer=op.layer, phase=op.phase, step=op.step,
            op_class=op.op_class, device=p.device, unit=p.unit, dtype=op.dtype, shape=op.shape,
            flops=op.flops, bytes={lvl: u[0] for lvl, u in t.uses.items()},
            start_s=start, end_s=end, compute_s=t.compute_s, stall_s=dict(t.stall_s), overhead_s=began - start,
            events=events, utilization=p.utilization, hits={c: (h, n) for c, h, n in p.hits},
            level_busy_s={lvl: u[1] for lvl, u in t.uses.items()},
            level_span_s={lvl: (began + u[2], began + u[3]) for lvl, u in t.uses.items()},
        ))

    def _simulate_op(self, p: OpPlan):
        """Process body: run the op's chunks event by event; return its Timeline."""
        env, m = self.env, self.machine
        began = env.now
        stall: dict[str, float] = {}
        uses: dict[str, LevelUse] = {}
        first_event = env.scheduled

        def use(level: str) -> LevelUse:
            return uses.setdefault(level, LevelUse())

        def wait(event: simpy.Event, blame):
            """Yield `event`; charge the compute unit's idle time to whatever `blame` names."""
            t0 = env.now
            value = yield event
            if env.now > t0:
                key = blame(value)
                stall[key] = stall.get(key, 0.0) + env.now - t0
            return value

        def last_level(value) -> str:
            """The resource whose data landed last is the one the compute unit was waiting on."""
            results = value.values() if hasattr(value, "values") else [value]
            return "memory:" + max(results, key=lambda r: r[0])[1]

        def issue(i: int):
            frac = p.chunks[i]
            arriving = [env.event() for _ in p.loads]
            done = [env.process(m.move(p.device, lvl, b * frac, use(lvl), ev))
                    for (lvl, b), ev in zip(p.loads, arriving)]
            return arriving, done

        pending = issue(0) if p.loads else None
        stores: list[simpy.Process] = []
        busy = 0.0
        unit = m.compute[(p.device, p.unit)]
        for i, frac in enumerate(p.chunks):
            current = pending
            pending = issue(i + 1) if p.loads and i + 1 < len(p.chunks) else None
            if current:
                yield from wait(env.all_of(current[0]), last_level)
            stores += [env.process(m.move(p.device, lvl, b * frac, use(lvl), None))
                       for lvl, b in p.stores]
            with unit.request() as req:
                yield from wait(req, lambda _: "compute:queue")
                c = p.compute_s * frac
                yield env.timeout(c)
                busy += c
            if current:
                yield from wait(env.all_of(current[1]), last_level)
        if stores:
            yield from wait(env.all_of(stores), last_level)
        return Timeline(
            duration_s=env.now - began, compute_s=busy, stall_s=stall,
            uses={lvl: (u.bytes, u.busy_s, u.first_s - began, u.last_s - began) for lvl, u in uses.items()},
            events=env.scheduled - first_event,
        )


    def _collective(self, p: OpPlan, start: float, first_event: int):
        env, plan = self.env, p.collective
        overhead_s = env.now - start
        key = (p.op.name, plan.group)
        rdv = self._rendezvous.setdefault(key, {"arrived": 0, "done": env.event(), "last": 0.0, "use": {}})
        rdv["arrived"] += 1
        arrived = env.now
        if rdv["arrived"] == len(plan.group):  # the last one in starts the transfers
            rdv["last"] = env.now
            env.process(self._transfers(plan, rdv))
        yield rdv["done"]
        stall = {"sync": rdv["last"] - arrived, f"link:{self.hw.interconnect.topology}": env.now - rdv["last"]}
        own = rdv["use"].get(p.device, {})
        op = p.op
        self.records.append(OpRecord(
            name=op.name, kind=op.kind, layer=op.layer, phase=op.phase, step=op.step,
            op_class=op.op_class, device=p.device, unit="link", dtype=op.dtype, shape=op.shape,
            flops=0.0, bytes={}, start_s=start, end_s=env.now, compute_s=0.0,
            stall_s={k: v for k, v in stall.items() if v > 0}, overhead_s=overhead_s,
            events=env.scheduled - first_event, link_bytes={lnk: u.bytes for lnk, u in own.items()},
            level_busy_s={f"link:{lnk}": u.busy_s for lnk, u in own.items()},
            level_span_s={f"link:{lnk}": (u.first_s, u.last_s) for lnk, u in own.items()},
        ))

    def _transfers(self, plan, rdv: dict):
        env, m = self.env, self.machine
        sends = [env.process(m.send(t.links, t.bytes, rdv["use"].setdefault(t.src, {}))) for t in plan.transfers]
        yield env.all_of(sends)
        if plan.latency_s:
            yield env.timeout(plan.latency_s)
        rdv["done"].succeed()


def simulate(plans: list[OpPlan] | dict[int, list[OpPlan]], hw: Hardware, workload: str = "",
             replay: bool = True) -> RunResult:
    return Executor(hw, replay).run(plans, workload)
