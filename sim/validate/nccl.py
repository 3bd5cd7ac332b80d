"""The collective library's in-switch (NVLS) figures fitted to a published nccl-tests curve
(sim/data/nccl-fit.yaml; `python bench/nccl_fit.py` prints the fit; a test holds the shipped runtime to it).

The model fitted is memwall's own for an uncontended in-switch all-reduce of S bytes over p devices:
t = overhead + launch + step + S / (share x B) + (S / chunk(S)) x chunk_overhead, B the link's effective
bandwidth and chunk(S) the library's chunk schedule (the runtime's `chunks`, NCCL's rule). It is linear in
(step, 1 / share, chunk_overhead), so a least-squares fit of the relative error is closed-form. The
per-call overhead comes first, from the curve's small messages (the ring's, as validate calibrates each
series' `collective_overhead`)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from sim.config import load_hardware
from sim.config.hardware import Hardware
from sim.config.units import Dim, parse_quantity
from sim.validate.cases import ROOT
from sim.validate.published import DATA, predict_allreduce

CURVES = DATA / "nccl-fit.yaml"


@dataclass(frozen=True)
class InSwitchFit:
    curve: str
    overhead: float  # s per call, from the curve's ring-protocol small messages (at least 0)
    overhead_residual: float  # their median of measured minus predicted without it (negative: too slow)
    step: float  # s per call in the switch beyond the overhead and launch
    bandwidth: float  # share of the link's effective bandwidth
    chunk_overhead: float  # s per chunk
    rows: int  # in-switch rows fitted


def curve_times(curve: dict) -> list[tuple[float, float]]:
    """(message bytes, seconds) of a curve: busbw = S / t x 2 (p - 1) / p."""
    p = curve["devices"]
    return [(float(s), float(s) * 2 * (p - 1) / p / (float(bw) * 1e9)) for s, bw in curve["busbw"].items()]


def curve_hardware(curve: dict, overrides: list[tuple[str, object]] = ()) -> Hardware:
    return load_hardware(ROOT / "hardware_models" / f"{curve['hardware']}.yaml", list(overrides),
                         ROOT / "runtimes" / f"{curve['runtime']}.yaml")


def fit_in_switch(name: str, path: Path = CURVES) -> InSwitchFit:
    curves = yaml.safe_load(path.read_text())["curves"]
    if name not in curves:
        raise ValueError(f"{path.name}: no curve {name!r} (known: {', '.join(curves)})")
    curve = curves[name]
    points = curve_times(curve)
    start = parse_quantity(curve["in_switch_from"], Dim.BYTES)
    p = curve["devices"]
    # the per-call overhead: the ring's small messages, measured minus predicted without it
    bare = curve_hardware(curve, [("interconnect.collective_overhead", "0 s")])
    small = [(s, t) for s, t in points if s < start][:3]
    residual = statistics.median(t - predict_allreduce(bare, s, p) for s, t in small)
    overhead = max(0.0, residual)
    proto = bare.interconnect.library.in_switch
    link = bare.interconnect.link.effective_bandwidth
    rows = [(s, t) for s, t in points if s >= start]
    # t - overhead - launch = step + S x (1 / share B) + (S / chunk) x chunk_overhead, each row over t
    if not proto.chunks:
        raise ValueError(f"{curve['runtime']}'s in-switch protocol gives no chunks to fit a cost per chunk to")
    a = np.array([[1.0 / t, s / link / t, s / proto.chunk(s) / t] for s, t in rows])
    b = np.array([(t - overhead - proto.launch) / t for s, t in rows])
    (step, inv_share, chunk_overhead), *_ = np.linalg.lstsq(a, b, rcond=None)
    return InSwitchFit(name, overhead, residual, float(step), float(1.0 / inv_share), float(chunk_overhead),
                       len(rows))


def fitted_errors(fit: InSwitchFit, path: Path = CURVES) -> list[tuple[float, float, float]]:
    """(bytes, measured s, predicted s) over the curve, simulated with the fitted figures."""
    curve = yaml.safe_load(path.read_text())["curves"][fit.curve]
    hw = curve_hardware(curve, [("interconnect.collective_overhead", f"{fit.overhead * 1e6:.6f} us"),
                                ("interconnect.library.in_switch.step", f"{fit.step * 1e6:.6f} us"),
                                ("interconnect.library.in_switch.bandwidth", fit.bandwidth),
                                ("interconnect.library.in_switch.chunk_overhead",
                                 f"{fit.chunk_overhead * 1e9:.6f} ns")])
    return [(s, t, predict_allreduce(hw, s, curve["devices"])) for s, t in curve_times(curve)]
