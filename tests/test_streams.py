"""Streams and dependences on the toy node (four devices on a ring of 10 GB/s, 1 us links; no dispatch
cost): a collective issued on the comm stream hides under compute that does not need it, and the op
that reads its result waits for it; one whose result the next op reads runs in line."""

import pytest

from conftest import DATA, ROOT, load
from sim.config import load_hardware
from sim.engine import simulate
from sim.graph.ops import Access, Collective, Op, Tensor, loose
from sim.mapping import Footprint, Placement, plan_op
from sim.mapping.collectives import plan_collective
from sim.mapping.parallel import Program
from sim.pipeline import run

NODE = DATA / "toy-node.yaml"
SRAM = Placement(home={"weight": "sram", "kv_cache": "sram", "activation": "sram"},
                 footprint=Footprint(0, 0, 0), capacity={}, used={})
S = 100e3  # bytes all-reduced: 100 kB over one 10 GB/s link each way = 10 us, + 2 ring steps x 1 us
ALLREDUCE_S = S / 10e9 + 2e-6


def act(name: str) -> Access:
    return Access(Tensor(name, "activation", S), S)


def vector(name: str, reads: list[str], writes: str, us: float) -> Op:
    """An op of `us` microseconds on the 0.1 TFLOP/s vector unit, its 100 kB activations in SRAM (1 us
    each way at 100 GB/s: compute-bound)."""
    acts = act
    return Op(name=name, kind=name, op_class="elementwise", engine="vector", phase="prefill", step=0, layer=0,
              dtype="fp16", flops=us * 1e-6 * 0.1e12, reads=tuple(acts(n) for n in reads), writes=(acts(writes),))


def allreduce(name: str, tensor: str) -> Op:
    buf = act(tensor)
    return Op(name=name, kind=name, op_class="collective", engine="link", phase="prefill", step=0, layer=0,
              dtype="fp16", flops=0.0, reads=(buf,), writes=(buf,), collective=Collective("allreduce", S))


def timeline(ops: list[Op], level: str | None = None, placement: Placement = SRAM):
    """Run hand-made ops on devices 0 and 1 (one program for both), their collectives' buffers in
    `level` (None: the links only); device 0's records by name."""
    hw = load_hardware(NODE)
    plans = tuple(plan_op(op, hw, placement) for op in ops)
    colls = {op.collective: plan_collective(op.collective, (0, 1), hw, level) for op in ops if op.collective}
    result = simulate([Program(0, (0, 1), [(loose(ops), plans)], colls)], hw)
    return {r.name: r for r in result.ops if r.device == 0}, plans


def test_an_allreduce_hides_under_compute_that_does_not_need_it():
    """a (5 us) produces x; the all-reduce of x (12 us) goes to the comm stream; b (20 us) does not
    read x and runs at once beside it; c reads x and b's output: it starts when b ends, 20 us after
    a, by which time the all-reduce has long ended: none of it exposed."""
    ops = [vector("a", [], "x", 5), allreduce("ar", "x"), vector("b", [], "y", 20), vector("c", ["x", "y"], "z", 1)]
    r, plans = timeline(ops)
    a_end = r["a"].end_s
    assert r["ar"].stream == "comm" and r["b"].stream == "compute"
    assert r["ar"].start_s == pytest.approx(a_end) and r["ar"].duration_s == pytest.approx(ALLREDUCE_S, rel=1e-9)
    assert r["b"].start_s == pytest.approx(a_end)  # beside the all-reduce, not after it
    assert r["c"].start_s == pytest.approx(r["b"].end_s) and r["b"].end_s > r["ar"].end_s
    assert r["ar"].exposed_s == 0.0


def test_an_allreduce_longer_than_the_independent_compute_is_exposed_by_the_difference():
    """The same with b taking 4 us: c waits for the all-reduce; 12 - 4 = 8 us of it is exposed."""
    ops = [vector("a", [], "x", 5), allreduce("ar", "x"), vector("b", [], "y", 4), vector("c", ["x", "y"], "z", 1)]
    r, _ = timeline(ops)
    assert r["c"].start_s == pytest.approx(r["ar"].end_s, rel=1e-12)
    assert r["ar"].exposed_s == pytest.approx(r["ar"].end_s - r["b"].end_s, rel=1e-9)
    assert r["ar"].exposed_s == pytest.approx(ALLREDUCE_S - r["b"].duration_s, rel=1e-6)


def test_an_allreduce_the_next_op_reads_runs_in_line_and_is_wholly_exposed():
    """Reordered so that the op after the all-reduce reads its result (a tensor-parallel projection's
    all-reduce and its residual add): the compute stream waits for all of it."""
    ops = [vector("a", [], "x", 5), allreduce("ar", "x"), vector("c", ["x"], "z", 1), vector("b", [], "y", 20)]
    r, _ = timeline(ops)
    assert r["c"].start_s == pytest.approx(r["ar"].end_s) and r["b"].start_s == pytest.approx(r["c"].end_s)
    assert r["ar"].exposed_s == pytest.approx(r["ar"].duration_s)


def test_collectives_on_the_comm_stream_run_in_issue_order():
    """Two all-reduces issued back to back: the second starts when the first ends (one comm stream),
    though what it sends was ready before."""
    ops = [vector("a", [], "x", 5), vector("b", [], "y", 1), allreduce("ar1", "y"), allreduce("ar2", "x"),
           vector("c", [], "z", 50), vector("d", ["x", "y", "z"], "w", 1)]
    r, _ = timeline(ops)
    assert r["ar1"].start_s == pytest.approx(r["b"].end_s)
    assert r["ar2"].start_s == pytest.approx(r["ar1"].end_s)
    assert r["ar1"].exposed_s == r["ar2"].exposed_s == 0.0


def test_an_allreduce_and_a_weight_stream_contend_for_dram():
    """The all-reduce's buffers in DRAM (10 GB/s, as fast as a link): from a's end t0 each device reads
    its 100 kB and writes the 100 kB it receives there, DRAM busy [t0, t0 + 20 us]; the wires are done
    at t0 + 10 us, so 10 us of the all-reduce waits on DRAM. Meanwhile the compute stream runs c (2 us)
    and then b, which streams a 100 kB weight from DRAM: queued behind the all-reduce, its first bytes
    land at t0 + 20 us + 100 ns instead of t0 + 2 us + 100 ns. Without the all-reduce's DRAM traffic b
    takes 10.1 us (its 1 us of compute under the stream); with it, 18 us longer, charged to DRAM."""
    split = Placement(home={"weight": "dram", "kv_cache": "dram", "activation": "sram"},
                      footprint=Footprint(0, 0, 0), capacity={}, used={})
    w = Access(Tensor("w", "weight", S), S)
    b = Op(name="b", kind="b", op_class="gemv", engine="vector", phase="prefill", step=0, layer=0, dtype="fp16",
           flops=0.1e6, reads=(w,), writes=(Access(Tensor("y", "activation", 1e3), 1e3),))
    ops = [vector("a", [], "x", 5), allreduce("ar", "x"), vector("c", [], "u", 2), b, vector("d", ["x", "y"], "z", 1)]
    alone, _ = timeline(ops, None, split)
    shared, _ = timeline(ops, "dram", split)
    t0 = shared["a"].end_s
    assert shared["ar"].start_s == pytest.approx(t0) and shared["b"].start_s == pytest.approx(t0 + 2e-6, rel=1e-6)
    assert shared["ar"].bytes == {"dram": 2 * S}
    assert shared["ar"].stall_s["memory:dram"] == pytest.approx(10e-6, rel=1e-6)
    assert shared["ar"].stall_s["link:ring"] == pytest.approx(10e-6 + 2e-6, rel=1e-6)
    assert alone["b"].duration_s == pytest.approx(10e-6 + 100e-9, rel=1e-3)
    assert shared["b"].duration_s - alone["b"].duration_s == pytest.approx(18e-6, rel=1e-3)
    assert shared["b"].stall_s["memory:dram"] - alone["b"].stall_s["memory:dram"] == pytest.approx(18e-6, rel=1e-3)


def test_a_pass_starts_after_the_last_passs_collectives_end():
    """Tensor parallel over two toy devices, two micro-batches: the logits all-gather ending a micro-batch's
    pass is issued on the comm stream (the other micro-batch's pass comes next and does not need it);
    that micro-batch's next pass, whose token is sampled from those logits, starts after it ends. With
    one micro-batch the all-gather runs in line: the next pass would wait for it at once anyway."""
    hw = load_hardware(NODE)
    wl, _ = load(DATA / "toy-gpt.yaml", parallelism__tensor=2, parallelism__microbatches=2)
    ops = [r for r in run(wl, hw).ops if r.device == 0]
    for micro in (0, 1):
        mine = [r for r in ops if r.micro == micro]
        gathers = [r for r in mine if r.kind == "logits_allgather"]
        embeds = [r for r in mine if r.kind == "embed"]
        assert len(gathers) == len(embeds) == wl.scenario.new_tokens + 1
        assert all(g.stream == "comm" for g in gathers[: -1 if micro == 1 else None])  # the run's last: in line
        for g, e in zip(gathers, embeds[1:]):
            assert e.start_s >= g.end_s - 1e-15
    wl, _ = load(DATA / "toy-gpt.yaml", parallelism__tensor=2)
    assert {r.stream for r in run(wl, hw).ops if r.kind == "logits_allgather"} == {"compute"}


# -- pipelines: the bubble emerges from the schedule -------------------------------------------------

def pipeline(stages: int, micro: int, schedule: str, backward: bool, t_f: float = 10.0, t_b: float = 20.0):
    """Hand-made stages of equal work over free links (1 PB/s, no latency): each forward of a micro-batch
    takes `t_f` us, each backward `t_b` us; activations go forward through receive and send pairs, their
    gradients back."""
    from sim.graph.schedule import stage_order

    hw = load_hardware(NODE, [("interconnect.link.bandwidth", "1 PB/s"), ("interconnect.link.latency", "0 us")])
    size = 1e3

    def tensor(name: str) -> Access:
        return Access(Tensor(name, "activation", size), size)

    def p2p(name: str, what: str, src: int, dst: int) -> Op:
        return Op(name=name, kind="send", op_class="collective", engine="link", phase="prefill", step=0,
                  layer=0, dtype="fp16", flops=0.0, reads=(tensor(what),), writes=(tensor(what),),
                  collective=Collective("p2p", size, src, dst))

    programs = []
    for s in range(stages):
        ops: list[Op] = []
        for k, d in stage_order(s, stages, micro, schedule, backward):
            come, go = (s - 1, s + 1) if d == "F" else (s + 1, s - 1)
            x, y = f"{d}{k}.s{come}", f"{d}{k}.s{s}"
            if 0 <= come < stages:
                ops.append(p2p(f"{d}{k}.{come}to{s}", x, come, s))
            op = vector(f"{d}{k}.work{s}", [x], y, t_f if d == "F" else t_b)
            ops.append(op)
            if 0 <= go < stages:
                ops.append(p2p(f"{d}{k}.{s}to{go}", y, s, go))
        plans = tuple(plan_op(op, hw, SRAM) for op in ops)
        colls = {op.collective: plan_collective(op.collective, (op.collective.src_stage, op.collective.dst_stage), hw)
                 for op in ops if op.collective}
        programs.append(Program(s, (s,), [(loose(ops), plans)], colls))
    return simulate(programs, hw)


@pytest.mark.parametrize("schedule,backward", [("gpipe", False), ("gpipe", True), ("1f1b", True)])
@pytest.mark.parametrize("micro", [1, 4, 16])
def test_pipeline_bubble_is_p_minus_1_over_m_plus_p_minus_1(schedule, backward, micro):
    """p = 4 equal stages over free links: the step takes (m + p - 1) stage-times of one micro-batch and
    each stage idles (p - 1) of them, for GPipe and 1F1B alike, forward only or forward and backward."""
    from sim.report import summarize

    p = 4
    result = pipeline(p, micro, schedule, backward)
    s = summarize(result)
    work = {r.name.split(".")[0][0]: r.duration_s for r in result.ops if "work" in r.name}  # 10 us + latencies
    per_micro = work["F"] + work.get("B", 0.0)
    assert s["total_s"] == pytest.approx((micro + p - 1) * per_micro, rel=1e-6)
    assert s["bubble_fraction"] == pytest.approx((p - 1) / (micro + p - 1), rel=1e-6)
    assert s["bubble_s"] == pytest.approx((p - 1) * per_micro, rel=1e-6)


def test_1f1b_runs_one_forward_one_backward_in_the_steady_state():
    from sim.graph.schedule import stage_order

    assert stage_order(0, 4, 6, "1f1b") == [(0, "F"), (1, "F"), (2, "F"), (3, "F"), (0, "B"), (4, "F"), (1, "B"),
                                            (5, "F"), (2, "B"), (3, "B"), (4, "B"), (5, "B")]
    assert stage_order(3, 4, 6, "1f1b")[:4] == [(0, "F"), (0, "B"), (1, "F"), (1, "B")]
    assert stage_order(1, 4, 3, "gpipe") == [(0, "F"), (1, "F"), (2, "F"), (2, "B"), (1, "B"), (0, "B")]
    for s in range(4):
        order = stage_order(s, 4, 6, "1f1b")
        assert sorted(order) == sorted(stage_order(s, 4, 6, "gpipe"))
        # never more than p - s micro-batches in flight (forward done, backward not yet)
        live = peak = 0
        for _, d in order:
            live += 1 if d == "F" else -1
            peak = max(peak, live)
        assert peak == min(4 - s, 6)


def test_a_transformer_pipeline_fills_with_micro_batches():
    """An 8-layer toy GPT prefill over 4 stages on free links: with one micro-batch each stage idles 3/4
    of the run; with more, stage 0 starts the next micro-batch while stage 1 runs the first, the run
    gets shorter and the bubble approaches (p - 1) / (m + p - 1) (the embedding and the head make the
    first and last stages a little longer than the rest)."""
    from sim.report import summarize

    hw = load_hardware(NODE, [("interconnect.link.bandwidth", "1 PB/s"), ("interconnect.link.latency", "0 us")])
    totals, bubbles = [], []
    for m in (1, 4, 16):
        wl, _ = load(DATA / "toy-gpt.yaml", model__layers=8, parallelism__pipeline=4, parallelism__microbatches=m,
                     scenario__batch=16, scenario__phase="prefill", scenario__new_tokens=0, scenario__prompt_tokens=32)
        result = run(wl, hw)
        s = summarize(result)
        totals.append(s["total_s"])
        bubbles.append(s["bubble_fraction"])
        assert s["bubble_fraction"] == pytest.approx(3 / (m + 3), rel=0.2)
        if m > 1:
            first = {d: [r for r in result.ops if r.device == d and r.micro == k] for d, k in ((0, 1), (1, 0))}
            assert min(r.start_s for r in first[0]) < max(r.end_s for r in first[1])  # the stages interleave
            assert all(".mb" in r.name for r in result.ops)
    assert bubbles[0] == pytest.approx(0.75, rel=1e-2)  # the sends still read and write SRAM
    assert totals[0] > totals[1] > totals[2] and bubbles[0] > bubbles[1] > bubbles[2]


def test_the_micro_batched_70b_pipeline_reports_its_bubble_and_interleaves_in_the_trace(tmp_path):
    """The issue's command (one new token): the report shows the bubble and the exposed communication; in
    the trace, stage s runs micro-batch k while stage s + 1 runs micro-batch k - 1."""
    import json

    from conftest import cli

    trace = tmp_path / "pp.json"
    done = cli("run", "workloads/llama2-70b-tp8.yaml", "--set", "parallelism.tensor=2", "--set",
               "parallelism.pipeline=4", "--set", "parallelism.microbatches=8", "--set", "scenario.batch=8",
               "--set", "scenario.new_tokens=1", "--trace", str(trace))
    assert done.returncode == 0, done.stderr
    assert "bubble" in done.stdout and "8 micro-batches" in done.stdout and "communication exposed" in done.stdout
    spans: dict[tuple[int, str], list[float]] = {}
    for e in json.loads(trace.read_text())["traceEvents"]:
        if e["ph"] == "X" and ".mb" in e["name"] and not e["name"].startswith("wait"):
            span = spans.setdefault((e["pid"], e["name"].split(".")[1]), [float("inf"), 0.0])
            span[0], span[1] = min(span[0], e["ts"]), max(span[1], e["ts"] + e["dur"])
    for stage in range(3):  # rank 0 of each stage is device 2 * stage
        ahead, behind = spans[(2 * stage, "mb1")], spans[(2 * stage + 2, "mb0")]
        assert ahead[0] < behind[1] and behind[0] < ahead[1]  # they overlap in time


def test_weights_in_host_memory_are_prefetched_a_layer_ahead_on_the_copy_stream():
    """A 6-layer toy GPT whose weights do not fit the 512 KiB device DRAM lives in host memory behind a
    1 GB/s link, but for what the DRAM's room could take (the first layers, the norms, the embedding).
    With `offload_prefetch`, a copy op on the copy stream moves each remaining layer's weights into a
    staging buffer in DRAM while the layer before computes; the layer's first matmul waits for its copy,
    and each copy takes its bytes over the link: every byte that crosses the link is a copy's. The
    buffer's room is room the fill does not get: on this toy, whose compute hides little of the link,
    the prefetch moves more bytes over it than the plain run, and takes longer."""
    from sim.report import summarize

    hw = load_hardware(DATA / "toy-host-hw.yaml")
    plain, _ = load(DATA / "toy-gpt.yaml", model__layers=6, scenario__new_tokens=2)
    ahead, _ = load(DATA / "toy-gpt.yaml", model__layers=6, scenario__new_tokens=2, scenario__offload_prefetch=True)
    a, b = run(plain, hw), run(ahead, hw)
    assert a.placement.home["weight"] == b.placement.home["weight"] == "host"
    staged = b.placement.staged["dram"]
    assert staged > 0 and b.placement.used["dram"] <= b.placement.capacity["dram"]
    assert b.placement.partial["weight"]["dram"] < a.placement.partial["weight"]["dram"]
    sa, sb = summarize(a), summarize(b)
    assert sb["bytes_per_level"]["host"] > sa["bytes_per_level"]["host"]
    ops = b.ops
    assert sum(r.bytes.get("host", 0.0) for r in ops if r.kind == "prefetch") == pytest.approx(
        sb["bytes_per_level"]["host"])
    copies = [r for r in ops if r.kind == "prefetch"]
    assert copies and all(r.stream == "copy" and r.unit == "copy" for r in copies)
    for r in copies:  # the link's 1 GB/s (its latency and a dispatch on top)
        assert r.duration_s - r.overhead_s == pytest.approx(r.bytes["host"] / 1e9 + 1.1e-6, rel=1e-3)
    layers = [(r.phase, r.step, r.layer) for r in ops if r.kind == "qkv"]
    waited = 0
    for phase, step, layer in layers[1:]:
        mine = [r for r in ops if (r.phase, r.step, r.layer) == (phase, step, layer)]
        # the first op that reads a copied weight (a norm's small weight may have been filled into the DRAM)
        first = min((r for r in mine if r.op_class in ("gemm", "gemv")), key=lambda r: r.start_s)
        before = [r for r in ops if (r.phase, r.step, r.layer) == (phase, step, layer - 1) and r.kind == "prefetch"]
        if not before:  # its weights were filled into the device DRAM's room: read there, nothing to copy
            assert all(not r.bytes.get("host") for r in mine if r.op_class in ("gemm", "gemv"))
            continue
        copy = max(before, key=lambda c: c.end_s)  # its copy: the last one the block before started with
        assert copy.end_s <= first.start_s + 1e-15 and copy.start_s < first.start_s
        waited += 1
    assert waited


def test_zero_3_runs_on_more_memory_wherever_it_ran_on_less():
    """ZeRO-3's two blocks of gathered weights keep their room in the device's innermost level from the
    start: GPT-2 training on 2 replicas ran at 700 MiB of HBM but was refused at 900 (the classes had
    taken the room) and at 250 (its shards in host memory, the buffer searched only there); review,
    2026-12-05."""
    from sim.report import summarize

    steps = []
    for mib in (250, 900, 1300):
        wl, hw = load(ROOT / "workloads/gpt2-train.yaml", parallelism__data=2, training__zero=3, scenario__batch=2,
                      device__memory__hbm__capacity=f"{mib} MiB")
        result = run(wl, hw)
        assert result.placement.staged["hbm"] > 0
        steps.append(summarize(result)["total_s"])
    assert steps[0] >= steps[1] >= steps[2]
