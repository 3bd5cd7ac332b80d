"""Kernel fusion (`device.fuse`, a runtime's): which ops merge, what they still move, what stays apart."""

from __future__ import annotations

import pytest

from conftest import DATA, ROOT, cli, load
from sim.config import load_run
from sim.graph import build_graph
from sim.mapping.fusion import fuse_graph
from sim.pipeline import run
from sim.report import summarize
from sim.report.context import context

SERVING = {"rope": "consumer", "add": "consumer", "gelu": "producer"}


def _layer(graph, phase="prefill"):
    return next(b for b in graph.blocks if b.phase == phase and b.layer == 0)


def _ops(block):
    return {op.name: op for op in block.ops}


def test_gelu_in_its_gemms_epilogue_keeps_the_flops_and_never_moves_the_product():
    """ffn_up and GELU become one op: the same FLOPs (GELU's as the epilogue), and the ffn_up product,
    read by GELU only, is neither written nor read: the layer moves 2 x its bytes less."""
    wl, _ = load(DATA / "toy-gpt.yaml")
    graph = build_graph(wl)
    fused = fuse_graph(graph, {"gelu": "producer"})
    before, after = _layer(graph), _layer(fused)
    ops = _ops(after)
    assert "ffn_up+act" in ops and "act" not in ops and "ffn_up" not in ops
    up, act = _ops(before)["ffn_up"], _ops(before)["act"]
    merged = ops["ffn_up+act"]
    assert merged.flops == up.flops + act.flops and merged.epilogue == up.epilogue + act.flops
    assert merged.reads[:2] == up.reads[:2] and merged.writes == act.writes and merged.op_class == "gemm"
    product = up.writes[0].bytes
    assert sum(op.bytes for op in before.ops) - sum(op.bytes for op in after.ops) == pytest.approx(2 * product)
    assert sum(op.flops for op in before.ops) == pytest.approx(sum(op.flops for op in after.ops))


def test_a_residual_add_fuses_into_the_next_norm_and_still_writes_the_residual_stream():
    """The first residual runs inside the FFN's norm: the norm no longer reads the sum, which is still
    written (the second residual reads it). The second residual ends the layer: it runs inside the next
    layer's first norm (vLLM's fused_add_rms_norm), which writes the residual stream for that layer's
    own residual, and inside the final norm after the last layer, where nothing else reads the stream:
    it is never written."""
    wl, _ = load(DATA / "toy-gpt.yaml", model__layers=2)
    blocks = [b for b in fuse_graph(build_graph(wl), {"add": "consumer"}).blocks if b.phase == "prefill"]
    first, second, head = (_ops(b) for b in blocks[1:4])
    add_norm = first["residual+ffn_norm"]
    res1 = next(a.tensor for a in add_norm.writes if a.tensor.name == "residual")
    assert all(a.tensor != res1 for a in add_norm.reads) and "residual2" not in first
    assert blocks[1].ops[-1].name == "ffn_down"
    carried = second["residual2+attn_norm"]
    assert {(a.tensor.name, a.tensor.dl) for a in carried.reads} >= {("residual", -1), ("ffn_down", -1)}
    assert ("hidden", -1) in {(a.tensor.name, a.tensor.dl) for a in carried.writes}
    assert any((a.tensor.name, a.tensor.dl) == ("hidden", -1) for a in second["residual+ffn_norm"].reads)
    assert all(a.tensor.name != "hidden" for a in head["residual2+final_norm"].writes)


def test_a_residual_before_a_pipeline_send_stays_in_its_layer():
    """Where the next layer runs on another pipeline stage (its block starts with the send), the residual
    that ends the layer cannot go there: it runs in ffn_down's epilogue, or, after a tensor-parallel
    all-reduce, keeps its own kernel."""
    for tp, last in ((1, "ffn_down+residual2"), (2, "residual2")):
        wl, _ = load(DATA / "toy-gpt.yaml", model__layers=2, parallelism__pipeline=2, parallelism__tensor=tp)
        block = _layer(fuse_graph(build_graph(wl), SERVING))
        assert block.ops[-1].name == last


def test_rope_inside_attention_keeps_the_attention_operands_and_writes_the_cache():
    """RoPE as attention's prologue: the rotated queries stay on chip, the query the QKV GEMM wrote is
    the first operand, the K cache still the second, and RoPE's cache write remains."""
    wl, _, _ = load_run(ROOT / "workloads/llama2-7b.yaml", [("model.layers", 1), ("scenario.prompt_tokens", 16),
                                                             ("scenario.new_tokens", 2)])
    graph = build_graph(wl)
    plain, fused = _ops(_layer(graph)), _ops(_layer(fuse_graph(graph, {"rope": "consumer"})))
    att = next(op for name, op in fused.items() if name.startswith("rope+"))
    rope, before = plain["rope"], plain[att.name.split("+")[1]]
    assert att.reads[0] == rope.reads[0] and att.reads[1] == before.reads[1]
    assert att.shape == before.shape and att.flops == rope.flops + before.flops
    assert [a for a in att.writes if a.tensor.kind == "kv_cache"] == [a for a in rope.writes
                                                                     if a.tensor.kind == "kv_cache"]
    assert all(a.tensor.name != "q_rope" for a in att.reads + att.writes)


def test_nothing_fuses_into_a_collective_nor_in_training():
    """With tensor parallelism each residual follows an all-reduce: it runs inside the norm after it (the
    next layer's for the second), never in the collective. A training step's graph is left as built
    (backward reads what fusion would keep on chip)."""
    wl, _ = load(DATA / "toy-gpt.yaml", parallelism__tensor=2)
    ops = _ops(_layer(fuse_graph(build_graph(wl), SERVING)))
    assert "residual+ffn_norm" in ops and list(ops)[-1] == "ffn_allreduce"
    train, _ = load(DATA / "toy-train.yaml")
    graph = build_graph(train)
    assert [b.ops for b in fuse_graph(graph, SERVING).blocks] == [b.ops for b in graph.blocks]


def test_a_fused_run_is_faster_with_the_same_flops_and_fewer_bytes_from_dram():
    """On the toy machine (no caches: every activation goes to DRAM) the fused generation takes less
    time, computes the same FLOPs and moves fewer bytes. (tests/test_reuse.py holds its fast path equal to
    the exact one.)"""
    wl, hw = load(DATA / "toy-gpt.yaml")
    _, fused_hw = load(DATA / "toy-gpt.yaml", device__fuse=SERVING)
    plain, fused = summarize(run(wl, hw)), summarize(run(wl, fused_hw))
    assert fused["total_s"] < plain["total_s"] and fused["flops"] == pytest.approx(plain["flops"])
    assert fused["bytes"] < plain["bytes"]


ALL = {k: w for k in ("add", "gelu", "rope", "layernorm", "rmsnorm", "softmax", "silu") for w in ("consumer",)}


@pytest.mark.parametrize("workload, sets", [
    ("toy-gpt", {}),
    ("toy-gpt", {"model.layers": 6, "parallelism.pipeline": 2}),  # stages: a send starts some layers' blocks
    ("bert-base", {"model.layers": 3, "scenario.prompt_tokens": 32}),
    ("toy-gpt", {"model.layers": 2, "parallelism.tensor": 2, "parallelism.pipeline": 2, "parallelism.microbatches": 2,
                 "scenario.batch": 4}),
    ("bert-base", {"model.layers": 2, "scenario.prompt_tokens": 32}),
    ("llama2-7b", {"model.layers": 2, "scenario.prompt_tokens": 32, "scenario.new_tokens": 2,
                   "scenario.attention": "fused"}),
])
@pytest.mark.parametrize("fuse", [SERVING, ALL, {k: "producer" for k in ALL},
                                  {"layernorm": "producer", "rmsnorm": "producer"},  # into the residual adds
                                  {"layernorm": "consumer"}])  # BERT's norms into the next layer's QKV
def test_no_op_reads_what_fusion_stopped_writing_and_the_flops_stay(workload, sets, fuse):
    """Over whole graphs (every layer, pass, decode step and pipeline stage, with absolute tensor
    names): no tensor is read before any op wrote it in the fused graph unless it was so in the
    unfused one too (weights, the sampled token); the FLOPs are the unfused graph's; no op is a pair of
    more than two."""
    path = DATA / f"{workload}.yaml" if workload.startswith("toy") else ROOT / f"workloads/{workload}.yaml"
    wl, _, _ = load_run(path, list(sets.items()))
    graph = build_graph(wl)
    fused = fuse_graph(graph, fuse)

    def unproduced(ops) -> set[str]:  # (a fused op may read what it writes itself: RoPE's K-cache rows)
        written, out = set(), set()
        for op in ops:
            written |= {a.tensor.name for a in op.writes}
            out |= {a.tensor.name for a in op.reads if a.tensor.name not in written}
        return out

    assert unproduced(fused.ops) <= unproduced(graph.ops)
    assert all(op.name.count("+") <= 1 for op in fused.ops)
    assert len(graph.ops) == len(fused.ops) + sum("+" in op.name for op in fused.ops)  # each op once
    assert sum(op.flops for op in fused.ops) == pytest.approx(sum(op.flops for op in graph.ops))
    assert len(fused.ops) < len(graph.ops) or not any(op.kernel in fuse for op in graph.ops)


def test_a_norm_never_takes_the_lm_heads_place_nor_a_matmul_a_neighbours():
    """The LM head reads the last position of the final norm's output only: the norm cannot run as its
    prologue (it would read every position in its place). A matmul kernel is not fusable: one line."""
    wl, _ = load(DATA / "toy-gpt.yaml", scenario__phase="prefill", scenario__new_tokens=0)
    head = next(b for b in fuse_graph(build_graph(wl), {"layernorm": "consumer"}).blocks if b.layer == 1)
    assert [op.name for op in head.ops] == ["final_norm", "lm_head"]
    done = cli("run", str(DATA / "toy-gpt.yaml"), "--set", "device.fuse={matmul: producer}")
    assert done.returncode == 2 and "fuse.matmul" in done.stderr and "Traceback" not in done.stderr


def test_the_report_names_what_the_runtime_fuses():
    """The terminal header and the JSON context say which kernels the runtime fuses, and into what."""
    done = cli("run", "workloads/gpt2.yaml", "--runtime", "runtimes/serving.yaml", "--set", "model.layers=1",
               "--set", "scenario.new_tokens=1")
    assert done.returncode == 0 and "fuses gelu into its producer; add, rope into their consumer" in done.stdout
    wl, hw = load(DATA / "toy-gpt.yaml", device__fuse={"gelu": "producer"})
    assert context(run(wl, hw))["hardware"]["fuse"] == {"gelu": "producer"}
    done = cli("run", str(DATA / "toy-gpt.yaml"), "--set", "device.fuse={gelu: producer}")
    assert done.returncode == 0 and "software: fuses gelu into its producer (inference passes)" in done.stdout
    assert context(run(*load(DATA / "toy-gpt.yaml")))["hardware"]["fuse"] is None
