"""Stage 3: graph + hardware -> placement of tensors and per-op execution plans."""

from sim.mapping.placement import Footprint, Placement, footprint, place
from sim.mapping.plan import OpPlan, plan, plan_op, roofline_s

__all__ = ["Footprint", "OpPlan", "Placement", "footprint", "place", "plan", "plan_op", "roofline_s"]
