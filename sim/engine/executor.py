"""Runs device programs on the machine and measures where each op's time went.

Streams. Each device runs its program (ops in the order the host dispatches them) on streams, as a
GPU runs kernels, NCCL calls and copies: `compute` (every op that is not communication or a copy), one
`comm` stream per communicator (the tensor-parallel group; each pair of pipeline peers) and a `copy`
stream (prefetches from host memory); the mapping assigns each op its stream (`OpPlan.stream`). Each
stream is in order; an op starts when its stream is free, the ops that produce what it reads have
finished (data dependences, tensor by tensor, not list position) and the host has dispatched it. A
collective whose result the next op consumes (a tensor-parallel all-reduce between a projection and its
residual add), a pipeline receive, and a block's last collective that what follows waits for at once run
in line: the compute stream waits for them, and their whole transfer time is exposed. Any other
collective, and every copy, is issued on its stream when the host reaches it and runs beside the
compute ops that do not need it (a pipeline stage sends its activations and goes on with the next
micro-batch); an op that reads its result waits for it, and that wait is its exposed time. A forward pass
starts after the ops of the pass before it (of the same micro-batch) have ended on the device: its input
token is sampled from their output. The streams of a device share its memory levels: a collective's
transfers read and write the participants' buffers and a copy reads host memory and writes the device's,
queued with the compute ops' traffic.

The host dispatches ops one after another in program order, each costing its kernel's dispatch
overhead, and runs ahead of the device (an asynchronous launch queue; `dispatch_mode: sync` waits for
each op instead, which also runs every collective in line): the overhead shows only where the device
outruns the host. The device's own time before an op (its plan's `launch_s`: a GPU starting the next
kernel, plus a matmul's fixed cost) shows before every op that is not a collective, however far ahead
the host is.
On the device an op is one process made of chunks. Chunk i+1's loads are issued when chunk i
starts computing (double buffering). Within a chunk, data and compute overlap at tile granularity:
compute may start once the chunk's first bytes have landed and cannot finish before its last bytes
have. Results stream out as the chunk computes. Every interval in which the compute unit waits is a
stall, charged to the resource it was waiting on, so busy + stalls + overhead = duration exactly.

Reuse of identical work (the `replay` switch): while no op issued on another stream of its device is in
flight, a device's compute units and memory levels serve only its compute stream, so a compute op starts
on idle resources and nothing else touches them while it runs. Its timeline relative to its start is
then a function of its plan alone: the first op with a given plan simulated on idle resources is
simulated event by event, later ones with the same plan starting on idle resources replay that timeline
as one event (while something is in flight, they are simulated). The same holds for a whole block (a
layer) given how far ahead the host is, provided it runs all its collectives in line, nothing of its
device is in flight when it starts, nothing it reads is still being communicated, and its collectives
cannot meet other traffic: one program stands for their whole group and their links carry no other
group's transfers. And devices that the mapping proves alike (sim/mapping/symmetry.py) run one program
for all of them: their collectives run as one, every transfer simulated. All of this is exact up to
float rounding (host lead compared to 1 ps); `replay=False` simulates every op of every device event by
event, and tests hold the two equal.

A collective is a rendezvous: each participant's stream reaches it, waits for the others (`sync`:
load imbalance, pipeline bubbles), then for the transfers over the links (`link:<topology>`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from sim.config.hardware import Hardware
from sim.engine.machine import LevelUse, Machine
from sim.engine.records import BlockRecord, OpRecord, RunResult
from sim.graph.ops import Block, loose
from sim.mapping.collectives import NET, CollectivePlan
from sim.mapping.parallel import Program
from sim.mapping.plan import OpPlan


@dataclass(frozen=True)
class Timeline:
    """An op's simulated timeline relative to the moment it was dispatched."""

    duration_s: float
    compute_s: float
    stall_s: dict[str, float]
    uses: dict[str, tuple[float, float, float, float]]  # level -> bytes, busy, first, last (relative)

    @functools.cached_property
    def bytes(self) -> dict[str, float]:
        return {lvl: u[0] for lvl, u in self.uses.items()}

    @functools.cached_property
    def busy(self) -> dict[str, float]:
        return {lvl: u[1] for lvl, u in self.uses.items()}

    @functools.cached_property
    def spans(self) -> dict[str, tuple[float, float]]:
        return {lvl: (u[2], u[3]) for lvl, u in self.uses.items()}


@dataclass(frozen=True)
class Template:
    """How a device program runs one block's plans (shared by every block with those plans): which of
    its collectives run in line, and the ops that read each earlier op's output."""

    inline: tuple[bool, ...]  # per op: a collective run in line (always False for other ops)
    issued: bool  # some collective is issued on the comm stream
    producers: tuple[tuple[int, ...], ...]  # per op: the earlier ops of the block whose output it reads
    last_issued: bool  # its last op is a collective issued on the comm stream
    #: the order the compute stream walks the ops in: program order, but each issued op right after its
    #: last producer (it is dispatched ahead of the device, and must not wait for ops it does not need)
    order: tuple[int, ...] = ()


class Issued:
    """An op issued on a comm stream (a collective) or the copy stream: its record's slot, and when it
    ended."""

    __slots__ = ("done", "end", "arrived", "last", "slot", "index", "writes", "prev")

    def __init__(self, done, slot: list, index: int, writes: tuple, prev: Issued | None = None) -> None:
        self.done = done
        self.prev = prev  # the op issued on the same stream before it
        self.end = 0.0
        self.arrived = 0.0  # when this device arrived at it (dispatched and launched)
        self.last = 0.0  # when its last participant arrived and its transfers began
        self.slot = slot
        self.index = index
        self.writes = writes


class Executor:
    def __init__(self, hw: Hardware, replay: bool = True):
        self.hw = hw
        self.replay = replay
        self._timelines: dict[tuple, Timeline] = {}
        self._contended: dict[tuple, Timeline] = {}  # the last timeline of a plan measured beside other traffic
        self._blocks: dict[tuple, tuple] = {}  # (id(plans), host lead) -> (plans, duration, records)
        self._replayable: dict[int, tuple] = {}
        self._templates: dict[tuple, tuple] = {}
        self._hits: dict[int, tuple] = {}
        self.machine = Machine(hw)
        self.env = self.machine.env
        self.records: list = []  # BlockRecords, or (block, devices, start, record slots) to finish at the end
        self._rendezvous: dict[tuple, dict] = {}
        self._instant: dict[float, list] = {}  # collectives starting their transfers at this instant
        self._mirror: dict[int, int] = {}  # device -> the device whose program stands for it
        self._arrivals: dict[tuple, int] = {}  # collective group -> programs that meet in its collectives
        self._exclusive: set[tuple] = set()  # groups whose links no other group uses

    def run(self, programs: list[Program] | list[OpPlan], workload: str = "") -> RunResult:
        if programs and isinstance(programs[0], OpPlan):
            programs = [Program(0, (0,), [(loose([p.op for p in programs]), tuple(programs))], {})]
        self._prepare(programs)
        for s in programs:
            self.env.process(self._program(s))
        self.env.run()
        blocks = [r if isinstance(r, BlockRecord) else _finish(*r) for r in self.records]
        blocks.sort(key=lambda b: (b.devices[0], b.start_s))
        return RunResult(hw=self.hw, blocks=blocks, events=self.env.scheduled, name=workload)

    def _prepare(self, programs: list[Program]) -> None:
        """How many programs meet in each group's collectives, and which groups' links no other group
        uses (so their collectives cannot meet other traffic)."""
        links: dict[tuple, set[str]] = {}
        for s in programs:
            for d in s.devices[1:]:  # a program run once for alike devices: their memories mirror its first's
                self._mirror[d] = s.devices[0]
            for g in {c.group for c in s.collectives.values()}:
                self._arrivals[g] = self._arrivals.get(g, 0) + 1
            for c in s.collectives.values():
                links.setdefault(c.group, set()).update(lnk for t in c.transfers for lnk in t.links)
        for g, mine in links.items():
            if not any(mine & theirs for h, theirs in links.items() if h != g):
                self._exclusive.add(g)

    def _block_replayable(self, s: Program, plans: tuple[OpPlan, ...]) -> bool:
        """A block's timeline is a function of its plans and the host's lead when nothing outside
        its program can touch what it uses: no collective meets another program or shares links."""
        known = self._replayable.get(id(plans))
        if known is not None and known[0] is plans:
            return known[1]
        ok = True
        for p in plans:
            coll = p.op.collective
            if coll is not None:
                group = s.collectives[coll].group
                ok = ok and self._arrivals[group] == 1 and group in self._exclusive
        self._replayable[id(plans)] = (plans, ok)
        return ok

    def _template(self, s: Program, plans: tuple[OpPlan, ...], sync: bool, tail: bool = False) -> Template:
        """Which collectives of a block run in line on this program: all of them under a synchronous
        host; a pipeline receive (the stage's next op needs it, and it is what the stage waits on); a
        collective whose output the next op reads; and, with `tail`, a last op that what follows the block
        waits for at once (`_tail_waited`). The rest are issued on the comm stream: issuing those would
        give the same times, only with more events."""
        key = (id(plans), s.stage, tail)
        known = self._templates.get(key)
        if known is not None and known[0] is plans:
            return known[1]
        ops = [p.op for p in plans]
        colls = [i for i, p in enumerate(plans) if p.stream != "compute"]
        if not colls:  # compute ops only: nothing to decide (most blocks)
            self._templates[key] = (plans, _COMPUTE_ONLY)
            return _COMPUTE_ONLY
        inline = []
        for i, op in enumerate(ops):
            coll = op.collective
            if plans[i].stream == "copy":  # a prefetch runs on the copy stream
                inline.append(sync)
                continue
            if coll is None:
                inline.append(False)
                continue
            receive = coll.kind == "p2p" and coll.dst_stage == s.stage != coll.src_stage
            wrote = {_ident(a) for a in op.writes}
            feeds_next = i + 1 < len(ops) and any(_ident(a) in wrote for a in ops[i + 1].reads)
            inline.append(sync or receive or feeds_next or (tail and i == len(ops) - 1))
        writer: dict = {}
        producers = []
        issued = any(not inline[i] for i in colls)
        for i, op in enumerate(ops if issued else ()):  # only an issued collective's waits need them
            producers.append(tuple(sorted({writer[k] for a in op.reads if (k := _ident(a)) in writer})))
            for a in op.writes:
                writer[_ident(a)] = i
        order = list(range(len(ops)))
        previous = -1  # issued ops keep their program order among themselves (each stream is a FIFO)
        for j in (j for j in colls if not inline[j]):
            order.remove(j)
            after = max([*producers[j], previous])
            order.insert(order.index(after) + 1 if after >= 0 else 0, j)
            previous = j
        t = Template(tuple(inline), issued, tuple(producers),
                     bool(ops) and ops[-1].collective is not None and not inline[-1], tuple(order))
        self._templates[key] = (plans, t)
        return t

    def _program(self, s: Program):
        """A device program's compute stream, and the host dispatching it in program order; collectives
        issued on the comm stream run as processes of their own (`_issue`). The host touches no
        simulated resource, so its dispatch times follow from the streams': async, the n-th op is
        ready n overheads after the start (the host runs ahead); sync, one overhead after the previous
        op ended. With a `step_overhead`, the host waits for each forward pass to end and spends that
        long before dispatching the next.

        `now` is the compute stream's clock. An op or block whose timeline is known and that starts
        with nothing of its device in flight on another stream touches nothing another stream uses, so it
        advances `now` without an event; the simulation clock catches up before anything that needs it
        (an op simulated event by event, a collective, a wait for an issued op, the end)."""
        env, device = self.env, s.devices[0]
        sync = self.hw.device.dispatch_mode == "sync"
        host_free = 0.0  # when the host has dispatched the op before this one
        now = 0.0
        step = self.hw.device.step_overhead
        passes: dict[int, int] = {}  # micro-batch -> its latest forward pass begun on this device
        tails: dict[tuple, Issued] = {}  # per communicator (group): the last collective issued on its stream
        flowing: dict[tuple, Issued] = {}  # tensor (absolute key) -> the issued collective writing it
        of_pass: dict[int, list[Issued]] = {}  # micro-batch -> collectives issued in its latest pass
        blocks = s.blocks
        # id(plans) -> (plans, Template, replayable, host time to dispatch them): looked up per block
        templates: dict[int, tuple] = {}
        last_seq = None
        for at, (block, plans) in enumerate(blocks):
            known = templates.get(id(plans))
            if known is None or known[0] is not plans:
                known = templates[id(plans)] = (plans, self._template(s, plans, sync),
                                                self.replay and self._block_replayable(s, plans),
                                                sum(p.overhead_s for p in plans))
            info = known[1]
            if info.last_issued and self._tail_waited(block, plans, blocks, at):
                info = self._template(s, plans, sync, tail=True)
            if block.seq != last_seq and block.seq > passes.get(block.micro, -1):
                # the pass reads a token sampled from the last one of its micro-batch: its ops end first
                earlier = passes.get(block.micro)
                passes[block.micro] = block.seq
                waited = of_pass.pop(block.micro, ())
                for c in waited:  # in issue order
                    now = yield from self._wait(c, now)
                for c in waited:
                    for k in c.writes:
                        if flowing.get(k) is c:
                            del flowing[k]
                if step and earlier is not None:  # the host waits for the pass, samples, schedules the next
                    host_free = max(host_free, now) + step
            last_seq = block.seq
            start = now
            reads_flowing = flowing and self._reads_flowing(block, plans, flowing)
            key = None
            # an issued collective still in flight shares the device's memory with its compute stream
            if tails:  # one that has ended no longer holds anything up (it ended before the clock)
                for k in [k for k, t in tails.items() if t.done.processed]:
                    del tails[k]
            quiet = not tails
            if known[2] and quiet and not info.issued and not reads_flowing:
                ahead = known[3]  # a host this far ahead never holds the block up
                lead = round(min(start - host_free, 0.0 if sync else ahead) * 1e12)
                key = (id(plans), lead)
                known = self._blocks.get(key)
                if known is not None and known[0] is plans:
                    now += known[1]
                    host_free += 0.0 if sync else ahead
                    self.records.append(BlockRecord(block, s.devices, start, known[2], known[1], s.links))
                    continue
            records: list = [None] * len(plans)
            here: dict[int, Issued] = {}  # this block's ops issued on a comm or the copy stream
            readies = None
            if info.issued and not sync:  # the host dispatches in program order, ahead of the device
                readies, t = [], host_free
                for p in plans:
                    t += p.overhead_s
                    readies.append(t)
            for i in info.order if readies is not None else range(len(plans)):
                p = plans[i]
                issue = p.stream != "compute" and not info.inline[i]
                waits = ()
                if reads_flowing or here:  # issued ops still writing what it reads
                    waits = [*reads_flowing.get(i, ())] if reads_flowing else []
                    if here:
                        waits += [here[j] for j in info.producers[i] if j in here]
                    if not issue:  # the compute stream waits for them
                        for c in waits:
                            now = yield from self._wait(c, now)
                if p.stream == "comm" and not issue:  # in line, in order behind its communicator's stream
                    tail = tails.pop(s.collectives[p.op.collective].group, None)
                    if tail is not None:
                        now = yield from self._wait(tail, now)
                op_start = now
                if readies is not None:
                    ready = readies[i]
                else:
                    ready = (op_start if sync and op_start > host_free else host_free) + p.overhead_s
                    host_free = ready
                if issue:  # its own stream waits for what it reads; the compute stream goes on
                    group = s.collectives[p.op.collective].group if p.op.collective is not None else "copy"
                    issued = Issued(env.event(), records, i, self._writes(block, p.op), tails.get(group))
                    fed = max((records[j].end_s for j in info.producers[i] if records[j] is not None), default=0.0)
                    env.process(self._issue(s, block, p, start, start + fed, ready, tails.get(group), issued,
                                            list(waits)))
                    tails[group] = here[i] = issued
                    of_pass.setdefault(block.micro, []).append(issued)
                    for k in issued.writes:
                        flowing[k] = issued
                    continue
                began = (ready if ready > now else now) + p.launch_s
                # a timeline measured on idle resources is the op's own; nothing in flight now: it replays
                idle = not tails or all(c.done.processed for c in tails.values())
                t = None
                if p.stream == "compute" and self.replay and idle:
                    t = self._timelines.get((p.unit, p.compute_s, p.loads, p.stores, p.chunks, p.run_bytes))
                if t is not None:
                    now = began + t.duration_s
                    records[i] = self._record(device, p, op_start - start, began - start, now - start, t, 0)
                    continue
                if began > env.now:
                    yield env.timeout(began - env.now)
                first_event = env.scheduled
                if p.op.collective is not None:
                    rec = yield from self._collective(s, block, p, op_start, first_event)
                    rec.exposed_s = rec.end_s - rec.start_s - rec.overhead_s - rec.stall_s.get("sync", 0.0)
                    records[i] = _relative(rec, start)
                else:
                    t = yield from self._simulate_op(device, p)
                    sig = (p.unit, p.compute_s, p.loads, p.stores, p.chunks, p.run_bytes)
                    known_t = self._timelines.get(sig)
                    if known_t is not None and known_t == t:  # came out as measured on idle resources: its
                        t = known_t  # record shares that timeline's figures
                    elif known_t is None and idle:  # only a timeline measured on idle resources is replayed
                        self._timelines[sig] = t
                    else:  # measured beside other traffic: never replayed, but equal ones share their figures
                        last = self._contended.get(sig)
                        if last is not None and last == t:
                            t = last
                        else:
                            self._contended[sig] = t
                    records[i] = self._record(device, p, op_start - start, began - start, env.now - start, t,
                                              env.scheduled - first_event)
                now = env.now
            if readies is not None:
                host_free = readies[-1]
            if info.issued:
                self.records.append((block, s.devices, start, records, s.links))
                continue
            records = tuple(records)
            if key is not None:
                self._blocks[key] = (plans, now - start, records)
            self.records.append(BlockRecord(block, s.devices, start, records, now - start, s.links))
        for waited in of_pass.values():  # the program ends when its last collective has
            for c in waited:
                now = yield from self._wait(c, now)
        if now > env.now:
            yield env.timeout(now - env.now)

    @staticmethod
    def _tail_waited(block: Block, plans: tuple[OpPlan, ...], blocks: list, at: int) -> bool:
        """Whether the block ends with a collective that what follows it waits for at once: the program
        ends, the next block opens the next pass of the same micro-batch (which waits for this pass's
        collectives), or its first op reads what the collective writes (an embedding's all-reduce)."""
        op = plans[-1].op if plans else None
        if op is None or op.collective is None:
            return False
        if at + 1 == len(blocks):
            return True
        nxt, nxt_plans = blocks[at + 1]
        if nxt.micro == block.micro and nxt.seq > block.seq:
            return True
        if not nxt_plans:
            return False
        wrote = {a.tensor.key(block.layer, block.seq) if not block.bound else a.tensor.name for a in op.writes}
        return any((a.tensor.key(nxt.layer, nxt.seq) if not nxt.bound else a.tensor.name) in wrote
                   for a in nxt_plans[0].op.reads)

    def _wait(self, c: Issued, now: float):
        """The compute stream (at `now`) waits for an issued collective; the wait is its exposed time.
        Returns the stream's clock after it."""
        if not c.done.processed:
            yield c.done
        if c.end <= now:
            return now
        # the wait is exposed communication where the stream was transferring: this op's transfers and
        # those of the ops queued before it that were still running when the wait began
        x = c
        while x is not None and x.end > now:
            x.slot[x.index].exposed_s += x.end - max(now, x.last)
            x = x.prev
        return c.end

    @staticmethod
    def _writes(block: Block, op) -> tuple:
        """What a collective writes, as absolute tensor identities."""
        return tuple(a.tensor.key(block.layer, block.seq) if not block.bound else a.tensor.name for a in op.writes)

    def _reads_flowing(self, block: Block, plans: tuple[OpPlan, ...], flowing: dict) -> dict[int, list[Issued]]:
        """Per op of the block, the issued collectives still writing what it reads."""
        out: dict[int, list[Issued]] = {}
        for i, p in enumerate(plans):
            for a in p.op.reads:
                c = flowing.get(a.tensor.key(block.layer, block.seq) if not block.bound else a.tensor.name)
                if c is not None and c not in out.get(i, ()):
                    out.setdefault(i, []).append(c)
        return out

    def _issue(self, s: Program, block: Block, p: OpPlan, block_start: float, fed: float, ready: float,
               tail: Issued | None, issued: Issued, waits: list[Issued]):
        """An op on a comm stream (a collective) or the copy stream (a prefetch): it starts when the op
        issued on that stream before it has ended, what it reads has been produced (`fed` by the compute
        stream, `waits` by other issued ops) and the host has dispatched it (`ready`)."""
        env = self.env
        for c in ([tail] if tail is not None else []) + waits:
            if not c.done.processed:
                yield c.done
            fed = max(fed, c.end)
        op_start = fed
        began = max(ready, op_start) + p.launch_s
        if began > env.now:
            yield env.timeout(began - env.now)
        first_event = env.scheduled
        if p.stream == "copy":  # its transfers on the device's memory
            t = yield from self._simulate_op(s.devices[0], p)
            rec = self._record(s.devices[0], p, op_start - block_start, began - block_start, env.now - block_start,
                               t, env.scheduled - first_event)
            rec.stream = "copy"
            issued.arrived = issued.last = began
        else:
            rec = yield from self._collective(s, block, p, op_start, first_event)
            rec.stream = "comm"
            issued.arrived = rec.start_s + rec.overhead_s
            issued.last = issued.arrived + rec.stall_s.get("sync", 0.0)
            rec = _relative(rec, block_start)
        issued.end = env.now
        issued.slot[issued.index] = rec
        issued.done.succeed()

    def _record(self, device: int, p: OpPlan, start: float, began: float, end: float, t: Timeline,
                events: int) -> OpRecord:
        """The op's record, times relative to its block's start: dispatched at `start`, running from
        `began` to `end` (level spans relative to `began`). Its per-level figures are the timeline's
        and its hits the plan's (shared, never modified)."""
        op = p.op
        hits = self._hits.get(id(p))
        if hits is None or hits[0] is not p:
            hits = self._hits[id(p)] = (p, {c: (h, n) for c, h, n in p.hits})
        return OpRecord(
            name=op.name, kind=op.kind, layer=op.layer, phase=op.phase, step=op.step,
            op_class=op.op_class, device=device, unit=p.unit, dtype=op.dtype, shape=op.shape,
            flops=op.flops, bytes=t.bytes, start_s=start, end_s=end, compute_s=t.compute_s, stall_s=t.stall_s,
            overhead_s=began - start, events=events, utilization=p.utilization,
            hits=hits[1], level_busy_s=t.busy, level_span_s=t.spans,
        )

    def _simulate_op(self, device: int, p: OpPlan):
        """Process body: run the op's chunks event by event; return its Timeline. Each wait is one event,
        at the latest landing of what it waits for (the machine knows every queued transfer's times);
        the compute unit's idle time goes to the level whose data landed last."""
        env, m = self.env, self.machine
        began = env.now
        stall: dict[str, float] = {}
        uses: dict[str, LevelUse] = {}

        def use(level: str) -> LevelUse:
            u = uses.get(level)
            if u is None:
                u = uses[level] = LevelUse()
            return u

        def until(t: float, blame: str):
            """Wait until `t`, the idle time charged to `blame`."""
            t0 = env.now
            if t > t0:
                yield env.timeout(t - t0)
                stall[blame] = stall.get(blame, 0.0) + env.now - t0

        def latest(landings: list[tuple[float, float, str]], which: int) -> tuple[float, str]:
            """The latest first-bytes (`which` 0) or last-bytes (1) landing, and its level's stall key."""
            t, level = max(((x[which], x[2]) for x in landings), key=lambda r: r[0])
            return t, "memory:" + level

        def issue(i: int) -> list[tuple[float, float, str]]:
            frac = p.chunks[i]
            return [m.move(device, lvl, b * frac, use(lvl), b, p.run_bytes) for lvl, b in p.loads]

        pending = issue(0) if p.loads else None
        stores: list[tuple[float, float, str]] = []
        busy = 0.0
        for i, frac in enumerate(p.chunks):
            current = pending
            pending = issue(i + 1) if p.loads and i + 1 < len(p.chunks) else None
            if current:
                yield from until(*latest(current, 0))
            stores += [m.move(device, lvl, b * frac, use(lvl), b, p.run_bytes) for lvl, b in p.stores]
            c = p.compute_s * frac
            start, end = m.compute(device, p.unit, c)
            if start > env.now:
                yield from until(start, "compute:queue")
            yield env.timeout(end - env.now)
            busy += c
            if current:
                yield from until(*latest(current, 1))
        if stores:
            yield from until(*latest(stores, 1))
        return Timeline(
            duration_s=env.now - began, compute_s=busy, stall_s=stall,
            uses={lvl: (u.bytes, u.busy_s, u.first_s - began, u.last_s - began) for lvl, u in uses.items()},
        )

    def _collective(self, s: Program, block: Block, p: OpPlan, start: float, first_event: int):
        env, plan = self.env, s.collectives[p.op.collective]
        overhead_s = env.now - start
        key = (block.seq, block.layer, p.op.name, plan.group)
        rdv = self._rendezvous.setdefault(key, {"arrived": 0, "left": 0, "done": env.event(), "last": 0.0,
                                                "use": {}, "mem": {}, "memory_s": 0.0})
        rdv["arrived"] += 1
        arrived = env.now
        if rdv["arrived"] == self._arrivals[plan.group]:  # the last one in starts the transfers
            rdv["last"] = env.now
            self._start_at_end_of_instant(key, plan, rdv)
        yield rdv["done"]
        rdv["left"] += 1
        if rdv["left"] == self._arrivals[plan.group]:
            del self._rendezvous[key]
        memory_s = rdv["memory_s"]
        wire = env.now - rdv["last"] - memory_s
        fabric = NET if plan.crosses_network else self.hw.interconnect.topology
        stall = {"sync": rdv["last"] - arrived, f"link:{fabric}": wire}
        if memory_s > 0:
            stall[f"memory:{plan.level}"] = memory_s
        use, mem = rdv["use"], rdv["mem"]
        op = p.op

        def links(d: int) -> tuple[dict, dict, dict]:
            """Device d's link bytes, and its links' and memory's busy times and spans."""
            own, buf = use.get(d, {}), mem.get(d)
            busy = {f"link:{lnk}": u.busy_s for lnk, u in own.items()}
            span = {f"link:{lnk}": (u.first_s, u.last_s) for lnk, u in own.items()}
            if buf is not None:
                busy[plan.level], span[plan.level] = buf.busy_s, (buf.first_s, buf.last_s)
            return {lnk: u.bytes for lnk, u in own.items()}, busy, span

        link_bytes, busy, span = links(s.devices[0])
        own = mem.get(s.devices[0])
        return OpRecord(
            name=op.name, kind=op.kind, layer=op.layer, phase=op.phase, step=op.step,
            op_class=op.op_class, device=s.devices[0], unit="link", dtype=op.dtype, shape=op.shape,
            flops=0.0, bytes={plan.level: own.bytes} if own is not None else {}, start_s=start, end_s=env.now,
            compute_s=0.0,
            stall_s={k: v for k, v in stall.items() if v > 0}, overhead_s=overhead_s,
            events=env.scheduled - first_event, link_bytes=link_bytes, level_busy_s=busy, level_span_s=span,
            # devices proved alike sent what the first sent over the images of its links (`Program.links`)
            peers={d: links(d) for d in s.devices[1:]} if s.links is None else {},
        )

    def _start_at_end_of_instant(self, key: tuple, plan: CollectivePlan, rdv: dict) -> None:
        """Collectives whose last participant arrives at the same instant start their transfers together,
        at the end of that instant, in a fixed order (by block, op and group): which one claims a shared
        memory level or link first must not depend on the order the simulation happened to process the
        arrivals in (replay and the exact path process them differently)."""
        env = self.env
        batch = self._instant.get(env.now)
        if batch is None:
            batch = self._instant[env.now] = []
            late = env.event()
            late._ok, late._value = True, None
            late.callbacks.append(lambda _event, t=env.now: self._start_batch(t))
            env.schedule(late, priority=LATE)
        batch.append((key, plan, rdv))

    def _start_batch(self, t: float) -> None:
        for _, plan, rdv in sorted(self._instant.pop(t), key=lambda e: _order(e[0])):
            self.env.process(self._transfers(plan, rdv))

    def _transfers(self, plan: CollectivePlan, rdv: dict):
        """Every transfer holds its route's links and, queued with whatever else the devices' memory is
        doing, reads its bytes on the sender and writes them on the receiver (the link latency, measured
        end to end, already covers the memory's). What the memory adds after the wires are done is
        charged to it."""
        env, m = self.env, self.machine
        memory_done = env.now
        if plan.level is not None:  # each device reads what it sends and writes what it receives, in one go
            latency = self.machine.levels[plan.level].latency
            free = m.free_at
            for d in plan.memory_bytes:  # a device run by another's program is as busy as that one
                rep = self._mirror.get(d)
                if rep is not None and free[(rep, plan.level)] > free[(d, plan.level)]:
                    free[(d, plan.level)] = free[(rep, plan.level)]
            for d, nbytes in plan.memory_bytes.items():
                use = rdv["mem"][d] = LevelUse()
                memory_done = max(memory_done, m.move(d, plan.level, nbytes, use)[1] - latency)
        sends = [env.process(m.send(t.links, t.wire_bytes, rdv["use"].setdefault(t.src, {}), t.bytes))
                 for t in plan.transfers]
        yield env.all_of(sends)
        if memory_done > env.now:
            rdv["memory_s"] = memory_done - env.now
            yield env.timeout(memory_done - env.now)
        if plan.latency_s:
            yield env.timeout(plan.latency_s)
        rdv["done"].succeed()


#: simpy event priority after its URGENT (0) and NORMAL (1): runs once everything else at its instant has
LATE = 2
#: the template of a block of compute ops only
_COMPUTE_ONLY = Template((), False, (), False)


def _order(key: tuple) -> tuple:
    """A rendezvous key as a sortable tuple (its layer or group may hold None)."""
    return tuple((x is None, x) if not isinstance(x, tuple) else (False, x) for x in key)


def _ident(a) -> tuple:
    """A tensor's identity relative to its block (its size is not part of it)."""
    t = a.tensor
    return (t.name, t.dl, t.scope)


def _finish(block: Block, devices: tuple[int, ...], start: float, records: list, links) -> BlockRecord:
    """The record of a block that issued collectives on the comm stream, once they have ended."""
    ops = tuple(records)
    return BlockRecord(block, devices, start, ops, max((r.end_s for r in ops), default=0.0), links)


def _relative(r: OpRecord, t0: float) -> OpRecord:
    """The record with its times counted from `t0` (its block's start), its spans from when it began."""
    began = r.start_s + r.overhead_s
    r.start_s -= t0
    r.end_s -= t0
    r.level_span_s = {k: (a - began, b - began) for k, (a, b) in r.level_span_s.items()}
    for d, (lb, busy, span) in r.peers.items():
        r.peers[d] = (lb, busy, {k: (a - began, b - began) for k, (a, b) in span.items()})
    return r


def simulate(programs: list[Program] | list[OpPlan], hw: Hardware, workload: str = "",
             replay: bool = True) -> RunResult:
    return Executor(hw, replay).run(programs, workload)
