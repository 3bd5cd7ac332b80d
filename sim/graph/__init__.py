"""Stage 2: workload -> operator graph (hardware-independent shapes, FLOPs, bytes)."""

from sim.graph.ops import CLASS_GROUP, Access, Op, Tensor
from sim.graph.transformer import OpGraph, build_graph

__all__ = ["CLASS_GROUP", "Access", "Op", "OpGraph", "Tensor", "build_graph"]
