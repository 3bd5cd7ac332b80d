"""Runs op plans on the machine, one stream per device, and measures where each op's time went.

The host dispatches ops one after another, each costing `dispatch_overhead`, and runs ahead of the
device (an asynchronous launch queue): the overhead shows only where the device outruns the host.
On the device an op is one process made of chunks. Chunk i+1's loads are issued when chunk i
starts computing (double buffering). Within a chunk, data and compute overlap at tile granularity:
compute may start once the chunk's first bytes have landed and cannot finish before its last bytes
have. Results stream out as the chunk computes. Every interval in which the compute unit waits is a
stall, charged to the resource it was waiting on, so busy + stalls + overhead = duration exactly.

A collective is a rendezvous: each participant's stream reaches it, waits for the others (`sync`:
load imbalance, pipeline bubbles), then for the transfers over the links (`link:<topology>`).
"""

from __future__ import annotations

import simpy

from sim.config.hardware import Hardware
from sim.engine.machine import LevelUse, Machine
from sim.engine.records import OpRecord, RunResult
from sim.mapping.plan import OpPlan


class Executor:
    def __init__(self, hw: Hardware):
        self.hw = hw
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
        the host has dispatched it."""
        dispatched = [self.env.event() for _ in plans]
        finished = [self.env.event() for _ in plans]
        self.env.process(self._host(plans, dispatched, finished))
        for p, ready, done in zip(plans, dispatched, finished):
            run = self._collective(p, ready) if p.collective is not None else self._op(p, ready)
            yield self.env.process(run)
            done.succeed()

    def _host(self, plans: list[OpPlan], dispatched: list[simpy.Event], finished: list[simpy.Event]):
        sync = self.hw.device.dispatch_mode == "sync"
        for i, (p, ready) in enumerate(zip(plans, dispatched)):
            if sync and i:
                yield finished[i - 1]  # a synchronous framework dispatches after the previous op returns
            if p.overhead_s:
                yield self.env.timeout(p.overhead_s)
            ready.succeed()

    def _op(self, p: OpPlan, dispatched: simpy.Event):
        env, m = self.env, self.machine
        start = env.now
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

        yield dispatched
        overhead_s = env.now - start

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

        op = p.op
        self.records.append(OpRecord(
            name=op.name, kind=op.kind, layer=op.layer, phase=op.phase, step=op.step,
            op_class=op.op_class, device=p.device, unit=p.unit, dtype=op.dtype, shape=op.shape,
            flops=op.flops, bytes={lvl: u.bytes for lvl, u in uses.items()},
            start_s=start, end_s=env.now, compute_s=busy, stall_s=stall, overhead_s=overhead_s,
            events=env.scheduled - first_event, utilization=p.utilization,
            hits={c: (h, n) for c, h, n in p.hits}, level_busy_s={lvl: u.busy_s for lvl, u in uses.items()},
            level_span_s={lvl: (u.first_s, u.last_s) for lvl, u in uses.items()},
        ))


    def _collective(self, p: OpPlan, dispatched: simpy.Event):
        env, plan = self.env, p.collective
        start, first_event = env.now, env.scheduled
        yield dispatched
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


def simulate(plans: list[OpPlan] | dict[int, list[OpPlan]], hw: Hardware, workload: str = "") -> RunResult:
    return Executor(hw).run(plans, workload)
