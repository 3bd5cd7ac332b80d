"""Operators and tensors of the graph: shapes, dtypes, FLOPs and bytes, independent of hardware."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

#: What a tensor holds, with the label reports give it. Placement homes each kind; footprints and memory
#: timelines break bytes down by it. Open: a new kind is one entry here (and its home in placement).
TENSOR_KINDS: dict[str, str] = {
    "weight": "weights", "kv_cache": "KV cache", "activation": "activations",
    "gradient": "gradients", "optimizer_state": "optimizer state",
}
TensorKind = str
#: The passes a scenario runs, in report order: whether a pass repeats per generated token (its ops are
#: named with the step) and what it is. Open: a new pass is one entry here.
PASSES: dict[str, tuple[bool, str]] = {
    "encode": (False, "an encoder's forward pass over the whole sequence"),
    "prefill": (False, "a decoder's forward pass over the prompt, filling the KV cache"),
    "decode": (True, "one generated token per sequence, reading the KV cache"),
    "forward": (False, "a training step's forward pass"),
    "recompute": (False, "a training step's forward ops run again in backward (activation recomputation)"),
    "backward": (False, "a training step's backward pass (activation and weight gradients)"),
    "optimizer": (False, "a training step's optimizer update"),
}
Phase = str
#: What a tensor's identity depends on: nothing (a table shared by every layer), the layer (its weights,
#: its KV cache), or the layer and the forward pass (an activation).
TensorScope = Literal["global", "layer", "pass"]
OpClass = Literal["gemm", "gemv", "attention", "softmax", "norm", "elementwise", "collective", "copy"]
#: what runs an op: the matrix or vector units, the links (collectives), a copy engine (DMA)
Engine = Literal["matrix", "vector", "link", "copy"]

#: Report groups: the GEMM-vs-GEMV contrast, attention, and everything else.
CLASS_GROUP: dict[str, str] = {
    "gemm": "GEMM", "gemv": "GEMV", "attention": "attention",
    "softmax": "other", "norm": "other", "elementwise": "other", "collective": "collective", "copy": "copy",
}


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named piece of memory. `bytes` is its full size (a KV cache at its final length).

    Ops are templates shared by every layer of a pass, so a tensor names itself relative to the block
    that uses it: `scope` says which of (layer, pass) it belongs to and `dl` which layer, as an offset
    from the block's (-1: the previous layer's output). `key` gives its absolute identity."""

    name: str
    kind: TensorKind
    bytes: float
    elements: int = 0
    scope: TensorScope = "global"
    dl: int = 0

    def key(self, layer: int, seq: int) -> tuple:
        """Identity within a run, for the block at (`layer`, forward pass `seq`)."""
        if self.scope == "global":
            return (self.name, None, None)
        return (self.name, layer + self.dl, seq if self.scope == "pass" else None)

    def shifted(self, by: int) -> Tensor:
        """The same tensor seen from a block `by` layers later."""
        return self if self.scope == "global" else Tensor(self.name, self.kind, self.bytes, self.elements,
                                                          self.scope, self.dl - by)


@dataclass(frozen=True, slots=True)
class Access:
    """Bytes of a tensor that one op reads or writes (a gather touches a few rows of a table)."""

    tensor: Tensor
    bytes: float

    def shifted(self, by: int) -> Access:
        return Access(self.tensor.shifted(by), self.bytes)


#: Collective kinds (`p2p` is a send/receive pair between two devices); byte counts in
#: mapping/collectives.py.
COLLECTIVES = ("allreduce", "allgather", "reducescatter", "alltoall", "p2p")


@dataclass(frozen=True, slots=True)
class Collective:
    """Communication an op stands for: a collective over the tensor-parallel group of its stage or over
    the data-parallel replicas (training's gradients), or a point-to-point send between pipeline stages."""

    kind: str  # one of COLLECTIVES
    #: the full buffer each participant holds (all-reduce, all-to-all), ends with (all-gather) or starts
    #: with (reduce-scatter); the message (p2p)
    bytes: float
    src_stage: int = 0
    dst_stage: int = 0
    #: who takes part: the stage's tensor-parallel ranks, or the data-parallel replicas of its rank
    group: str = "tensor"


@dataclass(frozen=True, slots=True)
class Op:
    """One operator. In a graph's blocks it is a template, shared by every block (of any pass) that
    runs it alike: `name` is local to its block ("qkv"), step and layer are 0 and the block's apply;
    `OpGraph.ops` gives bound copies with full names, step and layer."""

    name: str
    kind: str  # what the op does: "qkv", "scores", "ffn_up", ...
    op_class: OpClass
    engine: Engine
    phase: Phase  # one of PASSES
    step: int  # decode step (0 for prefill / encode)
    layer: int  # -1 before the first layer, `layers` after the last
    dtype: str  # compute dtype
    flops: float
    reads: tuple[Access, ...]
    writes: tuple[Access, ...]
    #: matmul-like ops: (batch, M, N, K) with reads[0] the M x K operand and reads[1] the K x N one
    shape: tuple[int, ...] = field(default=())
    stage: int = 0  # pipeline stage that runs it
    collective: Collective | None = None
    #: what it computes, as a framework would call it ("matmul", "layernorm", "gelu", "add", ...): the
    #: hardware's per-kernel costs key on it
    kernel: str = ""
    #: how a matmul's K x N operand lies in memory: K rows of N ("kn", y = x @ W) or N rows of K ("nk":
    #: an embedding table, vocab x hidden, read as the LM head): the contiguous runs a GEMV streams
    weight_layout: Literal["kn", "nk"] = "kn"
    #: bytes per stored element of a matmul's K x N operand where it is a weight, without its bias or
    #: quantization scales (0: not a weight): with the shape and layout, how far apart its rows lie
    weight_element_bytes: float = 0.0
    #: elements per row of a row-wise reduction (a norm: the hidden size), which one thread block of a
    #: GPU kernel reduces serially; 0 for other ops
    row: int = 0
    #: a matmul's elementwise FLOPs after the product (a bias add: one per output element), part of
    #: `flops`; the hardware says whether its framework fuses them or runs them as a pass of their own
    epilogue: float = 0.0
    #: a matmul's operands among its reads: how many leading reads make up the M x K one, and how many
    #: after them the K x N one (a backward GEMM reads a fused QKV's three gradients as one operand)
    operands: tuple[int, int] = (1, 1)

    @property
    def bytes(self) -> float:
        return sum(a.bytes for a in self.reads) + sum(a.bytes for a in self.writes)

    def operand_of(self, i: int) -> int | None:
        """Which matmul operand read `i` is part of: 0 (M x K), 1 (K x N) or None (read once besides)."""
        a, b = self.operands
        return 0 if i < a else 1 if i < a + b else None

    @property
    def operand_bytes(self) -> tuple[float, float]:
        """Bytes of a matmul's M x K and K x N operands (each the sum of its reads)."""
        a, b = self.operands
        return sum(x.bytes for x in self.reads[:a]), sum(x.bytes for x in self.reads[a:a + b])

    @property
    def element_bytes(self) -> tuple[float, float]:
        """Bytes per element of a matmul's M x K and K x N operands (quantised weights: a fraction)."""
        batch, m, n, k = self.shape
        a, b = self.operand_bytes
        return a / (batch * m * k), b / (batch * n * k)

    @property
    def weight_row(self) -> int:
        """Elements in one stored row of a matmul's K x N operand: N of a K x N weight, K of one stored
        N x K (`weight_layout`)."""
        return self.shape[2 if self.weight_layout == "kn" else 3]

    @property
    def intensity(self) -> float:
        """FLOPs per byte of compulsory traffic (each operand moved once)."""
        return self.flops / self.bytes if self.bytes else float("inf")


@dataclass(frozen=True, slots=True)
class Block:
    """A run of ops that repeats: one layer of one forward pass (the embedding is layer -1, the head
    `layers`). Blocks of the same pass with equal shapes share one `ops` tuple, which is what lets
    the later stages plan and simulate each distinct block once."""

    phase: Phase
    step: int  # decode step (0 for prefill / encode)
    layer: int
    seq: int  # which forward pass of the scenario, from 0
    ops: tuple[Op, ...]
    last_layer: int = 0  # the model's layer count: the head's `layer`
    bound: bool = False  # ops already carry their full names and tensors (hand-made, see `loose`)
    micro: int = 0  # micro-batch: a pass waits for the previous pass of its own micro-batch only
    microbatches: int = 1  # how many the batch is split into (names carry the micro-batch when several)

    @property
    def prefix(self) -> str:
        mb = f"mb{self.micro}." if self.microbatches > 1 else ""
        stepped = PASSES.get(self.phase, (False, ""))[0]
        return f"{self.phase}{self.step if stepped else ''}.{mb}"

    @property
    def label(self) -> str:
        return "emb" if self.layer < 0 else ("head" if self.layer >= self.last_layer else f"L{self.layer}")

    def op_name(self, op: Op) -> str:
        return op.name if self.bound else f"{self.prefix}{self.label}.{op.name}"

    def tensor_name(self, t: Tensor) -> str:
        layer = self.layer + t.dl
        if t.scope == "global":
            return t.name
        if t.scope == "layer":
            return f"L{layer}.{t.name}"
        return f"{self.prefix}{t.name}" if layer < 0 or layer >= self.last_layer else f"{self.prefix}{t.name}.L{layer}"

    def bind(self, op: Op) -> Op:
        """The op with its full name, its block's phase / step / layer and absolute tensor names."""
        if self.bound:
            return op
        def absolute(accesses):
            return tuple(Access(Tensor(self.tensor_name(a.tensor), a.tensor.kind, a.tensor.bytes,
                                       a.tensor.elements), a.bytes) for a in accesses)
        return replace(op, name=self.op_name(op), phase=self.phase, step=self.step, layer=self.layer,
                       reads=absolute(op.reads), writes=absolute(op.writes))


def loose(ops: list[Op] | tuple[Op, ...]) -> Block:
    """Hand-made ops (full names, absolute tensors) as one block, for running outside a graph."""
    first = ops[0] if ops else None
    return Block(first.phase if first else "prefill", first.step if first else 0, first.layer if first else 0, 0,
                 tuple(ops), bound=True)
