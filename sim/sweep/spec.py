"""Sweep files: a base workload (or several) and hardware, and the axes to vary.

```yaml
name: memory-wall
workloads: [../workloads/gpt2.yaml, ../workloads/bert-base.yaml]   # or `workload: one.yaml`
hardware: ../hardware_models/a100-sxm4-80gb.yaml                   # optional: each workload's own
runtime: ../runtimes/cuda-graphs.yaml                              # optional: each workload's own
set: {scenario.new_tokens: 8}                                      # applied to every point
axes:                                                              # the grid (cartesian product)
  device.memory.hbm.bandwidth: {log: ["0.5 TB/s", "8 TB/s"], points: 5}
  device.compute.peak.fp16: ["100 TFLOP/s", "312 TFLOP/s", "1 PFLOP/s"]
  scenario.batch: {linear: [1, 64], points: 4}
  year: [2016, 2018, 2020]            # derived: scales the hardware by the memory-wall trend rates
  hardware_file: [../hardware_models/a100-sxm4-80gb.yaml, ../hardware_models/h100-sxm.yaml]
  runtime_file: [../runtimes/eager-pytorch.yaml, ../runtimes/serving.yaml]   # the software, file by file
base_year: 2020                       # the year the hardware file describes
samples: 100                          # optional: draw this many random points instead of the grid
seed: 0
```
Axis values: a list; `{log: [lo, hi], points: n}` / `{linear: [lo, hi], points: n}` (ends may carry a
unit, kept on every value); with `samples`, `{uniform: [lo, hi]}` / `{loguniform: [lo, hi]}` too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.config.loader import read_yaml
from sim.config.units import short
from sim.errors import ConfigError

#: Memory-wall trend rates per two years (Gholami et al., "AI and Memory Wall", IEEE Micro 2024).
TREND_PER_2Y = {"compute": 3.0, "dram": 1.6, "interconnect": 1.4}
_NUM_UNIT = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")
SWEEP_KEYS = {"name", "workload", "workloads", "hardware", "runtime", "set", "axes", "samples", "seed", "base_year"}
#: axes that name files rather than override keys (their values: paths relative to the sweep file)
FILE_AXES = ("hardware_file", "runtime_file")


@dataclass(frozen=True)
class Point:
    id: str
    workload: str
    hardware: str | None
    values: dict[str, Any]  # axis -> value as written
    overrides: tuple[tuple[str, Any], ...]  # dotted key -> value, incl. the sweep's `set`
    runtime: str | None = None  # a runtime file in place of the workload's (`runtime`, `runtime_file`)


@dataclass(frozen=True)
class Sweep:
    name: str
    file: Path
    axes: list[str]
    points: list[Point]
    base_year: float | None


def _split(value: Any, file: str, key: str) -> tuple[float, str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), ""
    m = _NUM_UNIT.match(str(value))
    if not m:
        raise ConfigError(f"cannot read {value!r} as a number with an optional unit", file, key)
    return float(m.group(1)), m.group(2)


def _fmt(x: float, unit: str, integer: bool) -> Any:
    if integer and not unit:
        return int(round(x))
    text = f"{x:.6g}"
    return f"{text} {unit}" if unit else float(text)


def _range(spec: dict, file: str, key: str) -> list[Any]:
    kind = "log" if "log" in spec else "linear"
    ends = spec[kind]
    if not isinstance(ends, list) or len(ends) != 2 or "points" not in spec:
        raise ConfigError(f"write {{{kind}: [low, high], points: n}}", file, key)
    (lo, u1), (hi, u2) = _split(ends[0], file, key), _split(ends[1], file, key)
    if u1 != u2:
        raise ConfigError(f"both ends need the same unit ({u1!r} vs {u2!r})", file, key)
    n = spec["points"]
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_POINTS:
        raise ConfigError(f"points: expected a whole number from 1 to {MAX_POINTS:,}, got {short(n)}", file, key)
    if kind == "log" and (lo <= 0 or hi <= 0):
        raise ConfigError("log ends must be > 0", file, key)
    integer = all(isinstance(e, int) for e in ends)
    if n == 1:
        return [_fmt(lo, u1, integer)]
    if kind == "log":
        xs = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    else:
        xs = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    return [_fmt(x, u1, integer) for x in xs]


def _path_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _sample(spec: dict, rng: random.Random, file: str, key: str) -> Any:
    kind = "loguniform" if "loguniform" in spec else "uniform"
    ends = spec[kind]
    if not isinstance(ends, list) or len(ends) != 2:
        raise ConfigError(f"write {{{kind}: [low, high]}}", file, key)
    (lo, u1), (hi, _) = (_split(e, file, key) for e in ends)
    if kind == "loguniform" and (lo <= 0 or hi <= 0):
        raise ConfigError("loguniform ends must be > 0", file, key)
    x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if kind == "loguniform" else rng.uniform(lo, hi)
    return _fmt(x, u1, all(isinstance(e, int) for e in spec[kind]))


def point_id(workload: str, hardware: str | None, overrides, base: Path | None = None,
             runtime: str | None = None) -> str:
    """A point's identity: its files relative to the sweep file's folder (`base`), so that a table made
    in one checkout resumes in another, and its overrides (a runtime file only where one is named, so
    that tables made before runtimes could be swept keep their ids)."""
    def rel(p: str | None) -> str | None:
        return p if p is None or base is None else os.path.relpath(p, base)
    files = [rel(workload), rel(hardware)] + ([rel(runtime)] if runtime is not None else [])
    text = json.dumps([*files, [list(o) for o in overrides]], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


#: the most points a sweep may have (a grid's product, or samples): a million runs is already days of work
MAX_POINTS = 1_000_000

#: a sweep's name names its output files inside --out: a plain file stem
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    file = str(path)
    data = read_yaml(path)
    unknown = set(data) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"unknown key (allowed: {', '.join(sorted(SWEEP_KEYS))})", file, sorted(unknown)[0])
    if ("workload" in data) == ("workloads" in data):
        raise ConfigError("give exactly one of 'workload' or 'workloads'", file, "workload")
    if "workload" in data and not _path_text(data["workload"]):
        raise ConfigError(f"expected a workload file, got {short(data['workload'])}", file, "workload")
    if "workloads" in data and (not isinstance(data["workloads"], list) or not data["workloads"]
                                or not all(_path_text(w) for w in data["workloads"])):
        raise ConfigError(f"expected a list of workload files, got {short(data['workloads'])}", file, "workloads")
    if data.get("hardware") is not None and not _path_text(data["hardware"]):
        raise ConfigError(f"expected a hardware file, got {short(data['hardware'])}", file, "hardware")
    if data.get("runtime") is not None and not _path_text(data["runtime"]):
        raise ConfigError(f"expected a runtime file, got {short(data['runtime'])}", file, "runtime")
    if not isinstance(data.get("set") or {}, dict):
        raise ConfigError(f"expected a mapping of KEY.PATH: value, got {short(data['set'])}", file, "set")
    def resolve(file: str | None) -> str | None:  # a file named relative to the sweep file
        return str((path.parent / file).resolve()) if file else None

    workloads = [resolve(w) for w in ([data["workload"]] if "workload" in data else list(data["workloads"]))]
    hardware, runtime = resolve(data.get("hardware")), resolve(data.get("runtime"))
    base = list((data.get("set") or {}).items())
    axes_spec: dict = data.get("axes") or {}
    if not isinstance(axes_spec, dict) or not axes_spec:
        raise ConfigError("expected a mapping of at least one axis", file, "axes")
    for key, spec in axes_spec.items():
        if isinstance(spec, list) and (not spec or len({repr(v) for v in spec}) != len(spec)):
            raise ConfigError("expected distinct values (a value twice would run, and list, a point twice)", file,
                              f"axes.{key}")
        if key in FILE_AXES and not (isinstance(spec, list) and all(_path_text(v) for v in spec)):
            raise ConfigError(f"expected a list of files, got {short(spec)}", file, f"axes.{key}")
    base_year = data.get("base_year")
    if "year" in axes_spec and base_year is None:
        raise ConfigError("the 'year' axis needs base_year (the year the hardware describes)", file, "base_year")

    rows: list[dict[str, Any]] = []
    if data.get("samples") is not None:
        samples, seed = data["samples"], data.get("seed", 0)
        if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= MAX_POINTS:
            raise ConfigError(f"expected a whole number from 1 to {MAX_POINTS:,}, got {short(samples)}", file,
                              "samples")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"expected a whole number, got {short(seed)}", file, "seed")
        rng = random.Random(seed)
        for _ in range(samples):
            row = {}
            for key, spec in axes_spec.items():
                if isinstance(spec, list):
                    row[key] = rng.choice(spec)
                elif isinstance(spec, dict) and ("uniform" in spec or "loguniform" in spec):
                    row[key] = _sample(spec, rng, file, f"axes.{key}")
                elif isinstance(spec, dict) and ("log" in spec or "linear" in spec):
                    row[key] = rng.choice(_range(spec, file, f"axes.{key}"))
                else:
                    raise ConfigError("expected a list, {log: ...}, {linear: ...}, {uniform: ...} or "
                                      "{loguniform: ...}", file, f"axes.{key}")
            rows.append(row)
    else:
        values = {}
        for key, spec in axes_spec.items():
            if isinstance(spec, list):
                values[key] = spec
            elif isinstance(spec, dict) and ("log" in spec or "linear" in spec):
                values[key] = _range(spec, file, f"axes.{key}")
            else:
                raise ConfigError("expected a list, {log: ...} or {linear: ...}", file, f"axes.{key}")
        size = math.prod(len(v) for v in values.values()) * len(workloads)
        if size > MAX_POINTS:
            raise ConfigError(f"{size:,} points: beyond reason (at most {MAX_POINTS:,}); use samples: or fewer values",
                              file, "axes")
        rows = [dict(zip(values, combo)) for combo in itertools.product(*values.values())]

    points = []
    for wl in workloads:
        for row in rows:
            overrides = tuple(base + [(k, v) for k, v in row.items() if k not in ("year", *FILE_AXES)])
            if "year" in row:
                overrides += (("year", row["year"]),)
            hw = resolve(row["hardware_file"]) if "hardware_file" in row else hardware
            rt = resolve(row["runtime_file"]) if "runtime_file" in row else runtime
            points.append(Point(point_id(wl, hw, overrides, path.parent.resolve(), rt), wl, hw, row, overrides, rt))
    kept: dict[str, Point] = {}  # a point drawn or rounded twice (a sample, a linear range of integers) runs once
    for p in points:
        kept.setdefault(p.id, p)
    points = list(kept.values())
    name = data.get("name") or path.stem
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"expected a plain file name (letters, digits, '.', '_', '-'; it names the tables "
                          f"inside --out), got {str(name)[:60]!r}", file, "name")
    return Sweep(name, path, list(axes_spec), points, base_year)


def year_overrides(hw_data: dict, year: float, base_year: float) -> list[tuple[str, Any]]:
    """Scale a hardware description from `base_year` to `year` by the memory-wall trend rates: peak
    FLOP/s x3.0, DRAM bandwidth x1.6, interconnect bandwidth x1.4 per two years."""
    from sim.config.units import Dim, parse_quantity

    span = (float(year) - float(base_year)) / 2.0
    f = {k: r**span for k, r in TREND_PER_2Y.items()}
    out = []
    compute = hw_data["device"]["compute"]
    for dtype, peak in compute.get("peak", {}).items():
        out.append((f"device.compute.peak.{dtype}", parse_quantity(peak, Dim.COMPUTE) * f["compute"]))
    out.append(("device.compute.vector", parse_quantity(compute["vector"], Dim.COMPUTE) * f["compute"]))
    for name, level in hw_data["device"]["memory"].items():
        if level.get("kind") == "dram":
            out.append((f"device.memory.{name}.bandwidth",
                        parse_quantity(level["bandwidth"], Dim.BANDWIDTH) * f["dram"]))
    if hw_data.get("interconnect"):
        bw = hw_data["interconnect"]["link"]["bandwidth"]
        out.append(("interconnect.link.bandwidth", parse_quantity(bw, Dim.BANDWIDTH) * f["interconnect"]))
    return out
