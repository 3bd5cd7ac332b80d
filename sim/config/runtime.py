"""The software runtime: what the framework between the model and the hardware adds per op and per step.

The same A100 runs a decode step in a few milliseconds under a fused serving runtime and several times
that in eager PyTorch: the difference is software, so it is an input of its own (`runtimes/*.yaml`), not
a property of the hardware. A runtime says what it knows — host dispatch per kernel, whether the host
waits for each op, the device's gap between kernels, fixed per-kernel costs, a captured graph (no host
dispatch per kernel), per-step host work, the collective library's fixed cost — and leaves the rest to
the hardware file's figures. It is applied onto the hardware before validation, so the engine sees one
machine; `--set runtime.<key>=...` overrides a key of it, a workload's `runtime:` names its default and
`--runtime FILE` replaces that.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sim.config.hardware import Kernel, KernelCost
from sim.config.types import Latency, Spec

#: runtime key -> where it goes in a hardware file
TO_HARDWARE = {
    "dispatch_overhead": "device.dispatch_overhead",
    "dispatch_mode": "device.dispatch_mode",
    "launch_overhead": "device.launch_overhead",
    "step_overhead": "device.step_overhead",
    "matmul_overhead": "device.compute.matmul_overhead",
    "collective_overhead": "interconnect.collective_overhead",
}


class Runtime(Spec):
    name: str = Field(min_length=1)
    source: str = Field(min_length=1, description="where its figures come from")
    dispatch_overhead: Latency | None = Field(
        default=None, description="host time to dispatch one kernel (replaces the hardware's)")
    dispatch_mode: Literal["async", "sync"] | None = Field(
        default=None, description="async: the host queues kernels ahead of the device; sync: it waits for each")
    launch_overhead: Latency | None = Field(
        default=None, description="device time between one kernel's end and the next one's start")
    step_overhead: Latency | None = Field(
        default=None, description="host time per forward pass before its first kernel (sampling, scheduling)")
    matmul_overhead: Latency | None = Field(default=None, description="a matmul kernel's fixed device time")
    collective_overhead: Latency | None = Field(
        default=None, description="the collective library's fixed cost per call (where the hardware has links)")
    kernels: dict[Kernel, KernelCost] = Field(
        default_factory=dict, description="per kernel, the runtime's own costs (merged over the hardware's)")
    graphs: bool = Field(
        default=False, description="kernels replayed from a captured graph (CUDA graphs): no host dispatch "
        "per kernel, whatever the hardware file or the kernels above say")


def runtime_overrides(raw: dict[str, Any], hardware: dict[str, Any]) -> list[tuple[str, Any]]:
    """The hardware overrides a (validated) runtime file's `raw` data amounts to on `hardware`'s data:
    its figures as written (units and all), per kernel field by field; the collective cost only where
    the hardware has an interconnect; and with `graphs`, no host dispatch for any kernel."""
    out: list[tuple[str, Any]] = []
    for key, target in TO_HARDWARE.items():
        if key in raw and (not target.startswith("interconnect.") or hardware.get("interconnect")):
            out.append((target, raw[key]))
    for kernel, costs in (raw.get("kernels") or {}).items():
        out += [(f"device.kernels.{kernel}.{field}", value) for field, value in costs.items()]
    if raw.get("graphs"):
        kernels = set((hardware.get("device") or {}).get("kernels") or {}) | set(raw.get("kernels") or {})
        out.append(("device.dispatch_overhead", "0 s"))
        out += [(f"device.kernels.{kernel}.dispatch", "0 s") for kernel in sorted(kernels)]
    return out
