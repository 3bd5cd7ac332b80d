"""Operator graphs of BERT-, GPT- and Llama-style Transformers for encode, prefill and decode steps.

FLOP counts per element of the non-matmul ops are fixed conventions, stated in docs/model.md:
layernorm 7, rmsnorm 4, softmax 5 (incl. the 1/sqrt(d) scale and mask), gelu 8 (tanh form),
relu 1, SiLU-gate 5, residual add 1, RoPE 3. Matmuls count 2*M*N*K (+ M*N for a bias).
"""

from __future__ import annotations

import dataclasses

import networkx as nx

from sim.config.types import DTYPE_BYTES
from sim.config.workload import Model, Workload
from sim.graph.ops import Access, Collective, Op, Tensor

NORM_FLOPS = {"layernorm": 7, "rmsnorm": 4}
ACT_FLOPS = {"gelu": 8, "relu": 1, "silu": 5}  # silu counts x*sigmoid(x) times the gate
SOFTMAX_FLOPS = 5
ROPE_FLOPS = 3


class OpGraph:
    """A networkx DAG of `Op`s. `ops` is a deterministic topological order (insertion order breaks ties).

    The builder records ops and edges in plain lists and the networkx graph is made from them in bulk
    on first use: the later stages walk `ops` in order and need the DAG only to ask about structure."""

    def __init__(self) -> None:
        self._order: list[Op] = []
        self._edges: list[tuple[str, str]] = []
        self._names: set[str] = set()
        self._dag: nx.DiGraph | None = None

    def replace_last(self, op: Op) -> None:
        """Swap the op just added for an amended copy of it (same name and edges)."""
        self._order[-1] = op
        self._dag = None

    def add(self, op: Op, deps: list[Op | None]) -> Op:
        assert op.name not in self._names, f"duplicate op name {op.name}"
        self._names.add(op.name)
        self._edges.extend((dep.name, op.name) for dep in deps if dep is not None)
        self._order.append(op)
        self._dag = None
        return op

    @property
    def dag(self) -> nx.DiGraph:
        if self._dag is None:
            dag = nx.DiGraph()
            dag.add_nodes_from((op.name, {"op": op, "index": i}) for i, op in enumerate(self._order))
            dag.add_edges_from(self._edges)
            self._dag = dag
        return self._dag

    @property
    def ops(self) -> list[Op]:
        return self._order

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor any op touches, by name, in first-touch order."""
        out: dict[str, Tensor] = {}
        for op in self._order:
            for access in op.reads + op.writes:
                out.setdefault(access.tensor.name, access.tensor)
        return out


class _Builder:
    """Holds the workload's sizes so each op constructor stays a few lines."""

    def __init__(self, workload: Workload):
        self.m: Model = workload.model
        sc = workload.scenario
        par = workload.parallelism
        self.tp, self.pp = par.tensor, par.pipeline
        # one data-parallel replica is built; the others are identical and independent
        self.batch = sc.batch // par.data
        # per tensor-parallel rank (Megatron): heads, FFN columns and vocabulary rows are split;
        # KV heads too, or replicated when there are fewer of them than ranks
        self.heads = self.m.heads // self.tp
        self.kv_heads = max(1, self.m.n_kv_heads // self.tp)
        self.ffn = self.m.ffn // self.tp
        self.vocab = -(-self.m.vocab // self.tp)
        self.stage = 0
        self.prompt = sc.prompt_tokens
        self.max_context = sc.prompt_tokens + sc.new_tokens
        self.wb = DTYPE_BYTES[sc.precision.weights]
        self.ab = DTYPE_BYTES[sc.precision.activations]
        self.kb = DTYPE_BYTES[sc.precision.kv_cache]
        self.dtype = sc.precision.activations
        self.graph = OpGraph()
        self._weights: dict[str, Tensor] = {}
        self.phase = "prefill"
        self.step = 0

    # -- tensors -------------------------------------------------------------------------------
    def weight(self, name: str, elements: int) -> Tensor:
        if name not in self._weights:
            self._weights[name] = Tensor(name, "weight", elements * self.wb, elements)
        return self._weights[name]

    def kv(self, layer: int, which: str) -> Tensor:
        elements = self.batch * self.max_context * self.kv_heads * self.m.head_dim
        return Tensor(f"L{layer}.{which}_cache", "kv_cache", elements * self.kb, elements)

    def act(self, name: str, elements: int) -> Access:
        full = f"{self.prefix}{name}"
        return Access(Tensor(full, "activation", elements * self.ab, elements), elements * self.ab)

    @property
    def prefix(self) -> str:
        return "prefill." if self.phase in ("prefill", "encode") else f"decode{self.step}."

    def op(self, kind: str, layer: int, op_class: str, flops: float, reads, writes, deps, shape=()) -> Op:
        lname = "emb" if layer < 0 else ("head" if layer >= self.m.layers else f"L{layer}")
        op = Op(
            name=f"{self.prefix}{lname}.{kind}", kind=kind, op_class=op_class,
            engine="matrix" if op_class in ("gemm", "gemv", "attention") else "vector",
            phase=self.phase, step=self.step, layer=layer, dtype=self.dtype, flops=float(flops),
            reads=tuple(reads), writes=tuple(writes), shape=tuple(shape), stage=self.stage,
        )
        return self.graph.add(op, deps)

    def collective(self, kind: str, layer: int, buffer: Access, deps, name: str | None = None,
                   dst_stage: int | None = None) -> Op:
        """An all-reduce / all-gather over the stage's tensor-parallel group, or a send to another
        stage. It reads and writes its buffer where the buffer lives."""
        dst = self.stage if dst_stage is None else dst_stage
        coll = Collective(kind, buffer.bytes, self.stage, dst)
        op = self.op(name or kind, layer, "collective", 0.0, [buffer], [buffer], deps)
        op = dataclasses.replace(op, engine="link", collective=coll)
        self.graph.replace_last(op)
        return op

    def to_stage(self, stage: int, x_op: Op, layer: int) -> Op:
        """Move the activation to the next pipeline stage (a send/recv pair on the two devices)."""
        if stage == self.stage:
            return x_op
        send = self.collective("p2p", layer, out(x_op), [x_op], name="send", dst_stage=stage)
        self.stage = stage
        return send

    # -- op constructors -----------------------------------------------------------------------
    def linear(self, kind: str, layer: int, x: Access, n: int, w_name: str, deps, m_rows: int,
               out_kv: list[Access] | None = None, bias: bool | None = None) -> Op:
        """y = x @ W (+ b). A decode-step projection (one token per sequence) is a GEMV."""
        k = round(x.bytes / self.ab / m_rows)
        bias = self.m.has_bias if bias is None else bias
        w = self.weight(w_name, k * n + (n if bias else 0))
        flops = 2 * m_rows * n * k + (m_rows * n if bias else 0)
        op_class = "gemv" if self.phase == "decode" else "gemm"
        writes = out_kv if out_kv is not None else [self.act(f"{kind}.L{layer}", m_rows * n)]
        return self.op(kind, layer, op_class, flops, [x, Access(w, w.bytes)], writes, deps, (1, m_rows, n, k))

    def vector(self, kind: str, layer: int, inputs: list[Access], out_elements: int, flops_per: float,
               deps, weights: list[Tensor] = (), op_class: str = "elementwise") -> Op:
        out = self.act(f"{kind}.L{layer}", out_elements)
        reads = list(inputs) + [Access(w, w.bytes) for w in weights]
        return self.op(kind, layer, op_class, flops_per * out_elements, reads, [out], deps)

    def norm(self, kind: str, layer: int, x: Access, deps, w_name: str) -> Op:
        h = self.m.hidden
        n_params = h * (2 if self.m.norm == "layernorm" else 1)
        w = self.weight(w_name, n_params)
        return self.vector(kind, layer, [x], x.tensor.elements, NORM_FLOPS[self.m.norm], deps, [w], "norm")


def out(op: Op) -> Access:
    """The activation an op produced (its first write)."""
    return op.writes[0]


def build_graph(workload: Workload) -> OpGraph:
    """Ops of the whole scenario: prefill/encode, then each decode step, chained in order."""
    b = _Builder(workload)
    phase = workload.scenario.phase
    last: Op | None = None
    if phase in ("encode", "prefill", "generate"):
        b.phase = "encode" if phase == "encode" else "prefill"
        last = _forward(b, tokens=b.prompt, past=0, after=last)
    if phase in ("decode", "generate"):
        b.phase = "decode"
        for step in range(workload.scenario.new_tokens):
            b.step = step
            last = _forward(b, tokens=1, past=b.prompt + step, after=last)
    return b.graph


def _forward(b: _Builder, tokens: int, past: int, after: Op | None) -> Op:
    """One forward pass over `tokens` new tokens per sequence with `past` tokens already cached."""
    m = b.m
    rows = b.batch * tokens
    if after is not None and b.stage != 0:  # the sampled token goes back to the first stage
        tokens_msg = Access(Tensor(f"{b.prefix}tokens", "activation", b.batch * 4, b.batch), b.batch * 4)
        after = b.collective("p2p", m.layers, tokens_msg, [after], name="send_token", dst_stage=0)
        b.stage = 0
    x = _embed(b, rows, after)
    for layer in range(m.layers):
        x = b.to_stage(layer * b.pp // m.layers, x, layer)
        x = _layer(b, layer, x, rows, tokens, past)
    return _head(b, x, rows, tokens)


def _embed(b: _Builder, rows: int, after: Op | None) -> Op:
    m, h = b.m, b.m.hidden
    wte = b.weight("wte", b.vocab * h)
    gather = [Access(wte, rows * h * b.wb)]
    if m.family == "llama":  # token lookup only; positions enter through RoPE
        return _gather(b, gather, rows, 0, after)
    tables = [b.weight("wpe", m.max_positions * h)]
    if m.family == "bert":
        tables.append(b.weight("wtt", 2 * h))
    gather += [Access(t, rows * h * b.wb) for t in tables]
    emb = _gather(b, gather, rows, len(tables), after)
    if m.family == "bert":
        return b.norm("embed_norm", -1, out(emb), [emb], "emb_ln")
    return emb


def _gather(b: _Builder, gather: list[Access], rows: int, adds: int, after: Op | None) -> Op:
    out_act = b.act("embed", rows * b.m.hidden)
    emb = b.op("embed", -1, "elementwise", adds * rows * b.m.hidden, gather, [out_act], [after])
    if b.tp > 1:  # vocabulary-parallel table: each rank fills its rows, an all-reduce completes them
        return b.collective("allreduce", -1, out(emb), [emb], name="embed_allreduce")
    return emb


def _layer(b: _Builder, layer: int, x_op: Op, rows: int, tokens: int, past: int) -> Op:
    m, h, d = b.m, b.m.hidden, b.m.head_dim
    heads, kvh = b.heads, b.kv_heads
    ctx = past + tokens
    x = out(x_op)
    pre = m.family != "bert"  # GPT/Llama normalise before each block, BERT after
    p = f"L{layer}."

    # attention block
    attn_in_op = b.norm("attn_norm", layer, x, [x_op], p + "ln1") if pre else x_op
    kv_new = rows * kvh * d
    k_cache, v_cache = b.kv(layer, "k"), b.kv(layer, "v")
    k_write, v_write = Access(k_cache, kv_new * b.kb), Access(v_cache, kv_new * b.kb)
    q_act = b.act(f"q.L{layer}", rows * heads * d)
    rope = m.family == "llama"
    k_act = b.act(f"k.L{layer}", kv_new)
    qkv_writes = [q_act, k_act, v_write] if rope else [q_act, k_write, v_write]
    qkv = b.linear("qkv", layer, out(attn_in_op), (heads + 2 * kvh) * d, p + "wqkv", [attn_in_op], rows,
                   out_kv=qkv_writes)
    q_op = qkv
    if rope:
        q_rot = b.act(f"q_rope.L{layer}", rows * heads * d)
        q_op = b.op("rope", layer, "elementwise", ROPE_FLOPS * rows * (heads + kvh) * d,
                    [q_act, k_act], [q_rot, k_write], [qkv])
    q_in = out(q_op)
    bh = b.batch * heads
    score_elems = bh * tokens * ctx
    k_read = Access(k_cache, b.batch * ctx * kvh * d * b.kb)
    v_read = Access(v_cache, b.batch * ctx * kvh * d * b.kb)
    scores = b.op("scores", layer, "attention", 2 * bh * tokens * ctx * d,
                  [q_in, k_read], [b.act(f"scores.L{layer}", score_elems)], [q_op], (bh, tokens, ctx, d))
    soft = b.vector("softmax", layer, [out(scores)], score_elems, SOFTMAX_FLOPS, [scores], op_class="softmax")
    av = b.op("attn_v", layer, "attention", 2 * bh * tokens * ctx * d,
              [out(soft), v_read], [b.act(f"attn.L{layer}", rows * heads * d)], [soft, qkv], (bh, tokens, d, ctx))
    proj = b.linear("attn_out", layer, out(av), h, p + "wo", [av], rows)
    if b.tp > 1:  # row-parallel projection: partial sums meet in an all-reduce
        proj = b.collective("allreduce", layer, out(proj), [proj], name="attn_allreduce")
    res1 = b.vector("residual", layer, [x, out(proj)], rows * h, 1, [proj, x_op])
    if not pre:
        res1 = b.norm("attn_norm", layer, out(res1), [res1], p + "ln1")

    # feed-forward block
    ffn_in = b.norm("ffn_norm", layer, out(res1), [res1], p + "ln2") if pre else res1
    up = b.linear("ffn_up", layer, out(ffn_in), b.ffn, p + "w_up", [ffn_in], rows)
    if m.gated_ffn:
        gate = b.linear("ffn_gate", layer, out(ffn_in), b.ffn, p + "w_gate", [ffn_in], rows)
        act = b.vector("act", layer, [out(up), out(gate)], rows * b.ffn, ACT_FLOPS[m.activation], [up, gate])
    else:
        act = b.vector("act", layer, [out(up)], rows * b.ffn, ACT_FLOPS[m.activation], [up])
    down = b.linear("ffn_down", layer, out(act), h, p + "w_down", [act], rows)
    if b.tp > 1:
        down = b.collective("allreduce", layer, out(down), [down], name="ffn_allreduce")
    res2 = b.vector("residual2", layer, [out(res1), out(down)], rows * h, 1, [down, res1])
    if not pre:
        res2 = b.norm("ffn_norm", layer, out(res2), [res2], p + "ln2")
    return res2


def _head(b: _Builder, x_op: Op, rows: int, tokens: int) -> Op:
    """BERT: tanh pooler on the [CLS] token. GPT/Llama: final norm, LM head on the last token only."""
    m, h, L = b.m, b.m.hidden, b.m.layers
    if m.family == "bert":
        cls = Access(out(x_op).tensor, b.batch * h * b.ab)
        dense = b.linear("pooler", L, cls, h, "pooler", [x_op], b.batch)
        return b.vector("pooler_tanh", L, [out(dense)], b.batch * h, 1, [dense])
    ln = b.norm("final_norm", L, out(x_op), [x_op], "ln_f")
    last = Access(out(ln).tensor, b.batch * h * b.ab)  # the next token comes from the last position
    w = "wte" if m.family == "gpt" else "lm_head"  # GPT-2 ties the LM head to the token embedding
    head = b.linear("lm_head", L, last, b.vocab, w, [ln], b.batch, bias=False)
    if b.tp > 1:  # each rank holds a slice of the logits
        logits = b.act("logits", b.batch * b.vocab * b.tp)
        return b.collective("allgather", L, logits, [head], name="logits_allgather")
    return head
