"""Stage 1: YAML -> validated, frozen config objects (SI units)."""

from sim.config.hardware import ComputeUnit, Device, Hardware, Link, MemoryLevel
from sim.config.loader import load_hardware, load_run, load_workload, parse_overrides, split_overrides
from sim.config.types import DTYPE_BYTES
from sim.config.workload import Model, Precision, Scenario, Workload

__all__ = [
    "DTYPE_BYTES", "ComputeUnit", "Device", "Hardware", "Link", "MemoryLevel", "Model", "Precision",
    "Scenario", "Workload", "load_hardware", "load_run", "load_workload", "parse_overrides", "split_overrides",
]
