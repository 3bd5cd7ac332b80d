"""Tiling re-read factors and cache residency across ops."""

from math import ceil
from pathlib import Path

import pytest

from conftest import DATA, load
from sim.config import load_hardware
from sim.graph import build_graph
from sim.mapping import place
from sim.mapping.plan import Planner, matrix_utilization
from sim.mapping.residency import CacheLevel, Residency
from sim.mapping.tiling import block_tiled, reuse_factors

CACHE_HW = DATA / "toy-cache-hw.yaml"


def test_problem_that_fits_is_read_once():
    assert reuse_factors(64, 64, 64, 2, 2, 1 << 20) == (1, 1)


def test_gemv_streams_its_weights_once():
    # M = 1: whatever the capacity, the K x N weight matrix is read exactly once
    for cap in (4 << 10, 64 << 10, 1 << 20):
        assert reuse_factors(1, 4096, 4096, 2, 2, cap)[1] == 1


def test_big_gemm_factors_by_hand():
    """192 KiB: a 256 x 128 tile fits (2 x (256x32 + 32x128) x 2 B + 256x128x4 B = 180,224 B),
    256 x 256 does not; A is re-read N/128 = 8 times, B M/256 = 4 times (or the transpose)."""
    fa, fb = reuse_factors(1024, 1024, 1024, 2, 2, 192 << 10)
    assert {fa, fb} == {4, 8}


def test_smaller_capacity_never_reads_less():
    prev = 0
    for cap in (1 << 24, 1 << 20, 1 << 16, 1 << 12):
        fa, fb = reuse_factors(2048, 2048, 512, 2, 2, cap)
        traffic = 2048 * 512 * fa + 512 * 2048 * fb
        assert traffic >= prev
        prev = traffic


def test_residency_lru_hits_evicts_and_writes_back():
    l2 = CacheLevel("l2", 100.0)
    r = Residency([l2], ["l2", "dram"])
    landing, wb = r.write("a", "activation", 60, "dram")
    assert landing == "l2" and wb == []
    hit = r.read("a", "activation", 60, "dram")
    assert hit.sources == [("l2", 60)] and hit.hits == [("l2", 60, 60)]
    # reading 50 B of something else evicts the dirty 'a': 60 B written back to DRAM
    miss = r.read("w", "weight", 50, "dram")
    assert miss.sources == [("dram", 50)] and miss.writebacks == [("l2", "dram", 60)]
    # bigger than the cache: streams past, evicts nothing
    big = r.read("kv", "kv_cache", 500, "dram")
    assert big.sources == [("dram", 500)] and "w" in l2.lru


def test_partial_hit_on_a_growing_kv_cache():
    r = Residency([CacheLevel("l2", 1000.0)], ["l2", "dram"])
    r.read("k", "kv_cache", 100, "dram")
    look = r.read("k", "kv_cache", 110, "dram")  # one token longer
    assert look.sources == [("l2", 100), ("dram", 10)]


def test_appending_to_a_cached_kv_cache_writes_back_only_the_appended_bytes():
    r = Residency([CacheLevel("l2", 1000.0)], ["l2", "dram"])
    r.read("k", "kv_cache", 600, "dram")  # clean: the cache as last step left it
    landing, _ = r.write("k", "kv_cache", 6, "dram")  # this step's token
    assert landing == "l2" and r.caches[0].lru["k"] == (600, 6, "dram")
    evict = r.read("w", "weight", 900, "dram")
    assert evict.writebacks == [("l2", "dram", 6)]


def test_pinned_weights_are_never_evicted():
    r = Residency([CacheLevel("l2", 100.0, frozenset({"weight"}))], ["l2", "dram"])
    r.read("w", "weight", 80, "dram")
    r.read("x", "activation", 20, "dram")
    r.read("y", "activation", 20, "dram")  # evicts x, not w
    assert r.read("w", "weight", 80, "dram").sources == [("l2", 80)]


def test_a_pin_takes_room_from_unpinned_tensors_and_a_table_read_in_part_is_pinned_whole_once_read_whole():
    """A full cache of activations does not keep a weight from being pinned: the activations make room.
    A tied embedding is read a few rows at a time (the lookup), then whole (the LM head): once read
    whole it is pinned whole, and every later whole read hits entirely (a pin of the rows the lookup
    read must not hide the whole table)."""
    r = Residency([CacheLevel("l2", 100.0, frozenset({"weight"}))], ["l2", "dram"])
    r.read("x", "activation", 60, "dram")
    r.read("y", "activation", 40, "dram")  # the cache is full
    r.read("wte", "weight", 5, "dram")  # the lookup's rows: pinned, x evicted to make room
    r.read("z", "activation", 55, "dram")  # y evicted: 5 pinned + 55
    assert r.read("wte", "weight", 50, "dram").sources == [("l2", 5), ("dram", 45)]  # the head: pinned whole
    assert r.read("wte", "weight", 5, "dram").sources == [("l2", 5)]  # the next step's lookup
    assert r.read("wte", "weight", 50, "dram").sources == [("l2", 50)]  # and its head hits whole
    assert r.read("z", "activation", 55, "dram").sources == [("dram", 55)]  # z made room for the pin


def test_pinning_weights_in_a_cache_that_holds_them_never_adds_traffic():
    """GPT-2 decode on the A100 with a 512 MiB L2 (issue 20): unpinned, the LRU keeps the weights; pinned,
    every weight (the tied embedding too, read a few rows by the lookup and whole by the LM head) is read
    from HBM in the first pass and never again: no decode op's weights come from HBM, and the run moves
    no more through HBM than unpinned (it moved 14x more when the head's table was never pinned)."""
    from sim.pipeline import run
    from sim.report import summarize

    gpt2 = Path(__file__).resolve().parents[1] / "workloads" / "gpt2.yaml"
    big = {"device__memory__l2__capacity": "512 MiB", "scenario__new_tokens": 4}
    wl, hw = load(gpt2, **big)
    _, pinned_hw = load(gpt2, device__memory__l2__pin=["weight"], **big)
    free, pinned = run(wl, hw), run(wl, pinned_hw)
    assert summarize(pinned)["bytes_per_level"]["hbm"] <= summarize(free)["bytes_per_level"]["hbm"]
    ops = {op.name: op for op in build_graph(wl).ops}
    # the projections that touch no KV cache (QKV writes it: its evicted tokens are written back)
    gemvs = [r for r in pinned.ops if r.phase == "decode" and r.op_class == "gemv" and r.kind != "qkv"]
    assert {r.kind for r in gemvs} == {"attn_out", "ffn_up", "ffn_down", "lm_head"}
    for r in gemvs:  # what still comes from HBM is a sliver of the activations, never the weights
        weights = sum(a.bytes for a in ops[r.name].reads if a.tensor.kind == "weight")
        assert r.bytes.get("hbm", 0.0) < 0.01 * weights, r.name


def test_a_released_pin_frees_its_room_without_a_write_back():
    """A dead pinned activation gives its room back at once, and nothing of it is written back."""
    r = Residency([CacheLevel("l2", 100.0, frozenset({"activation"}))], ["l2", "dram"])
    r.write("x", "activation", 70, "dram")
    r.release("x")
    assert r.caches[0].pinned_bytes == 0 and "x" not in r.caches[0].pinned
    landing, writebacks = r.write("y", "activation", 90, "dram")
    assert landing == "l2" and writebacks == []


@pytest.mark.parametrize("pin", [["activation"], ["weight", "kv_cache", "activation"]])
def test_pinning_activations_in_a_cache_that_holds_everything_never_adds_traffic(pin):
    """GPT-2 on the A100 with a 512 MiB L2 that holds the whole run: pinning activations moved 50x the
    HBM bytes of the unpinned run while dead activations stayed pinned and pushed the weights out
    (review, 2026-12-05); freed after their last use, they move no more than unpinned."""
    from sim.pipeline import run
    from sim.report import summarize

    gpt2 = Path(__file__).resolve().parents[1] / "workloads" / "gpt2.yaml"
    big = {"device__memory__l2__capacity": "512 MiB", "scenario__new_tokens": 4}
    wl, hw = load(gpt2, **big)
    _, pinned_hw = load(gpt2, device__memory__l2__pin=pin, **big)
    free, pinned = summarize(run(wl, hw)), summarize(run(wl, pinned_hw))
    assert pinned["bytes_per_level"]["hbm"] <= free["bytes_per_level"]["hbm"]
    assert pinned["total_s"] <= free["total_s"] * 1.001


def _decode_dram_bytes(**hw_overrides):
    wl, _ = load(DATA / "toy-gpt.yaml")
    hw = load_hardware(CACHE_HW, [(k.replace("__", "."), v) for k, v in hw_overrides.items()])
    g = build_graph(wl)
    planner = Planner(hw, place(g, hw))
    plans = [planner.plan(op) for op in g.ops]
    last_step = [p for p in plans if p.op.phase == "decode" and p.op.step == 2]
    return sum(b for p in last_step for lvl, b in p.loads if lvl == "dram"), plans


def test_activation_produced_by_one_op_hits_in_the_next():
    _, plans = _decode_dram_bytes()
    ln = next(p for p in plans if p.op.name == "prefill.L0.attn_norm")
    x, gamma = ln.op.reads  # the embedding's output hits; the norm's own weights are a cold miss
    assert ln.hits == (("l2", x.bytes, x.bytes + gamma.bytes),)


def test_weights_that_fit_a_cache_stay_there_across_decode_steps():
    streamed, _ = _decode_dram_bytes(device__memory__l2__capacity="32 KiB")  # < 124 KB of weights
    resident, plans = _decode_dram_bytes(device__memory__l2__capacity="64 MiB")
    weights = sum(a.bytes for p in plans if p.op.phase == "decode" and p.op.step == 2
                  for a in p.op.reads if a.tensor.kind == "weight")
    assert resident < 0.1 * weights <= streamed


def test_matrix_utilization_quantisation():
    hw = load(DATA / "toy-gpt.yaml", device__compute__tile=[16, 8, 16])[1]
    assert matrix_utilization(hw, (1, 16, 8, 16)) == 1.0
    assert matrix_utilization(hw, (1, 1, 8, 16)) == pytest.approx(1 / 16)  # GEMV row in a 16-row tile
    hw4 = load(DATA / "toy-gpt.yaml", device__compute__tile=[16, 8, 16], device__compute__units=4)[1]
    # 5 tiles over 4 units: 2 waves, 5 / 8 useful
    assert matrix_utilization(hw4, (1, 16, 40, 16)) == pytest.approx(5 / 8)
    assert ceil(40 / 8) == 5


@pytest.mark.parametrize("batch,bound", [(16, "memory:dram"), (64, "memory:dram"), (128, "compute"), (256, "compute")])
def test_decode_batch_turns_gemv_compute_bound_past_the_balance_point(batch, bound):
    """Toy balance point: 1 TFLOP/s / 10 GB/s = 100 FLOP/B. A decode projection at batch B does about
    B FLOP per weight byte: memory-bound below ~100, compute-bound above."""
    from sim.pipeline import run
    from sim.report import summarize

    wl, hw = load(DATA / "toy-gpt.yaml", scenario__batch=batch, device__dispatch_overhead=0, model__hidden=1024,
                  model__heads=16, model__ffn=4096, device__memory__sram__capacity="4 MiB",
                  device__memory__sram__kind="cache")
    s = summarize(run(wl, hw))
    gemv = s["classes"]["GEMV"]
    assert s["balance_point_flop_per_byte"] == pytest.approx(100)
    assert gemv["bound"] == bound
    assert (gemv["intensity_flop_per_byte"] > 100) == (bound == "compute")


def test_achievable_balance_point_uses_sustained_peak_and_achievable_bandwidth():
    """Toy: 1 TFLOP/s x 0.8 sustained over 10 GB/s x 0.5 achievable = 160 FLOP/B, beside the 100 of the
    datasheet figures."""
    from sim.pipeline import run
    from sim.report import summarize

    wl, hw = load(DATA / "toy-gpt.yaml", device__compute__matrix_efficiency={1: 0.8},
                  device__memory__dram__efficiency=0.5)
    s = summarize(run(wl, hw))
    assert s["balance_point_flop_per_byte"] == pytest.approx(100)
    assert s["achievable_balance_point_flop_per_byte"] == pytest.approx(160)


def test_block_tiles_run_in_whole_waves():
    # 32 x 48 output in 16 x 16 tiles: 6 tiles on 4 units = 2 waves of which 6 / 8 slots are useful
    flops = 2 * 32 * 48 * 16
    time, util, tile = block_tiled((1, 32, 48, 16), flops, [(16, 16)], 16, 4, 1e9, 2, 2, 0.0)
    assert tile == (16, 16) and util == pytest.approx(0.75)
    assert time == pytest.approx(flops / (1e9 * 0.75))


def test_library_takes_the_tile_that_finishes_first():
    # 32 x 32 on 4 units: one 32 x 32 tile keeps 1 unit busy (util 1/4); four 16 x 16 tiles keep all 4
    flops = 2 * 32 * 32 * 64
    shape, tiles = (1, 32, 32, 64), [(32, 32), (16, 16)]
    time, util, tile = block_tiled(shape, flops, tiles, 16, 4, 1e9, 2, 2, 0.0)
    assert tile == (16, 16) and util == pytest.approx(1.0)
    # but 16 x 16 tiles read each operand twice: 2 * (32*64*2) * 2 = 16 KiB against 8 KiB for the big tile.
    # At 1 KB/s of feed the small tile takes 16.384 s, the big one max(4 x compute, 8.192 s)
    time, util, tile = block_tiled(shape, flops, tiles, 16, 4, 1e9, 2, 2, 1e3)
    assert tile == (32, 32) and time == pytest.approx(8.192)
    # one unit, 32 x 32: four 16 x 16 tiles or one 32 x 32 take the same time; the larger tile is taken
    time, util, tile = block_tiled((1, 32, 32, 16), 2 * 32 * 32 * 16, [(16, 16), (32, 32)], 16, 1, 1e9, 2, 2, 0.0)
    assert tile == (32, 32) and util == pytest.approx(1.0)


def test_block_tiles_slow_a_small_gemm_not_a_large_one():
    """On the A100 model, a 1024^3 GEMM fills 108 SMs with 64 of its 128 x 128 tiles at best: it runs
    well below the sustained rate; an 8192^3 one fills 38 waves and runs at it."""
    from sim.graph.ops import Access, Op, Tensor

    a100 = Path(__file__).resolve().parents[1] / "hardware_models/a100-sxm4-80gb.yaml"
    tiled = load_hardware(a100)
    plain = load_hardware(a100, [("device.compute.block_tiles", [])])

    def gemm(n: int) -> Op:
        a, w, y = (Tensor(t, "activation", n * n * 2, n * n) for t in "awy")
        return Op("mm", "mm", "gemm", "matrix", "prefill", 0, 0, "fp16", 2.0 * n**3,
                  (Access(a, a.bytes), Access(w, w.bytes)), (Access(y, y.bytes),), shape=(1, n, n, n))

    def compute_s(machine, n: int) -> float:
        op = gemm(n)
        return Planner(machine, place([op], machine)).plan(op).compute_s

    assert compute_s(tiled, 1024) > 1.3 * compute_s(plain, 1024)
    assert compute_s(tiled, 8192) == pytest.approx(compute_s(plain, 8192), rel=0.01)
