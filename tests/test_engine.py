"""Engine invariants on the toy machine: roofline agreement, time conservation, monotonicity,
contention, bounded events, determinism."""

import dataclasses

import pytest

from conftest import DATA, load
from sim.engine import simulate
from sim.engine.machine import LevelUse, Machine
from sim.graph import build_graph
from sim.graph.ops import Access, Op, Tensor
from sim.mapping import Footprint, Placement, place, plan, plan_op, roofline_s
from sim.mapping.plan import MAX_CHUNKS
from sim.pipeline import run
from sim.report import to_json


@pytest.fixture
def hw():
    return load(DATA / "toy-gpt.yaml")[1]


def placement(weight="dram", activation="sram"):
    return Placement(home={"weight": weight, "kv_cache": "dram", "activation": activation},
                     footprint=Footprint(0, 0, 0), capacity={}, used={})


def single_op(flops, weight_bytes, act_bytes, out_bytes, engine="matrix"):
    w = Tensor("w", "weight", weight_bytes)
    x, y = Tensor("x", "activation", act_bytes), Tensor("y", "activation", out_bytes)
    return Op(name="op", kind="test", op_class="gemm", engine=engine, phase="prefill", step=0, layer=0,
              dtype="fp16", flops=flops, reads=(Access(w, weight_bytes), Access(x, act_bytes)),
              writes=(Access(y, out_bytes),))


def test_memory_bound_op_timeline_by_hand(hw):
    """1 MB of weights over 10 GB/s DRAM = 100 us; 1 MFLOP at 1 TFLOP/s = 1 us; 1 us dispatch,
    100 ns DRAM latency: 101.1 us, of which 1 us busy, 1 us overhead, the rest waiting on DRAM."""
    p = plan_op(single_op(1e6, 1e6, 1e3, 1e3), hw, placement())
    rec = simulate([p], hw).ops[0]
    assert rec.duration_s == pytest.approx(101.1e-6, rel=1e-9)
    assert rec.overhead_s == pytest.approx(1e-6)
    assert rec.compute_s == pytest.approx(1e-6)
    assert rec.bound == "memory:dram"
    assert rec.stall_s["memory:dram"] == pytest.approx(99.1e-6, rel=1e-6)
    # the weights cross the SRAM on their way in; the activations live there
    assert rec.bytes == {"dram": 1e6, "sram": 1e6 + 2e3}


def test_short_transfers_run_at_their_size_efficiency():
    """DRAM reaches half its bandwidth on 1 KiB and all of it on 1 MiB (log-interpolated between): 1 KiB
    of weights takes 1024 B / 5 GB/s = 204.8 ns, 1 MiB takes 1048576 B / 10 GB/s; roofline agrees."""
    hw = load(DATA / "toy-gpt.yaml", device__memory__dram__efficiency_by_size={"1 KiB": 0.5, "1 MiB": 1.0})[1]
    dram = hw.levels["dram"]
    assert dram.bandwidth_for(1024) == pytest.approx(5e9) and dram.bandwidth_for(2**20) == pytest.approx(1e10)
    assert dram.bandwidth_for(2**15) == pytest.approx(7.5e9)  # halfway in log2 between 2^10 and 2^20
    assert dram.bandwidth_for(100) == pytest.approx(5e9) and dram.effective_bandwidth == pytest.approx(1e10)
    for weight, dram_s in ((1024, 204.8e-9), (2**20, 2**20 / 1e10)):
        p = plan_op(single_op(1.0, weight, 8, 8), hw, placement())
        rec = simulate([p], hw).ops[0]
        assert rec.duration_s == pytest.approx(1e-6 + 100e-9 + dram_s, rel=1e-6)
        assert rec.duration_s == pytest.approx(roofline_s(p, hw), rel=1e-9)


def test_a_matmul_reading_short_weight_rows_runs_at_its_run_efficiency():
    """DRAM reaches half its bandwidth on 1 KiB runs and all of it on 64 KiB ones: two fp16 GEMVs with a
    1 MiB weight, 2048 x 256 (512 B rows) and 64 x 8192 (16 KiB rows: 0.5 + 0.5 x 4/6 by log
    interpolation), stream it at 5 and 8.33 GB/s; the engine and the roofline agree, and an op other
    than a matmul has no run."""
    from sim.validate.cases import matmul_op

    hw = load(DATA / "toy-gpt.yaml", device__memory__dram__efficiency_by_run={"1 KiB": 0.5, "64 KiB": 1.0})[1]
    dram = hw.levels["dram"]
    assert dram.bandwidth_for(2**20, run=512) == pytest.approx(5e9)
    assert dram.bandwidth_for(2**20, run=16 * 1024) == pytest.approx(1e10 * (0.5 + 0.5 * 4 / 6))
    assert dram.bandwidth_for(2**20) == pytest.approx(1e10)  # no run: long
    for k, n, rate in ((2048, 256, 5e9), (64, 8192, 1e10 * (0.5 + 0.5 * 4 / 6))):
        op = matmul_op("gemv", 1, n, k, "fp16")
        p = plan_op(op, hw, placement(activation="dram"))
        assert p.run_bytes == 2 * n
        rec = simulate([p], hw).ops[0]
        assert rec.level_busy_s["dram"] == pytest.approx(sum(b for lvl, b in p.loads + p.stores if lvl == "dram")
                                                         / rate, rel=1e-9)
        assert rec.duration_s == pytest.approx(roofline_s(p, hw), rel=1e-9)
    assert plan_op(single_op(1.0, 1024, 8, 8), hw, placement()).run_bytes == 0.0
    # the same 2048 x 256 weight stored 256 x 2048 (an embedding table read as the LM head): 4 KiB rows
    nk = dataclasses.replace(matmul_op("gemv", 1, 256, 2048, "fp16"), weight_layout="nk")
    assert plan_op(nk, hw, placement(activation="dram")).run_bytes == 2 * 2048


def test_compute_bound_op_timeline_by_hand(hw):
    """1 GFLOP at 1 TFLOP/s = 1 ms; its 10 KB of traffic hides behind compute; latency shows once."""
    p = plan_op(single_op(1e9, 1e4, 1e3, 1e3), hw, placement())
    rec = simulate([p], hw).ops[0]
    assert rec.duration_s == pytest.approx(1e-6 + 100e-9 + 1e-3, rel=1e-9)
    assert rec.bound == "compute"


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.5, 0.9, 1.0, 1.1, 2.0, 10.0, 100.0])
@pytest.mark.parametrize("split", ["dram+sram", "all-dram"])
def test_uncontended_op_matches_roofline_within_1pct(hw, ratio, split):
    weight_bytes = 2e6  # 200 us of DRAM traffic, far above the 100 ns latency
    flops = ratio * 200e-6 * 1e12
    where = placement() if split == "dram+sram" else placement(activation="dram")
    p = plan_op(single_op(flops, weight_bytes, 1e5, 1e5), hw, where)
    rec = simulate([p], hw).ops[0]
    assert rec.duration_s == pytest.approx(roofline_s(p, hw), rel=0.01)


def test_tiny_op_pays_at_most_one_extra_latency(hw):
    p = plan_op(single_op(10, 100, 10, 10, engine="vector"), hw, placement(activation="dram"))
    rec = simulate([p], hw).ops[0]
    assert roofline_s(p, hw) <= rec.duration_s <= roofline_s(p, hw) + 100e-9 + 1e-15


def test_time_adds_up_for_every_op(toy):
    wl, hw = toy
    result = run(wl, hw)
    prev_end = 0.0
    for r in result.ops:
        assert r.compute_s + sum(r.stall_s.values()) + r.overhead_s == pytest.approx(r.duration_s, abs=1e-15)
        assert r.start_s == pytest.approx(prev_end, abs=1e-15)  # one stream: back to back
        prev_end = r.end_s
        assert all(v >= 0 for v in r.stall_s.values())


def _timeline(**overrides):
    # no dispatch cost, so the toy is not host-bound and every resource shows in the end time
    wl, hw = load(DATA / "toy-gpt.yaml", device__dispatch_overhead=0, **overrides)
    return [(r.end_s, r.duration_s - r.overhead_s) for r in run(wl, hw).ops]


@pytest.mark.parametrize("key,value,binding", [
    ("device__memory__dram__bandwidth", "20 GB/s", True),
    ("device__memory__sram__bandwidth", "200 GB/s", True),
    ("device__compute__peak__fp16", "2 TFLOP/s", False),  # the toy is memory-bound: no gain, no loss
    ("device__compute__vector", "0.2 TFLOP/s", True),
])
def test_doubling_a_resource_never_slows_anything(key, value, binding):
    """Every op ends no later and spends no longer on the device (the wait for dispatch may grow
    when the device gets ahead of the host)."""
    base, faster = _timeline(), _timeline(**{key: value})
    for (end_f, work_f), (end_b, work_b) in zip(faster, base, strict=True):
        assert end_f <= end_b * (1 + 1e-12)
        assert work_f <= work_b * (1 + 1e-12)
    if binding:
        assert faster[-1][0] < base[-1][0]


def test_transfers_on_one_level_contend_on_different_levels_overlap(hw):
    """Two 1 MB moves queued at t=0: their last bytes' landing times."""
    def finish_times(level_a, level_b):
        m = Machine(hw)
        return sorted(m.move(0, lvl, 1e6, LevelUse())[1] for lvl in (level_a, level_b))

    # one DRAM at 10 GB/s: the second waits for the first (100 us each), +100 ns latency
    assert finish_times("dram", "dram") == pytest.approx([100.1e-6, 200.1e-6])
    # DRAM and SRAM are separate servers
    assert finish_times("dram", "sram") == pytest.approx([10.01e-6, 100.1e-6])


def test_contention_inside_an_op(hw):
    """Weights and activations in one level share its bandwidth; in two levels they do not."""
    op = single_op(1e6, 1e6, 1e6, 1e3)
    shared = simulate([plan_op(op, hw, placement(activation="dram"))], hw).ops[0]
    split = simulate([plan_op(op, hw, placement(activation="sram"))], hw).ops[0]
    assert shared.duration_s > 1.9 * (split.duration_s - 1.1e-6)


def test_events_per_op_are_bounded_and_independent_of_bytes(hw):
    """At most three waits per chunk (its first bytes, its compute, its last bytes) and one for the
    stores, however many transfers and bytes: the levels' queues are computed, not simulated."""
    small = simulate([plan_op(single_op(2e8, 1e6, 1e5, 1e5), hw, placement())], hw).ops[0]
    p = plan_op(single_op(2e11, 1e9, 1e8, 1e8), hw, placement())
    big = simulate([p], hw).ops[0]
    assert 0 < small.events == big.events <= 3 * len(p.chunks) + 1


def test_whole_run_events_scale_with_ops_not_bytes():
    wl, hw = load(DATA / "toy-gpt.yaml")
    wl2, hw2 = load(DATA / "toy-gpt.yaml", model__hidden=256, model__ffn=1024,
                    device__memory__dram__capacity="64 GiB")
    a, b = run(wl, hw), run(wl2, hw2)
    assert len(a.ops) == len(b.ops)
    assert max(r.events for r in a.ops + b.ops) <= 3 * MAX_CHUNKS + 1  # O(chunks), whatever the bytes
    # 16x the weight bytes: at most more chunks per op (<= 4), never events per byte
    assert b.events <= 4 * a.events


@pytest.mark.parametrize("workload", ["toy-gpt.yaml"])
def test_replayed_timelines_equal_full_simulation(workload):
    """Reusing the timeline of an op with an identical plan gives the same records as simulating
    every op event by event."""
    from sim.engine import simulate
    from sim.mapping.parallel import map_devices

    for overrides in ({}, {"device__dispatch_overhead": 0}, {"scenario__batch": 8}):
        wl, hw = load(DATA / workload, **overrides)
        plans, _ = map_devices(build_graph(wl), wl, hw)
        fast, full = simulate(plans, hw, replay=True), simulate(plans, hw, replay=False)
        assert fast.events < full.events
        for a, b in zip(fast.ops, full.ops, strict=True):
            assert a.name == b.name
            assert a.end_s == pytest.approx(b.end_s, rel=1e-12, abs=1e-18)
            assert a.compute_s == pytest.approx(b.compute_s, rel=1e-12, abs=1e-18)
            assert a.stall_s.keys() == b.stall_s.keys()
            assert all(a.stall_s[k] == pytest.approx(b.stall_s[k], rel=1e-9, abs=1e-18) for k in a.stall_s)
            assert a.bytes == pytest.approx(b.bytes)


def test_same_inputs_same_bytes(toy):
    wl, hw = toy
    assert to_json(run(wl, hw)) == to_json(run(wl, hw))


def test_plan_covers_every_op_once(toy):
    wl, hw = toy
    g = build_graph(wl)
    plans = plan(g, hw, place(g, hw))
    assert len(plans) == len(g.ops)
    assert [p.op.kind for p in plans] == [o.kind for o in g.ops]
    assert all(abs(sum(p.chunks) - 1) < 1e-12 and len(p.chunks) <= 4 for p in plans)


def test_launch_overhead_separates_ops_even_when_the_host_runs_ahead():
    """A GPU starts each kernel ~1 us after the previous one ends however far ahead the host is: with a
    2 us launch overhead, every non-collective op of a run starts 2 us later than without (async host,
    0 dispatch: the device never waits for the host), shows it as overhead, and the roofline agrees."""
    wl, hw0 = load(DATA / "toy-gpt.yaml", device__dispatch_overhead="0 us")
    _, hw1 = load(DATA / "toy-gpt.yaml", device__dispatch_overhead="0 us", device__launch_overhead="2 us")
    r0, r1 = run(wl, hw0), run(wl, hw1)
    ops = [r for r in r1.ops if r.unit != "link"]
    end0, end1 = max(r.end_s for r in r0.ops), max(r.end_s for r in r1.ops)
    assert end1 == pytest.approx(end0 + 2e-6 * len(ops), rel=1e-9)
    assert all(r.overhead_s == pytest.approx(2e-6) for r in ops)
    p = plan_op(single_op(1e6, 1e6, 1e3, 1e3), hw1, placement())
    assert simulate([p], hw1).ops[0].duration_s == pytest.approx(roofline_s(p, hw1), rel=1e-9)


def test_matmul_overhead_is_paid_by_matrix_ops_only():
    """A 3 us matmul overhead delays every matmul-like op (GEMM, GEMV, attention) by 3 us on top of the
    launch, and no other op: the run grows by 3 us per such op, and the roofline agrees."""
    wl, hw0 = load(DATA / "toy-gpt.yaml", device__dispatch_overhead="0 us", device__launch_overhead="1 us")
    _, hw1 = load(DATA / "toy-gpt.yaml", device__dispatch_overhead="0 us", device__launch_overhead="1 us",
                  device__compute__matmul_overhead="3 us")
    r0, r1 = run(wl, hw0), run(wl, hw1)
    matrix = [r for r in r1.ops if r.op_class in ("gemm", "gemv", "attention")]
    assert 0 < len(matrix) < len([r for r in r1.ops if r.unit != "link"])
    end0, end1 = max(r.end_s for r in r0.ops), max(r.end_s for r in r1.ops)
    assert end1 == pytest.approx(end0 + 3e-6 * len(matrix), rel=1e-9)
    assert all(r.overhead_s == pytest.approx(4e-6 if r.op_class in ("gemm", "gemv", "attention") else 1e-6)
               for r in r1.ops if r.unit != "link")
    p = plan_op(single_op(1e6, 1e6, 1e3, 1e3), hw1, placement())
    assert simulate([p], hw1).ops[0].duration_s == pytest.approx(roofline_s(p, hw1), rel=1e-9)


def test_a_kernel_with_its_own_costs_pays_them_and_no_other_op_does():
    """GELU at 10 GFLOP/s (the vector units' 100) and 7 us dispatch (others' 1 us), sync host: each GELU op
    (8 FLOPs per element) computes 10x longer and is dispatched 6 us later; every other op is unchanged.
    The run grows by exactly the GELUs' extra compute and dispatch; the roofline agrees."""
    base = {"device__dispatch_overhead": "1 us", "device__dispatch_mode": "sync"}
    wl, hw0 = load(DATA / "toy-gpt.yaml", **base)
    _, hw1 = load(DATA / "toy-gpt.yaml", device__kernels={"gelu": {"dispatch": "7 us", "vector": "10 GFLOP/s"}},
                  **base)
    assert hw1.device.dispatch_for("add") == 1e-6 and hw1.device.vector_for("layernorm") == 1e11
    r0, r1 = run(wl, hw0), run(wl, hw1)
    gelu = [(a, b) for a, b in zip(r0.ops, r1.ops) if b.kind == "act"]
    assert len(gelu) == 4  # one layer, a prefill and three decode steps
    for a, b in gelu:
        assert b.compute_s == pytest.approx(10 * a.compute_s, rel=1e-12) and a.compute_s > 0
        assert b.overhead_s == pytest.approx(a.overhead_s + 6e-6, rel=1e-9)
    for a, b in zip(r0.ops, r1.ops):
        if b.kind != "act":
            assert b.compute_s == a.compute_s and b.duration_s == pytest.approx(a.duration_s, rel=1e-9)
    grown = sum(b.duration_s - a.duration_s for a, b in gelu)
    assert max(r.end_s for r in r1.ops) == pytest.approx(max(r.end_s for r in r0.ops) + grown, rel=1e-9)
    assert all(b.duration_s - a.duration_s >= 6e-6 + 0.9 * (b.compute_s - a.compute_s) for a, b in gelu)
    act = next(op for op in build_graph(wl).ops if op.kind == "act")
    assert act.kernel == "gelu"
    p = plan_op(act, hw1, placement())
    assert p.overhead_s == 7e-6 and p.compute_s == pytest.approx(act.flops / 1e10)
    assert simulate([p], hw1).ops[0].duration_s == pytest.approx(roofline_s(p, hw1), rel=1e-9)


def test_a_kernels_fixed_time_replaces_the_matmul_overhead_for_its_ops_only():
    """GELU's own 3 us and matmul's own 5 us of fixed device time (the general matmul overhead 2 us, the
    launch 1 us, the host never in the way): every GELU op starts 3 us later, every matmul 3 us later
    than with the general overhead, the rest unchanged; the run grows by exactly that."""
    base = {"device__dispatch_overhead": "0 us", "device__launch_overhead": "1 us",
            "device__compute__matmul_overhead": "2 us"}
    wl, hw0 = load(DATA / "toy-gpt.yaml", **base)
    _, hw1 = load(DATA / "toy-gpt.yaml", device__kernels={"gelu": {"fixed": "3 us"}, "matmul": {"fixed": "5 us"}},
                  **base)
    r0, r1 = run(wl, hw0), run(wl, hw1)
    grown = 0.0
    for a, b in zip(r0.ops, r1.ops):
        extra = 3e-6 if b.kind == "act" or b.op_class in ("gemm", "gemv", "attention") else 0.0
        assert b.overhead_s == pytest.approx(a.overhead_s + extra, abs=1e-12)
        grown += extra
    assert grown > 0
    assert max(r.end_s for r in r1.ops) == pytest.approx(max(r.end_s for r in r0.ops) + grown, rel=1e-9)


def test_a_linear_with_a_bias_pays_its_own_dispatch_or_else_the_matmuls():
    """GPT-2's projections have biases: their kernel is `linear` (eager numpy: `x @ w`, then `+= b`),
    the unfused attention's matmuls and Llama's bias-free projections are `matmul`. A linear without
    a cost of its own takes matmul's, then the device-wide one; the summary's host time agrees."""
    from sim.report import summarize

    base = {"device__dispatch_overhead": "1 us", "device__dispatch_mode": "sync"}
    wl, _ = load(DATA / "toy-gpt.yaml", **base)
    ops = build_graph(wl).ops
    kernels = {op.kind: op.kernel for op in ops if op.op_class in ("gemm", "gemv")}
    assert kernels["qkv"] == kernels["ffn_up"] == "linear" and "matmul" in kernels.values()
    _, only_matmul = load(DATA / "toy-gpt.yaml", device__kernels={"matmul": {"dispatch": "5 us"}}, **base)
    _, both = load(DATA / "toy-gpt.yaml", device__kernels={"matmul": {"dispatch": "5 us"},
                                                           "linear": {"dispatch": "9 us"}}, **base)
    assert only_matmul.device.dispatch_for("linear") == pytest.approx(5e-6)
    assert both.device.dispatch_for("linear") == pytest.approx(9e-6)
    assert both.device.dispatch_for("matmul") == pytest.approx(5e-6)
    assert both.device.dispatch_for("add") == pytest.approx(1e-6)
    for hw, linear in ((only_matmul, 5e-6), (both, 9e-6)):
        result = run(wl, hw)
        for r in result.ops:
            want = {"linear": linear, "matmul": 5e-6}.get(next(op.kernel for op in ops if op.name == r.name), 1e-6)
            assert r.overhead_s == pytest.approx(want, rel=1e-9), r.name
        assert summarize(result)["host_dispatch_s"] == pytest.approx(sum(r.overhead_s for r in result.ops))


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_step_overhead_is_paid_once_per_pass_after_it_ends(mode):
    """With `step_overhead` the host waits for each forward pass, then spends that long before the
    next pass's first op: in sync mode exactly once per generated token; in async mode at least that
    (the host can no longer run ahead across passes)."""
    from sim.report import summarize

    base = {"device__dispatch_mode": mode}
    wl, hw0 = load(DATA / "toy-gpt.yaml", **base)
    _, hw1 = load(DATA / "toy-gpt.yaml", device__step_overhead="10 us", **base)
    r0, r1 = run(wl, hw0), run(wl, hw1)
    extra = summarize(r1)["total_s"] - summarize(r0)["total_s"]
    steps = wl.scenario.new_tokens  # passes after the first
    if mode == "sync":
        assert extra == pytest.approx(steps * 10e-6, rel=1e-9)
    else:
        assert extra >= steps * 10e-6 * (1 - 1e-9)
    firsts = [r for r in r1.ops if r.phase == "decode" and r.kind == "embed"]
    assert len(firsts) == steps and all(r.overhead_s >= 10e-6 for r in firsts)


def test_link_efficiency_and_collective_overhead():
    """A bandwidth-bound all-reduce takes 1/efficiency as long; a latency-bound one pays the fixed
    collective overhead once."""
    from sim.config import load_hardware
    from sim.validate.published import predict_allreduce

    node = DATA / "toy-node.yaml"
    full = load_hardware(node)
    half = load_hardware(node, [("interconnect.link.efficiency", 0.5)])
    big = 256e6
    assert predict_allreduce(half, big, 4) == pytest.approx(2 * predict_allreduce(full, big, 4), rel=0.01)
    slow = load_hardware(node, [("interconnect.collective_overhead", "20 us")])
    assert predict_allreduce(slow, 8, 4) - predict_allreduce(full, 8, 4) == pytest.approx(20e-6, rel=1e-9)
