"""A training step's graph: forward, backward (with recomputation) and the optimizer update.

The backward of a block is derived from its forward ops, last to first, the way autograd walks them:

- a matmul-like op `Y = X W` (GEMM) gets `dX = dY Wᵀ` and `dW = Xᵀ dY` (each 2·M·N·K FLOPs: twice the
  forward's together, + M·N for a bias gradient); attention's two matmuls each get the products for both
  operands (`scores`: dQ, dK; `attn_v`: dP, dV); a fused (FlashAttention) attention one op of 2.5x its
  forward FLOPs that recomputes the scores and reads Q, K, V, its output and dO;
- a vector op (norm, activation, softmax, RoPE, tanh) one op of twice its forward FLOPs that reads what
  its gradient needs (its inputs, softmax its output) and dY, and writes the gradients of its inputs and of
  its weights (a norm's gain and bias); a dropout one of 1 FLOP per element that reads its mask and dY;
- a residual add passes its gradient to both inputs; where two gradients meet (the residual stream and a
  branch) they are added (1 FLOP per element);
- the embedding's lookup scatters its gradient into the tables' gradients (1 FLOP per element);
- the loss (softmax cross-entropy over the vocabulary, 5 FLOPs per logit) starts it: 2 FLOPs per logit.

A gradient is a tensor of kind `activation` named `d_<name>` while it flows, and of kind `gradient`
(`g_<weight>`) for a weight, written by the first op that produces it and read and written by every later
one (accumulation: a tied embedding, the micro-batches of gradient accumulation). What backward reads of
the forward pass keeps those activations alive until then: the footprint's peak live set is what training
stores. Recomputation renames what it recomputes (`r_<name>`): with `full`, a layer's ops run again before
its backward from the layer's input (the only activation kept), with `selective` only attention's scores,
softmax and its dropout (the sequence-squared tensors).

The update is one memory-bound op per block over its weights: it reads each weight, its gradient, its
optimizer state and master copy, and writes the weight, the state and the master copy.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from sim.config.types import DTYPE_BYTES
from sim.config.workload import OPTIMIZERS
from sim.graph.ops import Access, Block, Collective, Op, Tensor

if TYPE_CHECKING:
    from sim.graph.transformer import _Builder

#: Backward FLOPs of a vector op per forward FLOP, and of FlashAttention per forward FLOP (conventions)
VECTOR_BACKWARD = 2.0
FUSED_ATTENTION_BACKWARD = 2.5
LOSS_FLOPS = 5  # softmax cross-entropy per logit, forward
LOSS_BACKWARD_FLOPS = 2  # softmax minus one-hot, per logit
#: Under tensor parallelism (Megatron), the GEMMs whose weight is split by columns (output features, heads,
#: vocabulary) read an input every rank holds whole: the gradient each rank computes for that input is a
#: partial sum, all-reduced over the ranks (the backward of Megatron's `f` operator), once per input.
COLUMN_PARALLEL = frozenset({"qkv", "ffn_up", "ffn_gate", "lm_head", "mlm_decoder"})


def ident(t: Tensor) -> tuple:
    return (t.name, t.dl, t.scope)


class StepBuilder:
    """Builds the backward, recompute and optimizer blocks of one training step from its forward blocks."""

    def __init__(self, b: _Builder):
        self.b = b
        tr = b.training_spec
        self.ab = b.ab
        self.gb = DTYPE_BYTES[tr.precision.gradients or b.dtype]
        self.sb = DTYPE_BYTES[tr.precision.optimizer_state]
        self.state = tr.state_elements()
        master = tr.master_weights
        self.master = DTYPE_BYTES[b.scenario_weights] < 4 if master is None else master
        self.update_flops = OPTIMIZERS[tr.optimizer][1]
        self.recompute = tr.recompute
        self.bucket = tr.bucket
        # ZeRO: each of the d replicas keeps 1/d of the optimizer state (stage 1) and of the gradients
        # (stage 2), reduce-scatters the gradients, updates its shard and all-gathers the updated weights
        d = b.data
        self.zero = tr.zero if d > 1 else 0
        self.state_share = 1 / d if self.zero >= 1 else 1.0
        self.grad_share = 1 / d if self.zero >= 2 else 1.0  # stage 3 shards the weights too (the builder's)
        self.globals: dict[Tensor, None] = {}  # global weights' gradients, all-reduced at the end of backward
        self.wrote: set[str] = set()  # global weights whose gradient the step has written (tied tables)
        self._stage = 0  # the pipeline stage of the ops being made
        self._made: dict[tuple, tuple] = {}

    # -- tensors ------------------------------------------------------------------------------------
    def grad_act(self, t: Tensor) -> Tensor:
        return Tensor(f"d_{t.name}", "activation", t.elements * self.ab, t.elements, t.scope, t.dl)

    def grad_weight(self, w: Tensor) -> Tensor:
        """A weight's gradient as the device holds it (its shard under ZeRO-2; the backward GEMMs still
        write the whole of it, which the bucket's reduce-scatter then shrinks)."""
        return Tensor(f"g_{w.name}", "gradient", w.elements * self.gb * self.grad_share, w.elements, w.scope, w.dl)

    def state_of(self, w: Tensor) -> Tensor | None:
        elements = (w.elements * self.state + (w.elements * 4 / self.sb if self.master else 0.0)) * self.state_share
        if not elements:
            return None
        return Tensor(f"s_{w.name}", "optimizer_state", elements * self.sb, round(elements), w.scope, w.dl)

    # -- blocks -------------------------------------------------------------------------------------
    def backward(self, fwd: list[Block], accumulate: bool, reduce: bool = False) -> None:
        """Append the backward blocks of one forward pass (`fwd`: its blocks, in order), each layer's
        recompute block before it; with `reduce` (the last micro-batch of a data-parallel step), all-reduce
        the gradients in buckets as they are done (`_bucketed`)."""
        b = self.b
        pending: list[tuple[Tensor, int]] = []  # gradients done but not yet all-reduced, with their layer
        last = fwd[0] if fwd else None
        stage_of = [_own_stage(blk) for blk in fwd]
        for i in range(len(fwd) - 1, -1, -1):
            blk = fwd[i]
            inner = 0 <= blk.layer < blk.last_layer
            mode = self.recompute if inner else "none"
            key = (id(blk.ops), mode, accumulate, tuple(sorted(self.wrote)))
            made = self._made.get(key)
            if made is None or made[0] is not blk.ops:
                rename = self._renamed(blk.ops, mode)
                again = tuple(self._again(op, rename) for op in blk.ops if ident(op.writes[0].tensor) in rename)
                made = self._made[key] = (blk.ops, again, self._backward_ops(blk.ops, rename, accumulate))
            self._stage = stage_of[i]
            # a pipeline stage all-reduces its own gradients: its last backward block flushes its bucket
            ends_stage = i == 0 or stage_of[i - 1] != stage_of[i]
            grads = self._bucketed(blk, made[2], pending, final=blk is last, flush=ends_stage) if reduce else made[2]
            for phase, ops in (("recompute", made[1]), ("backward", grads)):
                if ops:
                    b.blocks.append(Block(phase, 0, blk.layer, blk.seq, ops, blk.last_layer, micro=blk.micro,
                                          microbatches=blk.microbatches))
            self.wrote |= {a.tensor.name.removeprefix("g_") for op in made[2] for a in op.writes
                           if a.tensor.kind == "gradient" and a.tensor.scope == "global"}

    def _bucketed(self, blk: Block, ops: tuple[Op, ...], pending: list, final: bool,
                  flush: bool = False) -> tuple[Op, ...]:
        """The block's backward ops, followed by an all-reduce over the data-parallel replicas of the
        gradients done so far once they fill a bucket (`training.bucket`), at the end of the stage's
        backward (`flush`), or at the end of backward. A global weight's gradient (a tied embedding's) is
        only done at the end of its stage's backward."""
        done = {}
        for op in ops:
            for a in op.writes:
                if a.tensor.kind == "gradient":
                    done[a.tensor] = None
        pending += [(t, blk.layer) for t in done if t.scope != "global"]
        self.globals.update(dict.fromkeys(t for t in done if t.scope == "global"))
        if final or flush:  # a stage holding a global weight (a tied embedding) reduces its own copy's
            pending += [(t, blk.layer) for t in self.globals]
            self.globals.clear()
        nbytes = sum(t.elements * self.gb for t, _ in pending)  # whole gradients
        if not pending or (nbytes < self.bucket and not final and not flush):
            return ops
        accesses = tuple(Access(t.shifted(blk.layer - layer), t.elements * self.gb) for t, layer in pending)
        pending.clear()
        key = ("bucket", ops, accesses)
        made = self._made.get(key)
        if made is None:
            kind = "reducescatter" if self.zero else "allreduce"  # ZeRO keeps the shard it updates
            op = Op(name=f"grad_{kind}", kind=f"grad_{kind}", op_class="collective", engine="link",
                    phase="backward", step=0, layer=0, dtype=self.b.dtype, flops=0.0, reads=accesses, writes=accesses,
                    collective=Collective(kind, nbytes, group="data"), kernel=kind, stage=self._stage)
            made = self._made[key] = (None, (*ops, self.b._interned_ops.setdefault(op, op)))
        return made[1]

    def optimizer(self, fwd: list[Block], seq: int) -> None:
        """Append one update block per forward block (global weights updated once, where first read)."""
        b, done = self.b, set()
        for blk in fwd:
            weights = {a.tensor: None for op in blk.ops for a in op.reads
                       if a.tensor.kind == "weight" and not (a.tensor.scope == "global" and a.tensor.name in done)}
            done |= {w.name for w in weights if w.scope == "global"}
            if not weights:
                continue
            self._stage = _own_stage(blk)
            key = ("update", tuple(weights), self._stage)
            made = self._made.get(key)
            if made is None:
                made = self._made[key] = (None, self._update(tuple(weights)))
            b.blocks.append(Block("optimizer", 0, blk.layer, seq, made[1], blk.last_layer))

    # -- ops ----------------------------------------------------------------------------------------
    def _op(self, kind: str, op_class: str, flops: float, reads, writes, shape=(), kernel: str = "",
            layout: str = "kn", row: int = 0, epilogue: float = 0.0, weight_element_bytes: float = 0.0,
            operands: tuple[int, int] = (1, 1)) -> Op:
        matrix = op_class in ("gemm", "gemv", "attention")
        op = Op(name=kind, kind=kind, op_class=op_class, engine="matrix" if matrix else "vector", phase="backward",
                step=0, layer=0, dtype=self.b.dtype, flops=float(flops), reads=tuple(reads), writes=tuple(writes),
                shape=tuple(shape), stage=self._stage, kernel=kernel or ("matmul" if matrix else kind),
                weight_layout=layout, row=row, epilogue=float(epilogue), weight_element_bytes=weight_element_bytes,
                operands=operands)
        return self.b._interned_ops.setdefault(op, op)

    def _renamed(self, ops: tuple[Op, ...], mode: str) -> dict[tuple, Tensor]:
        """The activations a block recomputes (their forward copies are not kept), renamed."""
        if mode == "none":
            return {}
        if mode == "selective":
            chosen = [op for op in ops if op.kind in ("scores", "softmax", "probs_dropout")]
        else:
            chosen = [op for op in ops if op.collective is None]
        return {ident(a.tensor): Tensor(f"r_{a.tensor.name}", a.tensor.kind, a.tensor.bytes, a.tensor.elements,
                                        a.tensor.scope, a.tensor.dl)
                for op in chosen for a in op.writes if a.tensor.kind == "activation"}

    def _again(self, op: Op, rename: dict) -> Op:
        """A forward op run again in backward, on what was kept or already recomputed."""
        def swap(accesses):
            return tuple(Access(rename.get(ident(a.tensor), a.tensor), a.bytes) for a in accesses)
        # everything else as the forward op has it (a tensor-parallel all-reduce stays one)
        again = dataclasses.replace(op, phase="recompute", step=0, layer=0, reads=swap(op.reads),
                                    writes=swap(op.writes))
        return self.b._interned_ops.setdefault(again, again)

    def _backward_ops(self, ops: tuple[Op, ...], rename: dict, accumulate: bool) -> tuple[Op, ...]:
        grads: dict[tuple, Tensor] = {}  # forward tensor -> its gradient flowing backward in this block
        wrote: set[str] = set(self.wrote)
        out: list[Op] = []
        # the block's outputs (what no later op of it reads) arrive with their gradients from the blocks
        # after it, unless the block ends the graph with its loss
        if not any(op.kind == "loss" for op in ops):
            read_later: set[tuple] = set()
            for op in reversed(ops):
                for a in op.writes[:1] if op.kernel == "dropout" else op.writes:  # (a mask gets no gradient)
                    if a.tensor.kind == "activation" and ident(a.tensor) not in read_later:
                        grads.setdefault(ident(a.tensor), self.grad_act(a.tensor))
                read_later |= {ident(a.tensor) for a in op.reads}

        def saved(a: Access) -> Access:
            return Access(rename.get(ident(a.tensor), a.tensor), a.bytes)

        def give(t: Tensor, g: Tensor) -> None:
            """`g` (flowing) is (a part of) the gradient of `t`: where `t` already has one, the two are added
            into `t`'s own gradient tensor (the one the block that produced `t` reads)."""
            have = grads.get(ident(t))
            if have is None:
                grads[ident(t)] = g
                return
            total = self.grad_act(t)
            acc = self._op(f"{t.name}_grad_add", "elementwise", t.elements,
                           [Access(have, have.bytes), Access(g, g.bytes)], [Access(total, total.bytes)], kernel="add")
            out.append(acc)
            grads[ident(t)] = total

        def part(t: Tensor, kind: str) -> Tensor:
            """A tensor for the gradient of `t` that op `kind` produces: `t`'s own where it is the first,
            a part of its own to be added in where `t` already has one (a tensor read by two ops)."""
            d = self.grad_act(t)
            if ident(t) not in grads:
                return d
            return Tensor(f"{d.name}@{kind}", d.kind, d.bytes, d.elements, d.scope, d.dl)

        def weight_grad(w: Tensor, nbytes: float) -> tuple[list[Access], list[Access]]:
            """The reads and writes of a weight's gradient: accumulated where already written."""
            g = self.grad_weight(w)
            part = nbytes / self.b.full(w) * w.elements * self.gb if w.elements else 0.0  # the whole gradient
            again = accumulate or (w.scope == "global" and w.name in wrote)
            wrote.add(w.name)
            return ([Access(g, part)] if again else []), [Access(g, part)]

        # tensor parallel: each input of column-parallel GEMMs is all-reduced once its last one has given
        # its part (Llama's gate and up share the norm's output)
        tp = self.b.tp
        col_inputs: dict[tuple, int] = {}
        if tp > 1:
            for op in ops:
                if op.kind in COLUMN_PARALLEL and op.op_class in ("gemm", "gemv"):
                    k = ident(op.reads[0].tensor)
                    col_inputs[k] = col_inputs.get(k, 0) + 1
        col_parts: dict[tuple, list[Tensor]] = {}

        def reduce_partial(x: Tensor, dx: Tensor) -> Tensor | None:
            """A column-parallel GEMM's partial input gradient: None until the input's last such part, then
            their sum all-reduced over the tensor-parallel ranks."""
            parts = col_parts.setdefault(ident(x), [])
            parts.append(dx)
            if len(parts) < col_inputs[ident(x)]:
                return None
            total = parts[0]
            if len(parts) > 1:
                total = Tensor(f"d_{x.name}@tp", dx.kind, dx.bytes, dx.elements, dx.scope, dx.dl)
                out.append(self._op(f"{x.name}_tp_add", "elementwise", x.elements * (len(parts) - 1),
                                    [Access(t, t.bytes) for t in parts], [Access(total, total.bytes)], kernel="add"))
            buf = Access(total, total.bytes)
            reduce = Op(name=f"{x.name}_grad_allreduce", kind=f"{x.name}_grad_allreduce", op_class="collective",
                        engine="link", phase="backward", step=0, layer=0, dtype=self.b.dtype, flops=0.0,
                        reads=(buf,), writes=(buf,), collective=Collective("allreduce", total.bytes),
                        kernel="allreduce", stage=self._stage)
            out.append(self.b._interned_ops.setdefault(reduce, reduce))
            return total

        for op in reversed(ops):
            self._stage = op.stage
            if op.collective is not None:  # its backward: the gradient passes to its input (all-reduce: the
                # sum's gradient is every rank's; all-gather: each rank's slice of the whole's; a pipeline
                # send: the gradient goes back from the stage it was sent to)
                outs = [a.tensor for a in op.writes if a.tensor.kind == "activation"]
                dys = [grads.pop(ident(t)) for t in outs if ident(t) in grads]
                if dys and op.collective.kind == "p2p":
                    c = op.collective
                    self._stage = c.dst_stage
                    buf = Access(dys[0], dys[0].bytes)
                    back = Op(name="send_grad", kind="send_grad", op_class="collective", engine="link",
                              phase="backward", step=0, layer=0, dtype=self.b.dtype, flops=0.0, reads=(buf,),
                              writes=(buf,), stage=c.dst_stage, kernel="p2p",
                              collective=Collective("p2p", dys[0].bytes, c.dst_stage, c.src_stage))
                    out.append(self.b._interned_ops.setdefault(back, back))
                if dys:
                    for a in op.reads:
                        if a.tensor.kind == "activation":
                            give(a.tensor, dys[0])
                continue
            outs = [a.tensor for a in op.writes if a.tensor.kind == "activation"]
            if op.kind == "loss":  # the gradient starts here
                (logits,) = [a for a in op.reads]
                d = self.grad_act(logits.tensor)
                out.append(self._op("loss_bwd", "softmax", LOSS_BACKWARD_FLOPS * logits.tensor.elements,
                                    [saved(logits)], [Access(d, d.bytes)], kernel="cross_entropy"))
                give(logits.tensor, d)
                continue
            dys = [grads.pop(ident(t)) for t in outs if ident(t) in grads]
            if not dys:
                continue  # nothing downstream needs it
            dy_reads = [Access(g, g.bytes) for g in dys]
            acts = [a for a in op.reads if a.tensor.kind == "activation"]
            weights = [a for a in op.reads if a.tensor.kind == "weight"]
            if op.kernel == "add" and len(acts) == 2 and not weights:  # residual: both inputs get dY
                for a in acts:
                    give(a.tensor, dys[0])
                continue
            if op.op_class in ("gemm", "gemv") and len(op.shape) == 4 and len(op.reads) >= 2:
                batch, m, n, k = op.shape
                x, w = op.reads[0], op.reads[1]
                dx = part(x.tensor, op.kind)
                out.append(self._op(f"{op.kind}_dx", "gemm", 2 * batch * m * n * k, [*dy_reads, Access(w.tensor,
                                    w.bytes)], [Access(dx, dx.bytes)], (batch, m, k, n),
                                    layout="nk" if op.weight_layout == "kn" else "kn",
                                    weight_element_bytes=op.weight_element_bytes, operands=(len(dy_reads), 1)))
                extra, writes = weight_grad(w.tensor, w.bytes)
                out.append(self._op(f"{op.kind}_dw", "gemm", 2 * batch * m * n * k + op.epilogue,  # + the bias's
                                    [saved(x), *dy_reads, *extra], writes, (batch, k, n, m), epilogue=op.epilogue,
                                    operands=(1, len(dy_reads))))
                if ident(x.tensor) in col_inputs:
                    dx = reduce_partial(x.tensor, dx)
                    if dx is None:
                        continue
                give(x.tensor, dx)
                continue
            if op.op_class == "attention" and op.kind == "attention":  # fused: one op recomputing the scores
                ins = [saved(a) for a in acts]
                d_ins = [part(a.tensor, op.kind) for a in acts]
                out.append(self._op("attention_bwd", "attention", FUSED_ATTENTION_BACKWARD * op.flops,
                                    [*ins, saved(Access(outs[0], outs[0].bytes)), *dy_reads],
                                    [Access(d, d.bytes) for d in d_ins], op.shape, kernel="attention"))
                for a, d in zip(acts, d_ins):
                    give(a.tensor, d)
                continue
            if op.op_class == "attention":  # Y = A B: dA = dY Bᵀ, dB = Aᵀ dY
                for mine, other in ((acts[0], acts[1]), (acts[1], acts[0])):
                    d = part(mine.tensor, op.kind)
                    out.append(self._op(f"{op.kind}_d{mine.tensor.name}", "attention", op.flops,
                                        [*dy_reads, saved(other)], [Access(d, d.bytes)], op.shape))
                    give(mine.tensor, d)
                continue
            if op.kernel == "dropout":  # dX = dY x mask / (1 - p): reads the mask it kept, 1 FLOP per element
                (x,) = acts
                d = part(x.tensor, op.kind)
                out.append(self._op(f"{op.kind}_bwd", "elementwise", op.flops / 2, [saved(op.writes[1]), *dy_reads],
                                    [Access(d, d.bytes)], kernel="dropout"))
                give(x.tensor, d)
                continue
            # a vector op: its gradient from what it saved (softmax: its output) and dY
            needs = [Access(outs[0], op.writes[0].bytes)] if op.kind == "softmax" else acts
            d_ins = [part(a.tensor, op.kind) for a in acts]
            reads, writes = [saved(a) for a in needs] + dy_reads, [Access(d, d.bytes) for d in d_ins]
            for w in weights:
                if op.kernel == "gather":  # the lookup's rows of each table
                    extra, gw = weight_grad(w.tensor, w.bytes)
                    reads, writes = reads + extra, writes + gw
                    continue
                extra, gw = weight_grad(w.tensor, w.bytes)
                reads, writes = reads + [Access(w.tensor, w.bytes)] + extra, writes + gw
            flops = VECTOR_BACKWARD * op.flops if op.kernel != "gather" else sum(a.bytes for a in weights) / self.b.wb
            out.append(self._op(f"{op.kind}_bwd", op.op_class, flops, reads, writes, kernel=op.kernel, row=op.row))
            for a, d in zip(acts, d_ins):
                give(a.tensor, d)
        return tuple(out)

    def _update(self, weights: tuple[Tensor, ...]) -> tuple[Op, ...]:
        """The block's update over its weights (under ZeRO its shard of them: 1/d of the parameters, their
        reduced gradients and state), then, under ZeRO, the all-gather of the updated weights."""
        share = self.state_share
        reads, writes, params = [], [], 0.0
        for w in weights:
            g, s = self.grad_weight(w), self.state_of(w)
            reads += [Access(w, self.b.full(w) * share), Access(g, w.elements * self.gb * share)]
            reads += [Access(s, s.bytes)] if s else []
            writes += [Access(w, self.b.full(w) * share)] + ([Access(s, s.bytes)] if s else [])
            params += w.elements * share
        op = Op(name="update", kind="update", op_class="elementwise", engine="vector", phase="optimizer", step=0,
                layer=0, dtype="fp32", flops=self.update_flops * params, reads=tuple(reads), writes=tuple(writes),
                kernel="optimizer", stage=self._stage)
        ops = [self.b._interned_ops.setdefault(op, op)]
        if self.zero in (1, 2):  # ZeRO-3 keeps its weights sharded: the next forward gathers them
            full = tuple(Access(w, self.b.full(w)) for w in weights)
            gather = Op(name="param_allgather", kind="param_allgather", op_class="collective", engine="link",
                        phase="optimizer", step=0, layer=0, dtype="", flops=0.0, reads=full, writes=full,
                        collective=Collective("allgather", sum(self.b.full(w) for w in weights), group="data"),
                        kernel="allgather", stage=self._stage)
            ops.append(self.b._interned_ops.setdefault(gather, gather))
        return tuple(ops)

    def gather_weights(self, blocks: list[Block]) -> list[Block]:
        """ZeRO-3: every forward, recompute and backward block that reads weights gets them all-gathered
        over the replicas first, by an op at the start of the block before it in the same pass (issued on
        the comm stream, so the gather overlaps that block: FSDP's prefetch), or at its own start when it
        opens its pass. Gathered weights are dropped after use (FSDP's reshard after forward), so
        backward gathers them again."""
        out: list[Block] = []
        ahead: list[list[Op]] = [[] for _ in blocks]
        for j, blk in enumerate(blocks):
            if blk.phase == "optimizer":
                continue
            weights = {a.tensor: None for op in blk.ops if op.collective is None for a in op.reads
                       if a.tensor.kind == "weight"}
            if not weights:
                continue
            self._stage = _own_stage(blk)
            prev = blocks[j - 1] if j else None
            if blk.phase == "backward" and prev is not None and prev.phase == "recompute" and \
                    (prev.layer, prev.seq) == (blk.layer, blk.seq):
                continue  # the weights gathered for its recompute serve its backward too (one FSDP unit)
            host = j - 1 if prev is not None and (prev.seq, prev.micro, prev.phase != "optimizer") == (
                blk.seq, blk.micro, True) else j
            shift = blk.layer - blocks[host].layer
            full = tuple(Access(w.shifted(-shift), self.b.full(w)) for w in weights)
            op = Op(name=f"param_allgather_{blk.label}", kind="param_allgather", op_class="collective",
                    engine="link", phase=blk.phase, step=0, layer=0, dtype="", flops=0.0, reads=full, writes=full,
                    collective=Collective("allgather", sum(a.bytes for a in full), group="data"), kernel="allgather",
                    stage=self._stage)
            ahead[host].append(self.b._interned_ops.setdefault(op, op))
        joined: dict[tuple, tuple] = {}
        for blk, gathers in zip(blocks, ahead):
            if not gathers:
                out.append(blk)
                continue
            key = (blk.ops, *gathers)
            ops = joined.setdefault(key, (*gathers, *blk.ops))
            out.append(dataclasses.replace(blk, ops=ops))
        return out


def _own_stage(blk: Block) -> int:
    """The pipeline stage a block's compute runs on (a block may open with a send from the stage before)."""
    return max((op.stage for op in blk.ops if op.collective is None), default=0)
