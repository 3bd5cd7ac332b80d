"""The software runtime: what the framework between the model and the hardware adds per op and per step.

The same A100 runs a decode step in a few milliseconds under a fused serving runtime and several times
that in eager PyTorch: the difference is software, so it is an input of its own (`runtimes/*.yaml`), not
a property of the hardware. A runtime says what it costs on each platform it runs on (`platforms.cuda`,
`.cpu`, ...: eager PyTorch dispatches a CUDA kernel and a CPU op at different costs) — host dispatch per
kernel, whether the host waits for each op, the device's gap between kernels, fixed per-kernel costs, a
captured graph (no host dispatch per kernel), per-step host work, the collective library's fixed cost.
The loader picks the section of the hardware's `device.platform` and applies it onto the hardware
before validation, so the engine sees one machine; `--set runtime.<key>=...` overrides a key of that
section, a workload's `runtime:` names its default and `--runtime FILE` replaces that. `extends: FILE`
starts from another runtime's figures.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from sim.config.hardware import CollectiveLibrary, Kernel, KernelCost, Platform, check_fuse
from sim.config.types import Count, Latency, Size, Spec

#: runtime key -> where it goes in a hardware file
TO_HARDWARE = {
    "dispatch_overhead": "device.dispatch_overhead",
    "dispatch_mode": "device.dispatch_mode",
    "launch_overhead": "device.launch_overhead",
    "step_overhead": "device.step_overhead",
    "matmul_overhead": "device.compute.matmul_overhead",
    "collective_overhead": "interconnect.collective_overhead",
    "collectives": "interconnect.library",
    "memory_reserved": "device.memory_reserved",
    "fuse": "device.fuse",
    "threads": "device.threads",
}

#: keys of the runtime file itself; any other `runtime.<key>` override goes to the chosen platform's section
FILE_KEYS = ("name", "source", "extends", "platforms")


class PlatformCosts(Spec):
    """What the runtime costs on one platform."""

    dispatch_overhead: Latency | None = Field(
        default=None, description="host time to dispatch one kernel (replaces the hardware's)")
    dispatch_mode: Literal["async", "sync"] | None = Field(
        default=None, description="async: the host queues kernels ahead of the device; sync: it waits for each "
        "(a CPU: the dispatching thread runs the op)")
    launch_overhead: Latency | None = Field(
        default=None, description="device time between one kernel's end and the next one's start")
    step_overhead: Latency | None = Field(
        default=None, description="host time per forward pass before its first kernel (sampling, scheduling)")
    matmul_overhead: Latency | None = Field(default=None, description="a matmul kernel's fixed device time")
    collective_overhead: Latency | None = Field(
        default=None, description="the collective library's fixed cost per call (where the hardware has links)")
    collectives: CollectiveLibrary | None = Field(
        default=None, description="the collective library's protocols (NCCL's LL, LL128, Simple) and in-switch "
        "algorithm, each call taking the fastest (where the hardware has links)")
    fuse: dict[Kernel, Literal["producer", "consumer"]] | None = Field(
        default=None, description="per kernel, the neighbouring kernel an inference pass runs its ops inside: "
        "`producer` (the op that made its input: a GEMM's epilogue) or `consumer` (the op that reads its "
        "output: the next norm), the other where that one cannot; the activation only the two exchange "
        "stays on chip")
    kernels: dict[Kernel, KernelCost] = Field(
        default_factory=dict, description="per kernel, the runtime's own costs (merged over the hardware's)")
    graphs: bool = Field(
        default=False, description="kernels replayed from a captured graph (CUDA graphs): no host dispatch "
        "per kernel, whatever the hardware file or the kernels above say")
    memory_reserved: Size | None = Field(
        default=None, description="device memory the software holds outside the graph's tensors (CUDA "
        "context, library workspaces, communication buffers): less room in the device's DRAM")
    threads: Count | None = Field(
        default=None, description="the units it runs ops on (a CPU framework's threads: torch.set_num_threads, "
        "OMP_NUM_THREADS), at most the device's: the device is then that many units, its peaks and its "
        "memory levels' bandwidth scaled down in proportion. Absent: all of them")

    @model_validator(mode="after")
    def _fuses_elementwise_kernels(self) -> PlatformCosts:
        check_fuse(self.fuse)
        return self


class Runtime(Spec):
    name: str = Field(min_length=1)
    source: str = Field(min_length=1, description="where its figures come from")
    extends: str | None = Field(default=None, min_length=1, description="a runtime file (relative to this one) "
                                "whose figures this one starts from on the platforms it names, key by key")
    platforms: dict[Platform, PlatformCosts] = Field(
        min_length=1, description="per platform it runs on (a hardware's `device.platform`), its costs there")
    calibration: dict[str, str] = Field(default_factory=dict, description="how each figure was measured "
                                        "(`calibrate` writes it)")


#: keys a child runtime replaces whole rather than merges into its parent's (a collective library's
#: protocols are one model, and so is what a runtime fuses: a child naming its own drops the parent's)
WHOLE = ("collectives", "fuse")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` onto `base`, mappings key by key (a child runtime's kernel field over its parent's), but
    the `WHOLE` keys replaced as a whole."""
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict) and key not in WHOLE
        out[key] = merge(out[key], value) if nested else value
    return out


def runtime_overrides(section: dict[str, Any], hardware: dict[str, Any]) -> list[tuple[str, Any]]:
    """The hardware overrides one (validated) platform `section` of a runtime file amounts to on
    `hardware`'s data: its figures as written (units and all), per kernel field by field; the collective
    cost only where the hardware has an interconnect; and with `graphs`, no host dispatch for any kernel."""
    out: list[tuple[str, Any]] = []
    for key, target in TO_HARDWARE.items():
        if key in section and (not target.startswith("interconnect.") or hardware.get("interconnect")):
            out.append((target, section[key]))
    for kernel, costs in (section.get("kernels") or {}).items():
        out += [(f"device.kernels.{kernel}.{field}", value) for field, value in costs.items()]
    if section.get("graphs"):
        kernels = set((hardware.get("device") or {}).get("kernels") or {}) | set(section.get("kernels") or {})
        out.append(("device.dispatch_overhead", "0 s"))
        out += [(f"device.kernels.{kernel}.dispatch", "0 s") for kernel in sorted(kernels)]
    return out
