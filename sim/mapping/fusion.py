"""Kernel fusion: a runtime that runs an elementwise op inside a neighbouring kernel (`device.fuse`).

A serving runtime computes GELU in its GEMM's epilogue, the residual add inside the next norm, RoPE
inside attention. The fused pair is one op: one launch, the partner's kernel costs, both ops' FLOPs, and
the activation only the two exchange never goes to memory (written by one, read by the other, read by
no other op of the block, not the block's output — unless the pair spans the block's end and nothing
else reads it: the last layer's output, inside the final norm). Its name and kind join the two ("ffn_up+act"), so
reports show what ran as one kernel. What the pair's other ops still need is still
written once, and the fused op reads it from registers, not memory. The op that ends a block (the
residual add that ends a layer) may pair with the next block's first op (the next layer's norm).

Only inference passes are fused: in training, backward reads what forward fusion would keep on chip
(saved activations), which a runtime then writes anyway; the training graph is left as built.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache

from sim.graph.ops import Block, Op, Tensor
from sim.graph.transformer import OpGraph

#: the passes whose ops are fused
INFERENCE = frozenset(("encode", "prefill", "decode"))
OTHER = {"producer": "consumer", "consumer": "producer"}


def fuse_graph(graph: OpGraph, fuse: Mapping[str, str]) -> OpGraph:
    """`graph` with every inference block's fusable ops merged into their neighbours (`graph` itself
    where nothing fuses)."""
    return _fused(graph, tuple(sorted(fuse.items()))) if fuse else graph


@lru_cache(maxsize=2)  # a sweep's current graph (its fused copies are as large as it)
def _fused(graph: OpGraph, fuse: tuple[tuple[str, str], ...]) -> OpGraph:
    ways = dict(fuse)
    blocks = graph.blocks
    # an op that ends its block and prefers its consumer runs inside the next block's first op where that
    # reads its output (the residual add that ends a layer, inside the next layer's norm: vLLM's
    # fused_add_rms_norm), decided before the ops inside each block pair up. Blocks share ops tuples, so
    # each pair of neighbouring tuples is judged once.
    judged: dict[tuple, Op | None] = {}
    carried = [_carried(a, b, ways, judged) for a, b in zip(blocks, blocks[1:])] + [None]
    done: dict[tuple, tuple[Op, ...]] = {}  # blocks sharing an ops tuple (and neighbours) share its fused one
    out = []
    for i, blk in enumerate(blocks):
        if blk.phase not in INFERENCE or blk.bound:
            out.append(blk)
            continue
        moves, first = carried[i] is not None, carried[i - 1] if i else None
        key = (id(blk.ops), moves, id(first) if first is not None else None)
        if key not in done:
            ops = blk.ops[:-1] if moves else blk.ops
            if first is not None:
                ops = (first, *ops[1:])
            # what the op that moved on reads is still read (from the next block): it stays in memory
            done[key] = fuse_ops(ops, ways, {a.tensor for a in blk.ops[-1].reads} if moves else set())
        ops = done[key]
        out.append(blk if ops is blk.ops else replace(blk, ops=ops))
    return OpGraph(out)


def _carried(a: Block, b: Block, ways: Mapping[str, str], judged: dict) -> Op | None:
    """Block `b`'s first op with block `a`'s last inside it, where `a`'s last op moves on to the next
    block of the same pass (None where it stays). `judged` holds the answer per pair of ops tuples."""
    if (a.phase not in INFERENCE or b.phase != a.phase or a.bound or b.bound or (a.seq, a.micro) != (b.seq, b.micro)
            or len(a.ops) < 2 or not b.ops):  # a block keeps at least one op of its own
        return None
    key = (id(a.ops), id(b.ops), b.layer - a.layer)
    if key not in judged:
        e, n = a.ops[-1], b.ops[0]
        moves = e.engine == "vector" and ways.get(e.kernel) == "consumer" and _partner(n, ways)
        judged[key] = _into_consumer(_shifted(e, b.layer - a.layer), n, _readers(b.ops),
                                     _local(b.ops)) if moves else None
    return judged[key]


def _shifted(op: Op, by: int) -> Op:
    """`op` as a block `by` layers later sees it (its tensors named relative to that block)."""
    return replace(op, reads=tuple(a.shifted(by) for a in op.reads), writes=tuple(a.shifted(by) for a in op.writes))


def _readers(ops: tuple[Op, ...]) -> Counter:
    return Counter(a.tensor for op in ops for a in op.reads)


def _activation(t: Tensor) -> bool:
    """An activation of one forward pass (what a fused pair may hand over in registers; a KV cache
    a pair writes is read back whole, not handed over)."""
    return t.kind == "activation" and t.scope == "pass"


def _local(ops: tuple[Op, ...], kept: set = frozenset()):
    """An activation of this pass that does not leave the block (not its last op's output, nor `kept`):
    a fused pair may keep it on chip."""
    output = {a.tensor for a in ops[-1].writes} | set(kept) if ops else set(kept)
    return lambda t: _activation(t) and t not in output


def _partner(op: Op, ways: Mapping[str, str]) -> bool:
    """A matmul or vector op that is neither fusable itself nor already a pair (named `a+b`)."""
    return (op.engine in ("matrix", "vector") and op.collective is None and op.kernel not in ways
            and "+" not in op.kind)


def fuse_ops(ops: tuple[Op, ...], ways: Mapping[str, str], kept: set = frozenset()) -> tuple[Op, ...]:
    """One block's ops with each op whose kernel `ways` names merged into its producer (the op just
    before it, which made one of its inputs) or its consumer (the op just after, which reads all of its
    output), in the order `ways` prefers; an op neither can take stays as it is. A partner is a matmul or
    a vector op that is not fusable itself nor already a pair. Tensors in `kept` are read outside the
    block and stay in memory."""
    readers, local = _readers(ops), _local(ops, kept)
    out: list[Op] = []
    i = 0
    while i < len(ops):
        op, pair = ops[i], None
        way = ways.get(op.kernel) if op.engine == "vector" else None
        for w in (way, OTHER[way]) if way else ():
            if w == "producer" and out and _partner(out[-1], ways):
                pair = _into_producer(out[-1], op, readers, local)
                if pair is not None:
                    out[-1] = pair
            elif w == "consumer" and i + 1 < len(ops) and _partner(ops[i + 1], ways):
                pair = _into_consumer(op, ops[i + 1], readers, local)
                if pair is not None:
                    out.append(pair)
                    i += 1
            if pair is not None:
                break
        if pair is None:
            out.append(op)
        i += 1
    return tuple(out) if len(out) < len(ops) else ops


def _into_producer(p: Op, e: Op, readers: Counter, local) -> Op | None:
    """`e` as `p`'s epilogue, or None where `e` reads nothing `p` made."""
    made = {a.tensor for a in p.writes if _activation(a.tensor)}  # `e` reads these from registers
    if not any(a.tensor in made for a in e.reads):
        return None
    kept = {a.tensor for a in e.reads if a.tensor in made and readers[a.tensor] == 1 and local(a.tensor)}  # on chip
    return replace(p, name=f"{p.name}+{e.name}", kind=f"{p.kind}+{e.kind}", flops=p.flops + e.flops,
                   epilogue=p.epilogue + (e.flops if p.engine == "matrix" else 0.0),
                   reads=p.reads + tuple(a for a in e.reads if a.tensor not in made),
                   writes=tuple(a for a in p.writes if a.tensor not in kept) + e.writes)


def _into_consumer(e: Op, n: Op, readers: Counter, local) -> Op | None:
    """`e` as `n`'s prologue, or None where `n` reads nothing `e` made. `e`'s first input takes the
    place of the output `n` no longer reads (a matmul's operands keep their positions), the rest last."""
    made = {a.tensor for a in e.writes if _activation(a.tensor)}  # `n` reads these from registers
    # `n` must read what `e` made, and all of it: a slice (the LM head's last position) would take the
    # whole of `e`'s input in its place
    if not any(a.tensor in made for a in n.reads) or any(
            a.tensor in made and a.bytes != e.reads[0].bytes for a in n.reads):
        return None
    kept = {a.tensor for a in n.reads if a.tensor in made and readers[a.tensor] == 1 and local(a.tensor)}
    reads, first = [], e.reads[:1]
    for a in n.reads:
        if a.tensor in made:
            reads += first
            first = ()
        else:
            reads.append(a)
    reads += e.reads[1:]
    return replace(n, name=f"{e.name}+{n.name}", kind=f"{e.kind}+{n.kind}", flops=e.flops + n.flops,
                   epilogue=n.epilogue + (e.flops if n.engine == "matrix" else 0.0), reads=tuple(reads),
                   writes=tuple(a for a in e.writes if a.tensor not in kept) + n.writes)
