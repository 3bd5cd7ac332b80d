"""Placement: weights that fit on chip live there; those that do not stream from DRAM."""

import pytest

from conftest import DATA, ROOT, load
from sim.errors import ConfigError
from sim.graph import build_graph
from sim.mapping import place
from sim.mapping.placement import peak_live_activations
from sim.mapping.plan import chunk_schedule
from sim.pipeline import run

SRAM = ROOT / "hardware_models/sram-accel.yaml"


def gpt2_on(hw_path, **overrides):
    from sim.config import load_hardware
    from sim.config.loader import split_overrides

    wl, _ = load(ROOT / "workloads/gpt2.yaml", scenario__prompt_tokens=64, scenario__new_tokens=4)
    _, hw_set = split_overrides([(k.replace("__", "."), v) for k, v in overrides.items()])
    return wl, load_hardware(hw_path, hw_set)


def test_gpt2_weights_live_in_sram_when_they_fit():
    wl, hw = gpt2_on(SRAM)
    p = place(build_graph(wl), hw)
    assert p.home["weight"] == "sram"
    assert p.footprint.weights == 124_439_808 * 2


def test_shrinking_sram_below_the_weights_brings_dram_stalls_back():
    """GPT-2's 237 MiB of weights on the SRAM accelerator: in a 200 MiB SRAM what does not fit streams
    from DRAM (the weights' home is DRAM, most of them are served from SRAM); with almost no SRAM all
    of them do. Decode then stalls on DRAM, the more the less SRAM there is."""
    fits = run(*gpt2_on(SRAM))
    part = run(*gpt2_on(SRAM, device__memory__sram__capacity="200 MiB"))
    spills = run(*gpt2_on(SRAM, device__memory__sram__capacity="1 MiB"))
    assert part.placement.home["weight"] == spills.placement.home["weight"] == "dram"
    assert part.placement.partial["weight"]["sram"] > 0.75 * part.placement.footprint.weights

    def decode(result):
        ops = [r for r in result.ops if r.phase == "decode"]
        return sum(r.duration_s for r in ops), sum(r.stall_s.get("memory:dram", 0) for r in ops)

    (t_fit, dram_fit), (t_part, dram_part), (t_spill, dram_spill) = decode(fits), decode(part), decode(spills)
    assert t_spill > 3 * t_fit and t_fit < t_part < t_spill
    assert dram_spill > 0.5 * t_spill > dram_fit and dram_fit < dram_part < dram_spill


def test_decode_time_falls_smoothly_as_sram_grows_towards_the_weights():
    """Partial residency (issue 20): weights are placed tensor by tensor into the SRAM's room, the most
    traffic per byte first, so every 32 MiB more SRAM serves another 32 MiB of weights from it: the DRAM
    bytes and the time per token fall step by step from 8 MiB to the weights' size (they used to stay
    flat until the weights fitted whole, then drop at once)."""
    from sim.report import summarize

    runs = [summarize(run(*gpt2_on(SRAM, device__memory__sram__capacity=f"{mib} MiB")))
            for mib in range(8, 232, 32)]
    tpot = [s["tpot_s"] for s in runs]
    dram = [s["bytes_per_level"]["dram"] for s in runs]
    assert all(b < 0.95 * a for a, b in zip(tpot, tpot[1:])), tpot
    assert all(b < a - 25 * 2 ** 20 for a, b in zip(dram, dram[1:])), dram  # 4 steps x most of 32 MiB less


def test_more_sram_never_slows_the_first_token_or_the_run():
    """Across the capacities where a class comes to fit whole (the weights at 237 MiB, with the
    activations and KV cache beside them from 283 MiB), neither the first token nor the run gets slower.
    Weights placed first, the first token went 3.5x slower at 240 MiB than at 230 MiB: the weights came
    to fit and the activations went out to DRAM (review, 2026-12-05)."""
    from sim.report import summarize

    runs = [summarize(run(*gpt2_on(SRAM, device__memory__sram__capacity=f"{mib} MiB")))
            for mib in (200, 230, 240, 250, 256, 260, 283)]
    for a, b in zip(runs, runs[1:]):
        assert b["ttft_s"] <= a["ttft_s"] * 1.001 and b["total_s"] <= a["total_s"] * 1.001


def test_weights_homed_in_host_memory_fill_the_devices_room_first():
    """A model a little too big for the device streams only what the device cannot hold over the host link
    (it streamed every weight, whole): with more device memory, fewer bytes cross the link and the run and
    its first token come sooner, step by step — also where the weights come to fit whole and the KV cache
    goes out instead (the order that moves the fewest bytes over the link is kept)."""
    from sim.config import load_hardware
    from sim.report import summarize

    wl, _ = load(DATA / "toy-gpt.yaml", model__layers=6, scenario__new_tokens=2)
    runs = []
    for kib in (320, 448, 576, 640, 704):
        hw = load_hardware(DATA / "toy-host-hw.yaml", [("device.memory.dram.capacity", f"{kib} KiB")])
        result = run(wl, hw)
        if kib <= 576:
            assert result.placement.home["weight"] == "host" and result.placement.partial["weight"]["dram"] > 0
        runs.append(summarize(result))
    host = [s["bytes_per_level"].get("host", 0.0) for s in runs]
    total, first = [s["total_s"] for s in runs], [s["ttft_s"] for s in runs]
    assert all(b < a for a, b in zip(host, host[1:])), host
    assert all(b < a for a, b in zip(total, total[1:])) and all(b < a for a, b in zip(first, first[1:]))


def test_an_encoder_keeps_no_kv_cache():
    """BERT's K and V are activations of the pass (dead after attention), not a cache held to the end."""
    wl, hw = load(ROOT / "workloads/bert-base.yaml", scenario__prompt_tokens=64)
    g = build_graph(wl)
    assert place(g, hw).footprint.kv_cache == 0
    kv = {a.tensor.kind for op in g.ops if op.kind == "qkv" for a in op.writes}
    assert kv == {"activation"}


def test_does_not_fit_is_a_config_error():
    wl, hw = gpt2_on(SRAM, device__memory__dram__capacity="100 MiB", device__memory__sram__capacity="100 MiB")
    with pytest.raises(ConfigError, match="does not fit: weights need 237.35 MiB"):
        place(build_graph(wl), hw)


def test_peak_live_activations_by_hand(toy):
    g = build_graph(toy[0])
    peak = peak_live_activations(g.ops)
    # prefill: at least the residual stream (16 x 64) plus the FFN up output (16 x 256) are live at once
    assert peak >= (16 * 64 + 16 * 256) * 2
    assert peak < sum(a.tensor.bytes for o in g.ops for a in o.writes if a.tensor.kind == "activation")


@pytest.mark.parametrize("c,m,lat,n", [(1.0, 0.001, 0.0, 1), (1.0, 1.0, 0.0, 2), (1e-6, 1e-6, 1e-6, 1),
                                       (4e-6, 4e-6, 1e-6, 2)])
def test_chunk_schedule(c, m, lat, n):
    chunks = chunk_schedule(c, m, lat)
    assert len(chunks) == n and sum(chunks) == pytest.approx(1.0)


def test_weights_spill_to_host_memory_and_stall_on_it():
    wl, hw = load(ROOT / "workloads/gpt2.yaml", scenario__prompt_tokens=16, scenario__new_tokens=2,
                  device__memory__hbm__capacity="100 MiB")
    result = run(wl, hw)
    assert result.placement.home == {"weight": "host", "kv_cache": "hbm", "activation": "hbm"}
    decode = [r for r in result.ops if r.phase == "decode"]
    host = sum(r.stall_s.get("memory:host", 0.0) for r in decode)
    assert host > 0.8 * sum(r.duration_s for r in decode)
    # PCIe at 32 GB/s: one decode step moves over it the 249 MB of weights less what the HBM's room took
    step = [r for r in decode if r.step == 1]
    filled = result.placement.partial["weight"]["hbm"]
    assert 0.3 * 124_439_808 * 2 < filled < 100 * 2**20
    # (within 2%: the position table, filled in, is read a row a step, not whole)
    assert sum(r.bytes.get("host", 0.0) for r in step) == pytest.approx(124_439_808 * 2 - filled, rel=0.02)


def test_an_unfused_bias_add_follows_the_product_at_its_own_rate():
    """A biased projection's epilogue (one add per output element) is part of its FLOPs. Where the
    framework fuses it (no `epilogue` rate: a GPU library) it costs what its FLOPs cost at the matmul's
    rate; where it is a pass of its own (eager numpy's `y += b`), its elements at the kernel's epilogue
    rate are added to the op's compute time, and nothing else changes. Bias-free matmuls have none."""
    from sim.mapping.plan import plan_op

    wl, fused = load(DATA / "toy-gpt.yaml")
    _, unfused = load(DATA / "toy-gpt.yaml", device__kernels={"linear": {"epilogue": "1 GFLOP/s"}})
    ops = build_graph(wl).ops
    linears = [op for op in ops if op.kernel == "linear"]
    assert linears and all(op.epilogue == op.shape[1] * op.shape[2] for op in linears)
    assert all(op.epilogue == 0 for op in ops if op.kernel != "linear")
    for op in ops:
        if op.engine != "matrix":
            continue
        a, b = (plan_op(op, hw, place([op], hw)) for hw in (fused, unfused))
        assert b.compute_s - a.compute_s == pytest.approx(op.epilogue / 1e9 - (
            op.epilogue / op.flops * a.compute_s if op.epilogue else 0.0), rel=1e-9, abs=1e-15), op.name
        assert (a.unit, a.utilization, a.loads, a.overhead_s) == (b.unit, b.utilization, b.loads, b.overhead_s)
