"""Operator graph: exact FLOPs, bytes and parameter counts against hand calculation and published sizes."""

import networkx as nx
import pytest

from conftest import DATA, ROOT, load
from sim.graph import build_graph


def weights(graph):
    return sum(t.elements for t in graph.tensors().values() if t.kind == "weight")


@pytest.mark.parametrize("name,params", [
    ("gpt2", 124_439_808),          # HF gpt2
    ("gpt2-xl", 1_557_611_200),     # HF gpt2-xl
    ("bert-base", 109_482_240),     # HF bert-base-uncased (with pooler)
    ("bert-large", 335_141_888),    # HF bert-large-uncased
    ("llama2-7b", 6_738_415_616),   # Llama-2-7b-hf
    ("llama2-13b-int4", 13_015_864_320),
])
def test_parameter_counts_match_published(name, params):
    short = {} if "bert" in name else {"scenario__phase": "prefill", "scenario__new_tokens": 0}
    wl, _ = load(ROOT / "workloads" / f"{name}.yaml", **short)
    assert weights(build_graph(wl)) == params


def test_llama_70b_gqa_parameter_count_and_kv_size():
    wl, _ = load(ROOT / "workloads/llama2-7b.yaml", model__layers=80, model__hidden=8192, model__heads=64,
                 model__kv_heads=8, model__ffn=28672, scenario__new_tokens=1)
    g = build_graph(wl)
    assert weights(g) == 68_976_648_192
    kv = sum(t.bytes for t in g.tensors().values() if t.kind == "kv_cache")
    # 2 (K, V) x layers x kv_heads x head_dim x context x batch x 2 bytes
    assert kv == 2 * 80 * 8 * 128 * (1024 + 1) * 1 * 2


def op(graph, name):
    return next(o for o in graph.ops if o.name == name)


def test_toy_qkv_flops_and_bytes_by_hand(toy):
    g = build_graph(toy[0])
    qkv = op(g, "prefill.L0.qkv")
    m, n, k = 2 * 8, 3 * 64, 64
    assert qkv.shape == (1, m, n, k)
    assert qkv.flops == 2 * m * n * k + m * n  # with bias
    assert qkv.op_class == "gemm"
    read = m * k * 2 + (k * n + n) * 2
    write = 3 * m * 64 * 2
    assert qkv.bytes == read + write


def test_decode_reads_kv_cache_one_longer_each_step(toy):
    g = build_graph(toy[0])
    for step in range(3):
        ctx = 8 + step + 1
        scores = op(g, f"decode{step}.L0.scores")
        k_read = next(a for a in scores.reads if a.tensor.kind == "kv_cache")
        assert k_read.bytes == 2 * ctx * 4 * 16 * 2  # batch x ctx x heads x head_dim x fp16
        assert scores.flops == 2 * (2 * 4) * 1 * ctx * 16
        assert op(g, f"decode{step}.L0.qkv").op_class == "gemv"
    prefill_scores = op(g, "prefill.L0.scores")
    assert prefill_scores.flops == 2 * (2 * 4) * 8 * 8 * 16
    # prefill writes K and V for the whole prompt, each decode step for one token
    kv_writes = [a.bytes for a in op(g, "prefill.L0.qkv").writes if a.tensor.kind == "kv_cache"]
    assert kv_writes == [2 * 8 * 64 * 2] * 2


def test_lm_head_runs_on_last_token_and_is_tied_in_gpt(toy):
    g = build_graph(toy[0])
    head = op(g, "prefill.head.lm_head")
    assert head.shape == (1, 2, 128, 64)
    assert head.reads[1].tensor.name == "wte"
    # the embedding table lies vocab x hidden: the head streams rows of K; every other weight rows of N
    assert head.weight_layout == "nk"
    assert {o.weight_layout for o in g.ops if o.op_class in ("gemm", "gemv") and o.kind != "lm_head"} == {"kn"}


def test_llama_has_gate_rope_and_no_bias():
    wl, _ = load(ROOT / "workloads/llama2-7b.yaml", model__layers=1, scenario__prompt_tokens=4,
                 scenario__new_tokens=1)
    g = build_graph(wl)
    kinds = [o.kind for o in g.ops if o.layer == 0 and o.phase == "prefill"]
    assert kinds == ["attn_norm", "qkv", "rope", "scores", "softmax", "attn_v", "attn_out", "residual",
                     "ffn_norm", "ffn_up", "ffn_gate", "act", "ffn_down", "residual2"]
    up = op(g, "prefill.L0.ffn_up")
    assert up.flops == 2 * 4 * 11008 * 4096


def test_fused_attention_is_one_op_with_the_same_flops_and_no_stored_scores():
    """FlashAttention-style: QKᵀ, softmax and ×V in one op reading Q, K, V and writing the context;
    the same FLOPs as the three unfused ops, and no score matrix among the activations."""
    sets = dict(model__layers=1, scenario__prompt_tokens=64, scenario__new_tokens=1)
    plain = build_graph(load(ROOT / "workloads/llama2-7b.yaml", **sets)[0])
    fused = build_graph(load(ROOT / "workloads/llama2-7b.yaml", scenario__attention="fused", **sets)[0])
    kinds = [o.kind for o in fused.ops if o.layer == 0 and o.phase == "prefill"]
    assert "attention" in kinds and not {"scores", "softmax", "attn_v"} & set(kinds)
    three = sum(op(plain, f"prefill.L0.{k}").flops for k in ("scores", "softmax", "attn_v"))
    one = op(fused, "prefill.L0.attention")
    assert one.flops == three
    assert [a.tensor.kind for a in one.reads] == ["activation", "kv_cache", "kv_cache"]
    assert not any(a.tensor.name.startswith("scores") for o in fused.ops for a in o.writes)


def test_bert_is_post_norm_with_pooler():
    wl, _ = load(ROOT / "workloads/bert-base.yaml", model__layers=1, scenario__batch=1, scenario__prompt_tokens=16)
    g = build_graph(wl)
    kinds = [o.kind for o in g.ops]
    assert kinds[:2] == ["embed", "embed_norm"]
    assert kinds[-2:] == ["pooler", "pooler_tanh"]
    layer = [o.kind for o in g.ops if o.layer == 0]
    assert layer.index("attn_norm") > layer.index("residual")


def test_graph_is_a_dag_in_topological_order(toy):
    g = build_graph(toy[0])
    assert nx.is_directed_acyclic_graph(g.dag)
    position = {o.name: i for i, o in enumerate(g.ops)}
    assert all(position[a] < position[b] for a, b in g.dag.edges)
    assert len(g.ops) == g.dag.number_of_nodes() == 4 * (1 + 12 + 2)  # prefill + 3 steps
    assert nx.has_path(g.dag, "prefill.head.lm_head", "decode2.head.lm_head")


def test_int4_weights_halve_bytes_not_flops():
    fp16, _ = load(DATA / "toy-gpt.yaml")
    int4, _ = load(DATA / "toy-gpt.yaml", scenario__precision__weights="int4")
    a, b = op(build_graph(fp16), "prefill.L0.ffn_up"), op(build_graph(int4), "prefill.L0.ffn_up")
    assert a.flops == b.flops
    wa, wb = a.reads[1].bytes, b.reads[1].bytes
    assert wb == wa / 4


def test_quantization_groups_add_a_scale_and_zero_per_group():
    """int4 in groups of 32 with fp16 scales: 0.5 + 2 x 2 / 32 = 0.625 bytes per weight (gpt-fast's layout)."""
    int4, _ = load(DATA / "toy-gpt.yaml", scenario__precision__weights="int4")
    grouped, _ = load(DATA / "toy-gpt.yaml", scenario__precision__weights="int4", scenario__precision__group_size=32)
    a, b = op(build_graph(int4), "prefill.L0.ffn_up"), op(build_graph(grouped), "prefill.L0.ffn_up")
    assert a.flops == b.flops
    assert b.reads[1].bytes == pytest.approx(a.reads[1].bytes * 0.625 / 0.5)


def test_a_matmul_knows_how_far_apart_its_weight_rows_lie():
    """The graph gives each matmul reading a weight its stored element size (without bias or group
    scales): GPT-2's biased linears have rows of N elements, the tied LM head (an N x K embedding) of K,
    training's dx GEMMs the forward's, an int4 weight half a byte each; attention over the KV cache none
    (its rows are a head apart, whatever the context)."""
    from sim.mapping.plan import weight_row_bytes

    wl, _ = load(DATA / "toy-gpt.yaml")
    ops = {op.kind: op for blk in build_graph(wl).blocks for op in blk.ops}
    assert weight_row_bytes(ops["ffn_up"]) == 256 * 2 and ops["ffn_up"].kernel == "linear"  # 64 x 256 fp16
    assert weight_row_bytes(ops["ffn_down"]) == 64 * 2
    assert ops["lm_head"].weight_layout == "nk" and weight_row_bytes(ops["lm_head"]) == 64 * 2  # vocab x hidden
    assert weight_row_bytes(ops["scores"]) == weight_row_bytes(ops["attn_v"]) == 0
    quant, _ = load(DATA / "toy-gpt.yaml", scenario__precision={"weights": "int4", "activations": "fp16",
                                                                "kv_cache": "fp16", "group_size": 32})
    q = {op.kind: op for blk in build_graph(quant).blocks for op in blk.ops}
    assert weight_row_bytes(q["ffn_up"]) == 256 * 0.5
    train, _ = load(DATA / "toy-gpt.yaml", scenario__phase="train", scenario__new_tokens=0)
    t = {op.kind: op for blk in build_graph(train).blocks for op in blk.ops}
    assert weight_row_bytes(t["ffn_up_dx"]) == weight_row_bytes(t["ffn_up"]) == 256 * 2
    assert weight_row_bytes(t["ffn_up_dw"]) == 0  # it reads activations and gradients, no weight
