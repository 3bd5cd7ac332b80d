"""Operators and tensors of the graph: shapes, dtypes, FLOPs and bytes, independent of hardware."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TensorKind = Literal["weight", "activation", "kv_cache"]
OpClass = Literal["gemm", "gemv", "attention", "softmax", "norm", "elementwise", "collective"]
Engine = Literal["matrix", "vector", "link"]

#: Report groups: the GEMM-vs-GEMV contrast, attention, and everything else.
CLASS_GROUP: dict[str, str] = {
    "gemm": "GEMM", "gemv": "GEMV", "attention": "attention",
    "softmax": "other", "norm": "other", "elementwise": "other", "collective": "collective",
}


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named piece of memory. `bytes` is its full size (a KV cache at its final length)."""

    name: str
    kind: TensorKind
    bytes: float
    elements: int = 0


@dataclass(frozen=True, slots=True)
class Access:
    """Bytes of a tensor that one op reads or writes (a gather touches a few rows of a table)."""

    tensor: Tensor
    bytes: float


@dataclass(frozen=True, slots=True)
class Collective:
    """Communication an op stands for: an all-reduce / all-gather over the tensor-parallel group of its
    stage, or a point-to-point send between pipeline stages."""

    kind: Literal["allreduce", "allgather", "p2p"]
    bytes: float  # the full buffer each participant holds (all-reduce) or ends with (all-gather)
    src_stage: int = 0
    dst_stage: int = 0


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    kind: str  # what the op does: "qkv", "scores", "ffn_up", ...
    op_class: OpClass
    engine: Engine
    phase: Literal["encode", "prefill", "decode"]
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

    @property
    def bytes(self) -> float:
        return sum(a.bytes for a in self.reads) + sum(a.bytes for a in self.writes)

    @property
    def intensity(self) -> float:
        """FLOPs per byte of compulsory traffic (each operand moved once)."""
        return self.flops / self.bytes if self.bytes else float("inf")
