"""Reuse of identical work (planning memo, block replay, one stream for alike ranks) against the
reference that plans and simulates every op of every device on its own: records and summaries agree."""

import importlib

import pytest

from conftest import DATA, load
from sim.config import load_hardware
from sim.pipeline import run
from sim.report import summarize

NODE = DATA / "toy-node.yaml"
#: toy nodes of 2 devices behind a switch, each device with a NIC into the network
CLUSTER = {"devices": 2, "nodes": 4, "interconnect__topology": "switch",
           "network": {"link": {"bandwidth": "2 GB/s", "latency": "5 us"}}}
CACHE = DATA / "toy-cache-hw.yaml"

CASES = {
    "single device": (None, {}),
    "cache hierarchy": (CACHE, {}),
    "cache, host ahead": (CACHE, {"device__dispatch_overhead": "0.2 us"}),
    "cache, sync dispatch": (CACHE, {"device__dispatch_overhead": "0.5 us", "device__dispatch_mode": "sync"}),
    "cache, step overhead": (CACHE, {"device__dispatch_overhead": "0.2 us", "device__step_overhead": "3 us"}),
    "cache, sync, step overhead": (CACHE, {"device__dispatch_mode": "sync", "device__step_overhead": "3 us"}),
    # a serving runtime's fused kernels (GELU into its GEMM, residual adds into norms or GEMMs)
    "fused kernels": (CACHE, {"device__fuse": {"gelu": "producer", "add": "consumer", "rope": "consumer"}}),
    "fused kernels, tensor x pipeline": (NODE, {"device__fuse": {"gelu": "producer", "add": "consumer"},
                                                "parallelism__tensor": 2, "parallelism__pipeline": 2}),
    "cache, weights pinned": (CACHE, {"device__memory__l2__pin": ["weight"], "device__memory__l2__capacity": "2 MiB"}),
    "cache, cold-weight table": (CACHE, {"device__compute__matrix_efficiency_cold": {1: 0.3}}),
    # weights whose rows alias in the cache: the toy's 128-byte rows at a 128-byte set span
    "cache, aliased weight rows": (CACHE, {"device__compute__aliasing_stride": "128 B",
                                           "device__compute__matrix_efficiency_aliased": {1: 0.5}}),
    "tensor parallel": (NODE, {"parallelism__tensor": 4}),
    "pipeline parallel": (NODE, {"parallelism__pipeline": 2}),
    "tensor x pipeline": (NODE, {"parallelism__tensor": 2, "parallelism__pipeline": 2}),
    "pipeline, micro-batches": (NODE, {"parallelism__pipeline": 2, "parallelism__microbatches": 2}),
    "tensor x pipeline, micro-batches": (NODE, {"parallelism__tensor": 2, "parallelism__pipeline": 2,
                                                "parallelism__microbatches": 2}),
    "micro-batches on one device": (CACHE, {"parallelism__microbatches": 2}),
    "weights in host memory, prefetched": (DATA / "toy-host-hw.yaml", {"scenario__offload_prefetch": True}),
    # a link fast enough that the copies end inside the ops: timelines measured beside them must not be replayed
    "weights in host memory, prefetched fast": (DATA / "toy-host-hw.yaml", {"scenario__offload_prefetch": True,
                                                                          "host__link__bandwidth": "50 GB/s"}),
    # sends that contend with the stage's compute for a slow DRAM
    "training step, full recompute, cache": (CACHE, {"scenario__phase": "train", "scenario__new_tokens": 0,
                                                     "training__recompute": "full"}),
    "training step, accumulated, selective": (None, {"scenario__phase": "train", "scenario__new_tokens": 0,
                                                     "training__recompute": "selective",
                                                     "parallelism__microbatches": 2}),
    "data-parallel training, buckets": (NODE, {"scenario__phase": "train", "scenario__new_tokens": 0,
                                               "parallelism__data": 4, "scenario__batch": 8,
                                               "training__bucket": "64 KiB", "parallelism__microbatches": 2}),
    "ZeRO-2 training": (NODE, {"scenario__phase": "train", "scenario__new_tokens": 0, "parallelism__data": 4,
                               "scenario__batch": 8, "training__zero": 2, "training__bucket": "64 KiB"}),
    "ZeRO-3 training, full recompute": (NODE, {"scenario__phase": "train", "scenario__new_tokens": 0,
                                               "parallelism__data": 4, "scenario__batch": 8, "training__zero": 3,
                                               "training__recompute": "full"}),
    "tensor x data parallel training": (NODE, {"scenario__phase": "train", "scenario__new_tokens": 0,
                                               "parallelism__tensor": 2, "parallelism__data": 2,
                                               "scenario__batch": 4, "training__zero": 1}),
    "pipeline-parallel training, 1F1B": (NODE, {"scenario__phase": "train", "scenario__new_tokens": 0,
                                                "parallelism__pipeline": 2, "parallelism__microbatches": 4,
                                                "scenario__batch": 4, "training__recompute": "full"}),
    # Megatron's 3D layout on a cluster of switched nodes: one program stands for every rank of every replica
    "tensor x pipeline x data training across nodes": (NODE, {
        **CLUSTER, "scenario__phase": "train", "scenario__new_tokens": 0, "parallelism__tensor": 2,
        "parallelism__pipeline": 2, "parallelism__data": 2, "parallelism__microbatches": 4, "scenario__batch": 8,
        "parallelism__schedule": "1f1b", "training__recompute": "full", "training__bucket": "256 KiB"}),
    # stages inside a node (their sends share the switch with the tensor-parallel all-reduces), replicas
    # across nodes (gradients over the NICs)
    "tensor x pipeline in a node x data across nodes": (NODE, {
        **CLUSTER, "devices": 4, "nodes": 2, "scenario__phase": "train", "scenario__new_tokens": 0,
        "parallelism__tensor": 2, "parallelism__pipeline": 2, "parallelism__data": 2,
        "parallelism__microbatches": 2, "scenario__batch": 4, "training__zero": 2, "training__bucket": "64 KiB"}),
    # a ring of 4 carrying 3 replicas: the gradients' ring is not symmetric, each device runs its own program
    "data parallel on an asymmetric ring": (NODE, {"scenario__phase": "train", "scenario__new_tokens": 0,
                                                  "parallelism__data": 3, "scenario__batch": 3}),
    "micro-batched pipeline, slow DRAM": (NODE, {"parallelism__pipeline": 2, "parallelism__microbatches": 2,
                                                 "scenario__batch": 8, "device__memory__dram__bandwidth": "1 GB/s"}),
}


def close(a: float, b: float) -> bool:
    return a == pytest.approx(b, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("case", CASES)
def test_fast_path_equals_full_simulation(case):
    hw_file, overrides = CASES[case]
    hardware = ("device", "host", "interconnect", "nodes", "network")
    hw_over = {k: v for k, v in overrides.items() if k.startswith(hardware)}
    wl_over = {k: v for k, v in overrides.items() if not k.startswith(hardware)}
    own_hw = hw_over if hw_file is None else {}
    wl, hw = load(DATA / "toy-gpt.yaml", **{"model__layers": 6, "scenario__new_tokens": 4, **wl_over, **own_hw})
    if hw_file is not None:
        hw = load_hardware(hw_file, [(k.replace("__", "."), v) for k, v in hw_over.items()])
    fast, full = run(wl, hw), run(wl, hw, exact=True)
    assert fast.events < full.events
    assert len(fast.ops) == len(full.ops)
    for a, b in zip(fast.ops, full.ops, strict=True):
        assert (a.name, a.device, a.phase, a.step, a.layer, a.unit) == (b.name, b.device, b.phase, b.step, b.layer,
                                                                         b.unit)
        assert close(a.start_s, b.start_s) and close(a.end_s, b.end_s), a.name
        assert close(a.compute_s, b.compute_s) and close(a.overhead_s, b.overhead_s)
        assert a.stall_s.keys() == b.stall_s.keys()
        assert all(close(a.stall_s[k], b.stall_s[k]) for k in a.stall_s), (a.name, a.stall_s, b.stall_s)
        assert a.bytes == pytest.approx(b.bytes, rel=1e-12)
        assert a.hits.keys() == b.hits.keys()
        assert all(a.hits[c] == pytest.approx(b.hits[c], rel=1e-12) for c in a.hits)
        assert a.link_bytes == pytest.approx(b.link_bytes, rel=1e-12)
        assert a.level_busy_s.keys() == b.level_busy_s.keys()
    sa, sb = summarize(fast), summarize(full)
    for key in ("total_s", "ttft_s", "tpot_s", "flops", "bytes", "ops", "devices", "step_s", "mfu"):
        assert (sa[key] is None and sb[key] is None) or close(sa[key], sb[key]), key
    assert sa["bound"] == sb["bound"]


def test_alike_layers_share_ops_and_plans():
    """The layers of one pass share their ops tuple; the planner and engine then
    reuse whole blocks (a 6-layer model plans far fewer ops than it runs)."""
    wl, hw = load(DATA / "toy-gpt.yaml", model__layers=6, scenario__new_tokens=4)
    hw = load_hardware(CACHE)
    from sim.pipeline import graph_of

    g = graph_of(wl)
    per_pass = {}
    for b in g.blocks:
        per_pass.setdefault(b.seq, set()).add(id(b.ops))
    assert all(len(ids) == 3 for ids in per_pass.values())  # embed, every layer, head
    result = run(wl, hw)
    distinct = {id(b.ops) for b in result.blocks}
    assert len(distinct) < len(result.blocks)


def test_walk_reused_across_hardware_speeds_equals_fresh_runs():
    """A sweep over speeds walks cache residency once per process: the second run, on other
    bandwidths and FLOP/s, still equals its own full simulation."""
    plan_module = importlib.import_module("sim.mapping.plan")

    wl, _ = load(DATA / "toy-gpt.yaml", model__layers=4, scenario__new_tokens=3)
    slow = load_hardware(CACHE, [("device.memory.l2.bandwidth", "50 GB/s")])
    fast_hw = load_hardware(CACHE, [("device.memory.dram.bandwidth", "40 GB/s"), ("device.compute.peak.fp16",
                                                                                    "3 TFLOP/s")])
    plan_module._WALKS.clear()
    run(wl, slow)
    assert len(plan_module._WALKS) == 1
    reused = run(wl, fast_hw)
    assert len(plan_module._WALKS) == 1  # same structure: the walk was found, not redone
    full = run(wl, fast_hw, exact=True)
    assert all(a.name == b.name and close(a.end_s, b.end_s) and a.bytes == pytest.approx(b.bytes)
               for a, b in zip(reused.ops, full.ops, strict=True))
    assert summarize(reused)["total_s"] != summarize(run(wl, slow))["total_s"]


def test_cli_exact_flag_gives_the_same_figures(tmp_path):
    from conftest import cli

    a, b = tmp_path / "fast.json", tmp_path / "exact.json"
    assert cli("run", str(DATA / "toy-gpt.yaml"), "--json", str(a)).returncode == 0
    assert cli("run", str(DATA / "toy-gpt.yaml"), "--exact", "--json", str(b)).returncode == 0
    import json

    fa, fb = json.loads(a.read_text())["summary"], json.loads(b.read_text())["summary"]
    assert close(fa["total_s"], fb["total_s"]) and fa["ops"] == fb["ops"]
    assert fa["events"] < fb["events"]


def test_a_run_freezes_what_is_alive_and_later_collects_what_it_left(monkeypatch):
    """Collection is back on after a run, with everything then alive frozen (so the first collections
    do not re-scan the run's objects); a reference cycle frozen that way is collected by the first run
    that finds more than `FROZEN_LIMIT` frozen objects."""
    import gc
    import weakref

    pipeline = importlib.import_module("sim.pipeline")

    class Node:
        pass

    wl, hw = load(DATA / "toy-gpt.yaml")
    threshold = gc.get_threshold()
    gc.set_threshold(10**9)  # no automatic collection before the run takes the cycle in
    try:
        cycle = Node()
        cycle.me = cycle
        alive = weakref.ref(cycle)
        del cycle
        run(wl, hw)
    finally:
        gc.set_threshold(*threshold)
    assert gc.isenabled() and gc.get_freeze_count() > 0
    gc.collect()
    assert alive() is not None  # frozen: not collected yet
    monkeypatch.setattr(pipeline, "FROZEN_LIMIT", 0)
    run(wl, hw)
    assert alive() is None
