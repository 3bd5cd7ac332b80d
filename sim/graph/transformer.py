"""Operator graphs of BERT-, GPT- and Llama-style Transformers for encode, prefill and decode steps.

FLOP counts per element of the non-matmul ops are fixed conventions, stated in docs/model.md:
layernorm 7, rmsnorm 4, softmax 5 (incl. the 1/sqrt(d) scale and mask), gelu 8 (tanh form),
relu 1, SiLU-gate 5, residual add 1, RoPE 3, dropout 2 (draw and scale). Matmuls count 2*M*N*K
(+ M*N for a bias).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import networkx as nx

from sim.config.types import DTYPE_BYTES
from sim.config.workload import Model, Workload
from sim.graph.ops import Access, Block, Collective, Op, Tensor
from sim.graph.schedule import stage_order
from sim.graph.training import LOSS_FLOPS, StepBuilder

NORM_FLOPS = {"layernorm": 7, "rmsnorm": 4}
ACT_FLOPS = {"gelu": 8, "relu": 1, "silu": 5}  # silu counts x*sigmoid(x) times the gate
SOFTMAX_FLOPS = 5
ROPE_FLOPS = 3
DROPOUT_FLOPS = 2
#: The residual stream between blocks: the embedding's output and every layer's carry one name (the
#: layer tells them apart), so the first layer's ops equal the others' and cache states seen from
#: consecutive layers compare equal.
HIDDEN = "hidden"


class OpGraph:
    """The scenario's ops as a list of `Block`s (one per layer per forward pass), in execution order.

    Blocks of one pass with equal shapes share their `ops` tuple, so a 2,048-token decode of an
    80-layer model holds a few templates per pass, not 2.6 million ops. `ops` binds every op (full
    names, absolute tensors) and `dag` links them by data dependence; both are for inspection and
    tests, the pipeline reads `blocks`."""

    def __init__(self, blocks: list[Block] | None = None) -> None:
        self.blocks: list[Block] = blocks or []
        self._ops: list[Op] | None = None
        self._dag: nx.DiGraph | None = None

    @property
    def ops(self) -> list[Op]:
        if self._ops is None:
            self._ops = [blk.bind(op) for blk in self.blocks for op in blk.ops]
        return self._ops

    @property
    def dag(self) -> nx.DiGraph:
        """Edges from each op to the ops that read what it wrote (until it is written again), and
        from the last op of a pass to the first of the next (the sampled token feeds the next pass)."""
        if self._dag is None:
            dag = nx.DiGraph()
            dag.add_nodes_from((op.name, {"op": op, "index": i}) for i, op in enumerate(self.ops))
            writer: dict[str, str] = {}
            last_of_pass: str | None = None
            phase_step = None
            for op in self.ops:
                if (op.phase, op.step) != phase_step and last_of_pass is not None:
                    dag.add_edge(last_of_pass, op.name)
                phase_step = (op.phase, op.step)
                for a in op.reads:
                    src = writer.get(a.tensor.name)
                    if src is not None and src != op.name:
                        dag.add_edge(src, op.name)
                for a in op.writes:
                    writer[a.tensor.name] = op.name
                last_of_pass = op.name
            self._dag = dag
        return self._dag

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor any op touches, by name, in first-touch order."""
        out: dict[str, Tensor] = {}
        for op in self.ops:
            for access in op.reads + op.writes:
                out.setdefault(access.tensor.name, access.tensor)
        return out


class _Builder:
    """Holds the workload's sizes so each op constructor stays a few lines. Ops are collected into
    the current block; `_forward` reuses a layer's ops for every later layer with the same shapes."""

    def __init__(self, workload: Workload):
        self.m: Model = workload.model
        sc = workload.scenario
        par = workload.parallelism
        self.tp, self.pp = par.tensor, par.pipeline
        # one data-parallel replica is built; the others are identical and independent. Its batch is
        # split into micro-batches, each its own chain of forward passes with its own KV cache
        self.microbatches = par.microbatches
        self.data = par.data
        # ZeRO-3 (FSDP): each data-parallel replica holds 1/d of every weight, gathered before use
        zero3 = sc.phase == "train" and workload.train.zero == 3 and par.data > 1
        self.weight_share = 1 / par.data if zero3 else 1.0
        self.batch = sc.batch // (par.data * par.microbatches)
        self.micro = 0
        # per tensor-parallel rank (Megatron): heads, FFN columns and vocabulary rows are split;
        # KV heads too, or replicated when there are fewer of them than ranks
        self.heads = self.m.heads // self.tp
        self.kv_heads = max(1, self.m.n_kv_heads // self.tp)
        self.ffn = self.m.ffn // self.tp
        self.vocab = -(-self.m.vocab // self.tp)
        self.stage = 0
        self.prompt = sc.prompt_tokens
        self.fused_attention = sc.attention == "fused"
        self.max_context = sc.prompt_tokens + sc.new_tokens
        self.wb = sc.precision.weight_bytes()
        self.w_element = DTYPE_BYTES[sc.precision.weights]  # a weight's own bytes, without group scales
        self.scenario_weights = sc.precision.weights
        self.ab = DTYPE_BYTES[sc.precision.activations]
        self.training = sc.phase == "train"
        # a training step and an encoder's pass keep no KV cache: K and V are activations of the pass,
        # dead once its attention has read them (no later token reads them)
        self.no_cache = sc.phase in ("train", "encode")
        self.training_spec = workload.train
        self.kb = self.ab if self.no_cache else DTYPE_BYTES[sc.precision.kv_cache]
        self.dtype = sc.precision.activations
        self.blocks: list[Block] = []
        self._ops: list[Op] = []
        self._interned: dict[tuple[Op, ...], tuple[Op, ...]] = {}
        self._interned_ops: dict[Op, Op] = {}  # equal ops of other passes are one object: planned once
        self.phase = "prefill"
        self.step = 0
        self.seq = 0

    def close_block(self, layer: int, ops: tuple[Op, ...] | None = None) -> tuple[Op, ...]:
        """End the current block (its ops, or `ops` reused from an equal layer) at `layer`."""
        if ops is None:
            ops, self._ops = tuple(self._ops), []
            ops = self._interned.setdefault(ops, ops)  # equal blocks of other passes share one tuple
        self.blocks.append(Block(self.phase, self.step, layer, self.seq, ops, self.m.layers, micro=self.micro,
                                 microbatches=self.microbatches))
        return ops

    # -- tensors -------------------------------------------------------------------------------
    def weight(self, name: str, elements: int, per_layer: bool = True) -> Tensor:
        """A weight as the device holds it: whole, or its 1/d shard under ZeRO-3 (`full` reads all of it)."""
        return Tensor(name, "weight", elements * self.wb * self.weight_share, elements,
                      "layer" if per_layer else "global")

    def full(self, w: Tensor) -> float:
        """All bytes of a weight (what an op reads of it, gathered first where it is sharded)."""
        return w.elements * self.wb

    def kv(self, which: str) -> Tensor:
        if self.no_cache:
            elements = self.batch * self.prompt * self.kv_heads * self.m.head_dim
            return Tensor(which, "activation", elements * self.kb, elements, "pass")
        elements = self.batch * self.max_context * self.kv_heads * self.m.head_dim
        mine = f".mb{self.micro}" if self.microbatches > 1 else ""  # each micro-batch's sequences
        return Tensor(f"{which}_cache{mine}", "kv_cache", elements * self.kb, elements, "layer")

    def act(self, name: str, elements: int) -> Access:
        return Access(Tensor(name, "activation", elements * self.ab, elements, "pass"), elements * self.ab)

    def op(self, kind: str, op_class: str, flops: float, reads, writes, shape=(), kernel: str = "",
           layout: Literal["kn", "nk"] = "kn", row: int = 0, epilogue: float = 0.0,
           weight_element_bytes: float = 0.0) -> Op:
        matrix = op_class in ("gemm", "gemv", "attention")
        op = Op(
            name=kind, kind=kind, op_class=op_class, engine="matrix" if matrix else "vector",
            phase=self.phase, step=0, layer=0, dtype=self.dtype, flops=float(flops),
            reads=tuple(reads), writes=tuple(writes), shape=tuple(shape), stage=self.stage,
            kernel=kernel or ("matmul" if matrix else kind), weight_layout=layout, row=row,
            epilogue=float(epilogue), weight_element_bytes=weight_element_bytes,
        )
        op = self._interned_ops.setdefault(op, op)
        self._ops.append(op)
        return op

    def collective(self, kind: str, buffer: Access, name: str | None = None, dst_stage: int | None = None,
                   source: Access | None = None) -> Op:
        """An all-reduce / all-gather over the stage's tensor-parallel group, or a send to another
        stage. It reads and writes its buffer where the buffer lives; an all-gather reads each rank's
        `source` slice into the whole buffer."""
        dst = self.stage if dst_stage is None else dst_stage
        coll = Collective(kind, buffer.bytes, self.stage, dst)
        op = self.op(name or kind, "collective", 0.0, [source or buffer], [buffer], kernel=kind)
        op = dataclasses.replace(op, engine="link", collective=coll)
        op = self._ops[-1] = self._interned_ops.setdefault(op, op)
        return op

    def to_stage(self, stage: int, x: Access) -> Access:
        """Move the activation to the next pipeline stage (a send/recv pair on the two devices)."""
        if stage != self.stage:
            self.collective("p2p", x, name="send", dst_stage=stage)
            self.stage = stage
        return x

    # -- op constructors -----------------------------------------------------------------------
    def linear(self, kind: str, x: Access, n: int, w_name: str, m_rows: int, out_kv: list[Access] | None = None,
               bias: bool | None = None, per_layer: bool = True, layout: Literal["kn", "nk"] = "kn") -> Op:
        """y = x @ W (+ b). A decode-step projection (one token per sequence) is a GEMV."""
        k = round(x.bytes / self.ab / m_rows)
        bias = self.m.has_bias if bias is None else bias
        w = self.weight(w_name, k * n + (n if bias else 0), per_layer)
        flops = 2 * m_rows * n * k + (m_rows * n if bias else 0)
        op_class = "gemv" if self.phase == "decode" else "gemm"
        writes = out_kv if out_kv is not None else [self.act(kind, m_rows * n)]
        return self.op(kind, op_class, flops, [x, Access(w, self.full(w))], writes, (1, m_rows, n, k),
                       kernel="linear" if bias else "matmul", layout=layout, epilogue=m_rows * n if bias else 0,
                       weight_element_bytes=self.w_element)

    def vector(self, kind: str, kernel: str, inputs: list[Access], out_elements: int, flops_per: float,
               weights: list[Tensor] = (), op_class: str = "elementwise", out_name: str | None = None,
               row: int = 0) -> Op:
        out = self.act(out_name or kind, out_elements)
        reads = list(inputs) + [Access(w, self.full(w)) for w in weights]
        return self.op(kind, op_class, flops_per * out_elements, reads, [out], kernel=kernel, row=row)

    def dropout(self, kind: str, x: Access) -> Access:
        """Training's dropout on `x` where `training.dropout` > 0 (else `x`): the output, and a one-byte
        mask per element kept for backward (PyTorch's boolean mask; full recomputation draws it again)."""
        if not self.training or self.training_spec.dropout == 0:
            return x
        n = x.tensor.elements
        mask = Access(Tensor(f"{kind}_mask", "activation", n, n, "pass"), n)
        return out(self.op(kind, "elementwise", DROPOUT_FLOPS * n, [x], [self.act(kind, n), mask], kernel="dropout"))

    def norm(self, kind: str, x: Access, w_name: str, per_layer: bool = True, out_name: str | None = None) -> Op:
        h = self.m.hidden
        n_params = h * (2 if self.m.norm == "layernorm" else 1)
        w = self.weight(w_name, n_params, per_layer)
        return self.vector(kind, self.m.norm, [x], x.tensor.elements, NORM_FLOPS[self.m.norm], [w], "norm", out_name,
                           row=h)


def out(op: Op) -> Access:
    """The activation an op produced (its first write)."""
    return op.writes[0]


def build_graph(workload: Workload) -> OpGraph:
    """Ops of the whole scenario: prefill/encode, then each decode step, chained in order. Each pass
    runs once per micro-batch (in micro-batch order: the schedule of forward-only passes); every such
    run is a forward pass of its own (`seq`)."""
    b = _Builder(workload)
    phase = workload.scenario.phase
    par = workload.parallelism
    # the order the first stage runs the micro-batches' passes in (forward only: the same under both schedules)
    order = [k for k, _ in stage_order(0, par.pipeline, par.microbatches, par.schedule, backward=False)]
    if phase in ("encode", "prefill", "generate"):
        b.phase = "encode" if phase == "encode" else "prefill"
        for micro in order:
            b.micro = micro
            _forward(b, tokens=b.prompt, past=0, first=True)
            b.seq += 1
    if phase == "train":  # each micro-batch's forward and backward, then one update
        steps = StepBuilder(b)
        first: list[Block] = []
        for i, micro in enumerate(order):
            b.micro, b.phase = micro, "forward"
            at = len(b.blocks)
            _forward(b, tokens=b.prompt, past=0, first=True)
            fwd = b.blocks[at:]
            first = first or fwd
            # gradients are reduced over the replicas after the last micro-batch (DDP's no_sync before it);
            # ZeRO-2 and -3 keep only their shard, so they reduce-scatter after every micro-batch
            last = i == len(order) - 1
            steps.backward(fwd, accumulate=i > 0, reduce=par.data > 1 and (last or steps.zero >= 2))
            b.seq += 1
        steps.optimizer(first, b.seq)
        if b.weight_share < 1:
            b.blocks = steps.gather_weights(b.blocks)
        return OpGraph(b.blocks)
    if phase in ("decode", "generate"):
        b.phase = "decode"
        for step in range(workload.scenario.new_tokens):
            b.step = step
            for micro in order:
                b.micro = micro
                _forward(b, tokens=1, past=b.prompt + step, first=phase == "decode" and step == 0)
                b.seq += 1
    return OpGraph(b.blocks)


def _forward(b: _Builder, tokens: int, past: int, first: bool) -> None:
    """One forward pass over `tokens` new tokens per sequence with `past` tokens already cached: the
    embedding block, one block per layer, the head block. A layer's ops depend on its input, its
    stage and the pass's shapes only, so layers alike share one ops tuple. Every pass but a micro-batch's
    `first` reads the token sampled from its last pass."""
    m = b.m
    rows = b.batch * tokens
    if not first and b.stage != 0:  # the sampled token goes back to the first stage
        tokens_msg = Access(Tensor("tokens", "activation", b.batch * 4, b.batch, "pass"), b.batch * 4)
        b.collective("p2p", tokens_msg, name="send_token", dst_stage=0)
    b.stage = 0
    x = _embed(b, rows)
    b.close_block(-1)
    made: dict[tuple, tuple[tuple[Op, ...], Access, int]] = {}
    for layer in range(m.layers):
        x = x.shifted(1)  # the previous block's output, seen from this one
        stage = layer * b.pp // m.layers
        key = (b.stage, stage, x)
        if key in made:
            ops, x, b.stage = made[key]
            b.close_block(layer, ops)
            continue
        x_in = b.to_stage(stage, x)
        out_x = _layer(b, x_in, rows, tokens, past)
        made[key] = (b.close_block(layer), out_x, b.stage)
        x = out_x
    _head(b, x.shifted(1), rows)
    b.close_block(m.layers)


def _embed(b: _Builder, rows: int) -> Access:
    m, h = b.m, b.m.hidden
    wte = b.weight("wte", b.vocab * h, per_layer=False)
    gather = [Access(wte, rows * h * b.wb)]
    if m.family == "llama":  # token lookup only; positions enter through RoPE
        return _gather(b, gather, rows, 0)
    tables = [b.weight("wpe", m.max_positions * h, per_layer=False)]
    if m.family == "bert":
        tables.append(b.weight("wtt", 2 * h, per_layer=False))
    gather += [Access(t, rows * h * b.wb) for t in tables]
    emb = _gather(b, gather, rows, len(tables))
    if m.family == "bert":
        return out(b.norm("embed_norm", emb, "emb_ln", per_layer=False, out_name=HIDDEN))
    return emb


def _gather(b: _Builder, gather: list[Access], rows: int, adds: int) -> Access:
    name = "embed" if b.m.family == "bert" else HIDDEN  # BERT normalises it first
    emb = b.op("embed", "elementwise", adds * rows * b.m.hidden, gather, [b.act(name, rows * b.m.hidden)],
               kernel="gather")
    if b.tp > 1:  # vocabulary-parallel table: each rank fills its rows, an all-reduce completes them
        return out(b.collective("allreduce", out(emb), name="embed_allreduce"))
    return out(emb)


def _layer(b: _Builder, x: Access, rows: int, tokens: int, past: int) -> Access:
    """One Transformer layer on input `x`; returns its output."""
    m, h, d = b.m, b.m.hidden, b.m.head_dim
    heads, kvh = b.heads, b.kv_heads
    ctx = past + tokens
    pre = m.family != "bert"  # GPT/Llama normalise before each block, BERT after

    # attention block
    attn_in = out(b.norm("attn_norm", x, "ln1")) if pre else x
    kv_new = rows * kvh * d
    k_cache, v_cache = b.kv("k"), b.kv("v")
    k_write, v_write = Access(k_cache, kv_new * b.kb), Access(v_cache, kv_new * b.kb)
    q_act = b.act("q", rows * heads * d)
    rope = m.family == "llama"
    k_act = b.act("k", kv_new)
    qkv_writes = [q_act, k_act, v_write] if rope else [q_act, k_write, v_write]
    b.linear("qkv", attn_in, (heads + 2 * kvh) * d, "wqkv", rows, out_kv=qkv_writes)
    q_in = q_act
    if rope:
        q_in = b.act("q_rope", rows * heads * d)
        b.op("rope", "elementwise", ROPE_FLOPS * rows * (heads + kvh) * d, [q_act, k_act], [q_in, k_write])
    bh = b.batch * heads
    score_elems = bh * tokens * ctx
    k_read = Access(k_cache, b.batch * ctx * kvh * d * b.kb)
    v_read = Access(v_cache, b.batch * ctx * kvh * d * b.kb)
    if b.fused_attention:  # scores stay on chip: Q, K, V in, the context out (its softmax on the matrix time)
        av = b.op("attention", "attention", 4 * bh * tokens * ctx * d + SOFTMAX_FLOPS * score_elems,
                  [q_in, k_read, v_read], [b.act("attn", rows * heads * d)], (bh, tokens, ctx, d), kernel="attention")
    else:
        scores = b.op("scores", "attention", 2 * bh * tokens * ctx * d,
                      [q_in, k_read], [b.act("scores", score_elems)], (bh, tokens, ctx, d))
        soft = b.vector("softmax", "softmax", [out(scores)], score_elems, SOFTMAX_FLOPS, op_class="softmax")
        probs = b.dropout("probs_dropout", out(soft))
        av = b.op("attn_v", "attention", 2 * bh * tokens * ctx * d,
                  [probs, v_read], [b.act("attn", rows * heads * d)], (bh, tokens, d, ctx))
    proj = out(b.linear("attn_out", out(av), h, "wo", rows))
    if b.tp > 1:  # row-parallel projection: partial sums meet in an all-reduce
        proj = out(b.collective("allreduce", proj, name="attn_allreduce"))
    proj = b.dropout("attn_dropout", proj)  # on the whole hidden state, alike on every rank (Megatron)
    res1 = out(b.vector("residual", "add", [x, proj], rows * h, 1))
    if not pre:
        res1 = out(b.norm("attn_norm", res1, "ln1"))

    # feed-forward block
    ffn_in = out(b.norm("ffn_norm", res1, "ln2")) if pre else res1
    up = out(b.linear("ffn_up", ffn_in, b.ffn, "w_up", rows))
    if m.gated_ffn:
        gate = out(b.linear("ffn_gate", ffn_in, b.ffn, "w_gate", rows))
        act = b.vector("act", m.activation, [up, gate], rows * b.ffn, ACT_FLOPS[m.activation])
    else:
        act = b.vector("act", m.activation, [up], rows * b.ffn, ACT_FLOPS[m.activation])
    down = out(b.linear("ffn_down", out(act), h, "w_down", rows))
    if b.tp > 1:
        down = out(b.collective("allreduce", down, name="ffn_allreduce"))
    down = b.dropout("ffn_dropout", down)
    res2 = out(b.vector("residual2", "add", [res1, down], rows * h, 1, out_name=HIDDEN if pre else None))
    if not pre:
        res2 = out(b.norm("ffn_norm", res2, "ln2", out_name=HIDDEN))
    return res2


def _head(b: _Builder, x: Access, rows: int) -> None:
    """BERT: tanh pooler on the [CLS] token; in training the masked-LM head instead (dense, GELU, layer
    norm, then the tied word embeddings over every position, as Hugging Face's BertForMaskedLM scores
    them). GPT/Llama: final norm, LM head on the last token only (every token in training)."""
    m, h = b.m, b.m.hidden
    if m.family == "bert" and b.training:
        dense = b.linear("mlm_dense", x, h, "mlm_dense", rows, per_layer=False)
        act = b.vector("mlm_act", m.activation, [out(dense)], rows * h, ACT_FLOPS[m.activation])
        ln = out(b.norm("mlm_norm", out(act), "mlm_ln", per_layer=False))
        logits = b.linear("mlm_decoder", ln, b.vocab, "wte", rows, bias=False, per_layer=False, layout="nk")
        b.vector("loss", "cross_entropy", [out(logits)], rows, LOSS_FLOPS * b.vocab, op_class="softmax")
        return
    if m.family == "bert":
        cls = Access(x.tensor, b.batch * h * b.ab)
        dense = b.linear("pooler", cls, h, "pooler", b.batch, per_layer=False)
        b.vector("pooler_tanh", "tanh", [out(dense)], b.batch * h, 1)
        return
    ln = out(b.norm("final_norm", x, "ln_f", per_layer=False))
    # the next token comes from the last position; training scores every position against its next token
    rows = rows if b.training else b.batch
    last = ln if b.training else Access(ln.tensor, b.batch * h * b.ab)
    tied = m.tied  # the LM head is the token embedding, a vocab x hidden table (GPT-2's, Llama-3.2 1B's)
    head = b.linear("lm_head", last, b.vocab, "wte" if tied else "lm_head", rows, bias=False, per_layer=False,
                    layout="nk" if tied else "kn")
    if b.training:  # softmax cross-entropy over the vocabulary, one loss per token
        b.vector("loss", "cross_entropy", [out(head)], rows, LOSS_FLOPS * b.vocab, op_class="softmax")
    if b.tp > 1:  # each rank holds a slice of the logits
        b.collective("allgather", b.act("logits", b.batch * b.vocab * b.tp), name="logits_allgather",
                     source=out(head))
