"""Quantities with units in, SI floats out.

YAML values such as "3.35 TB/s", "40 MiB", "312 TFLOP/s", "700 ns" or "1.41 GHz" are parsed here and
nowhere else. We do not use pint: it treats bytes as dimensionless, so it cannot tell a bandwidth
("TB/s") from a frequency ("GHz") and would accept one for the other. Here every key declares its
dimension and a value in the wrong dimension is rejected. Plain numbers are taken as SI.
"""

from __future__ import annotations

import math
import re
from enum import Enum


class Dim(str, Enum):
    BYTES = "bytes"
    BANDWIDTH = "bytes/s"
    TIME = "seconds"
    FREQUENCY = "Hz"
    COMPUTE = "FLOP/s"


_DECIMAL = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "ps": 1e-12}

# unit symbol -> (dimension, factor to SI)
_UNITS: dict[str, tuple[Dim, float]] = {}
for _p, _f in {**_DECIMAL, **_BINARY}.items():
    _UNITS[f"{_p}B"] = (Dim.BYTES, _f)
    _UNITS[f"{_p}B/s"] = (Dim.BANDWIDTH, _f)
for _p, _f in _DECIMAL.items():
    _UNITS[f"{_p}Hz"] = (Dim.FREQUENCY, _f)
    for _name in ("FLOP/s", "FLOPS", "OP/s", "OPS"):
        _UNITS[f"{_p}{_name}"] = (Dim.COMPUTE, _f)
for _u, _f in _TIME.items():
    _UNITS[_u] = (Dim.TIME, _f)
_UNITS["bytes"] = (Dim.BYTES, 1.0)

_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-zµ/]*)\s*$")


def parse_quantity(value: object, dim: Dim) -> float:
    """Return `value` in SI units of `dim`; raise ValueError with a user-facing reason (also for a value
    no machine has: infinite, or beyond `LIMIT`, which would overflow the arithmetic downstream)."""
    out = _parse(value, dim)
    if not math.isfinite(out) or abs(out) > LIMIT[dim]:
        raise ValueError(f"{short(value)} is beyond any machine (at most {LIMIT_TEXT[dim]})")
    if out and abs(out) < FLOOR[dim]:
        raise ValueError(f"{short(value)} is below any machine (at least {FLOOR_TEXT[dim]}, or 0 where 0 is allowed)")
    return out


#: the largest value of each dimension memwall takes (SI): far beyond any machine, far below overflow
LIMIT = {Dim.BYTES: 2.0**80, Dim.BANDWIDTH: 1e18, Dim.TIME: 1e7, Dim.FREQUENCY: 1e12, Dim.COMPUTE: 1e21}
LIMIT_TEXT = {Dim.BYTES: "2^80 bytes", Dim.BANDWIDTH: "1 EB/s", Dim.TIME: "1e7 s", Dim.FREQUENCY: "1 THz",
              Dim.COMPUTE: "1e21 FLOP/s"}
#: ... and the smallest non-zero one: a size below a bit, a rate below one per second, a time below a
#: femtosecond is a typo, and divides into overflow downstream
FLOOR = {Dim.BYTES: 0.1, Dim.BANDWIDTH: 1.0, Dim.TIME: 1e-15, Dim.FREQUENCY: 1.0, Dim.COMPUTE: 1.0}
FLOOR_TEXT = {Dim.BYTES: "0.1 B", Dim.BANDWIDTH: "1 B/s", Dim.TIME: "1 fs", Dim.FREQUENCY: "1 Hz",
              Dim.COMPUTE: "1 FLOP/s"}


def short(value: object, limit: int = 40) -> str:
    """`value` for a message, cut to `limit` characters (a number too long to print says so)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit
        return "a number of thousands of digits"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse(value: object, dim: Dim) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a {dim.value} quantity, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a {dim.value} quantity such as {example(dim)!r}, got {value!r}")
    match = _QUANTITY.match(value)
    if not match:
        raise ValueError(f"cannot read {value!r} as a quantity; write e.g. {example(dim)!r}")
    number, unit = float(match.group(1)), match.group(2)
    if not unit:
        return number
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r} in {value!r}; write e.g. {example(dim)!r}")
    unit_dim, factor = _UNITS[unit]
    if unit_dim is not dim:
        raise ValueError(f"{value!r} is a {unit_dim.value} value, expected {dim.value} (e.g. {example(dim)!r})")
    return number * factor


def example(dim: Dim) -> str:
    return {
        Dim.BYTES: "40 MiB",
        Dim.BANDWIDTH: "2.039 TB/s",
        Dim.TIME: "700 ns",
        Dim.FREQUENCY: "1.41 GHz",
        Dim.COMPUTE: "312 TFLOP/s",
    }[dim]


def fmt_bytes(n: float) -> str:
    """Binary prefixes for capacities and footprints."""
    for prefix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}B"
    return f"{n:.0f} B"


def fmt_si(x: float, unit: str, digits: int = 3) -> str:
    """Decimal SI prefixes for rates and counts ("1.23 TFLOP/s", "2.04 TB/s")."""
    for prefix, factor in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= factor:
            return f"{x / factor:.{digits}g} {prefix}{unit}"
    return f"{x:.{digits}g} {unit}"


def fmt_time(t: float) -> str:
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(t) >= factor:
            return f"{t / factor:.3f} {unit}"
    return f"{t / 1e-9:.1f} ns"
