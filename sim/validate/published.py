"""`python -m sim validate`, published: measurements on real accelerators from primary sources
(sim/data/published.yaml), predicted with the shipped hardware models."""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

import yaml

from sim.config import load_hardware, load_workload, split_overrides
from sim.config.hardware import Hardware
from sim.config.units import Dim, fmt_time, parse_quantity
from sim.engine import simulate
from sim.graph.ops import Access, Collective, Op, Tensor, loose
from sim.mapping import place
from sim.mapping.collectives import plan_collective
from sim.mapping.parallel import Program
from sim.mapping.plan import Planner
from sim.pipeline import run
from sim.report import summarize
from sim.validate.cases import ROOT, Case, predict_matmul

DATA = Path(__file__).resolve().parents[1] / "data"
PUBLISHED = DATA / "published.yaml"
#: the step a calibrated parameter is probed with to find how many times a row pays it
PROBE = 1e-3


def predict_allreduce(hw: Hardware, nbytes: float, devices: int) -> float:
    """One all-reduce of `nbytes` over the first `devices` devices on an idle interconnect (what
    nccl-tests times), without dispatch overhead."""
    buf = Tensor("buf", "activation", nbytes)
    op = Op(name="allreduce", kind="allreduce", op_class="collective", engine="link", phase="prefill", step=0,
            layer=0, dtype="fp32", flops=0.0, reads=(Access(buf, nbytes),), writes=(Access(buf, nbytes),),
            collective=Collective("allreduce", nbytes))
    group = tuple(range(devices))
    coll = plan_collective(op.collective, group, hw)
    base = replace(Planner(hw, place([op], hw)).plan(op), overhead_s=0.0)
    program = Program(0, group, [(loose([op]), (base,))], {op.collective: coll})  # one for the alike ranks
    return simulate([program], hw).ops[0].duration_s


def measured_seconds(row: dict) -> float:
    """A row's measurement, converted from the figure its source publishes to seconds."""
    if "measured_s" in row:
        return float(row["measured_s"])
    if "normalized" in row:  # a latency over the series' reference case's (a ratio, not seconds)
        return float(row["normalized"])
    if "rate" in row:  # a matmul's achieved FLOP/s
        return 2.0 * row["m"] * row["n"] * row["k"] / parse_quantity(row["rate"], Dim.COMPUTE)
    if "time" in row:  # a time as its source prints it (nccl-tests' "time" column)
        return parse_quantity(row["time"], Dim.TIME)
    if "busbw" in row:  # nccl-tests: busbw = algbw x 2(p-1)/p for an all-reduce
        p = row["devices"]
        return row["bytes"] * 2 * (p - 1) / p / parse_quantity(row["busbw"], Dim.BANDWIDTH)
    if "tokens_per_s" in row:
        return row["tokens"] / float(row["tokens_per_s"])
    if "samples_per_s" in row:  # a training step of `samples` sequences
        return row["samples"] / float(row["samples_per_s"])
    if "tflops_per_gpu" in row:  # Megatron-LM's achieved teraFLOP/s per GPU: its FLOPs per step over the time
        return megatron_step_flops(row["set"]) / (float(row["tflops_per_gpu"]) * 1e12 * row["gpus"])
    if "tokens_per_s_per_gpu" in row:  # every GPU counted: `gpus`, or the tensor-parallel group
        gpus = row.get("gpus") or (row.get("set") or {}).get("parallelism.tensor", 1)
        return row["tokens"] / (float(row["tokens_per_s_per_gpu"]) * gpus)
    raise ValueError(f"published row {row.get('name')!r} has no measured figure")


def measured_peak_bytes(row: dict) -> float | None:
    """A training row's published peak device memory per GPU, in bytes (None where it gives none)."""
    return float(row["peak_mib_per_gpu"]) * 2 ** 20 if "peak_mib_per_gpu" in row else None


def _machine(row: dict, extra: list[tuple[str, object]] = ()) -> tuple[Hardware, list]:
    """A row's shipped hardware model under the shipped runtime its source ran, with its `set`
    overrides (then `extra`), and its workload overrides."""
    work_set, hw_set = split_overrides(list((row.get("set") or {}).items()) + list(extra))
    return load_hardware(ROOT / "hardware_models" / f"{row['hardware']}.yaml", hw_set,
                         ROOT / "runtimes" / f"{row['runtime']}.yaml"), work_set


def _summary(row: dict, hw: Hardware, work_set: list) -> dict:
    wl, _ = load_workload(ROOT / "workloads" / f"{row['workload']}.yaml", work_set)
    return summarize(run(wl, hw), top=0)


def predict_training(row: dict) -> dict:
    """The summary of a training row's step as the shipped hardware model runs it."""
    return _summary(row, *_machine(row))


def megatron_step_flops(settings: dict) -> float:
    """FLOPs of a GPT training step with full recomputation as Megatron-LM counts them (Narayanan et al.,
    2021, eq. 3): 96 B s l h^2 (1 + s / 6h + V / 16 l h)."""
    b, s = settings["scenario.batch"], settings["scenario.prompt_tokens"]
    ll, h, v = settings["model.layers"], settings["model.hidden"], settings["model.vocab"]
    return 96 * b * s * ll * h * h * (1 + s / (6 * h) + v / (16 * ll * h))


def predict_row(row: dict, extra: list[tuple[str, object]] = ()) -> tuple[Hardware, float]:
    """The shipped hardware model's prediction of one row (with its `set` overrides, then `extra`); for a
    `ratio` row, its latency over that of the series' `reference` case."""
    if row["kind"] == "ratio":
        reference = {**row, **row["reference"], "kind": "generate"}
        hw, mine = predict_row({**row, "kind": "generate"}, extra)
        return hw, mine / predict_row(reference, extra)[1]
    hw, work_set = _machine(row, extra)
    if row["kind"] == "allreduce":
        return hw, predict_allreduce(hw, row["bytes"], row["devices"])
    if row["kind"] == "matmul":
        return hw, predict_matmul(hw, row["m"], row["n"], row["k"], row.get("dtype", "fp32"), row.get("out_dtype"),
                                  cold=row.get("caches") == "cold")
    return hw, _summary(row, hw, work_set)["total_s"]


def published_rows(path: Path = PUBLISHED) -> list[dict]:
    """Every row merged with its series (row keys win; `set` overrides merge, the row's winning)."""
    data = yaml.safe_load(path.read_text())
    rows = []
    for row in data["cases"]:
        series = data["series"][row["series"]]
        rows.append({**series, **row, "set": {**(series.get("set") or {}), **(row.get("set") or {})}})
    return rows


def calibrations(rows: list[dict]) -> dict[str, tuple[str, float, int]]:
    """Per series with calibration rows: (parameter, value in seconds, rows used). Once the parameter is
    above 0 a row's prediction grows in step with it (a time paid once per call, or once per step: the
    slope is how many times); at 0 it may jump (a host that waits at every step only once it has work to
    do there). So the line is taken through two probes above 0, and the value is the median over the rows
    of where that line meets the measurement."""
    out = {}
    for series in dict.fromkeys(r["series"] for r in rows if r.get("role") == "calibration"):
        used = [r for r in rows if r["series"] == series and r.get("role") == "calibration"]
        key = used[0].get("calibrates")
        if not key or any(r.get("calibrates") != key for r in used):
            raise ValueError(f"series {series!r}: calibration rows need the series' one `calibrates` parameter")
        values = []
        for r in used:
            one, two = (predict_row(r, [(key, f"{k * PROBE} s")])[1] for k in (1, 2))
            slope = (two - one) / PROBE
            if slope <= 0:
                raise ValueError(f"calibration row {r['name']!r}: its prediction does not grow with {key}")
            values.append(PROBE + (measured_seconds(r) - one) / slope)
        out[series] = (key, max(0.0, statistics.median(values)), len(used))
    return out


def published_cases(path: Path = PUBLISHED) -> tuple[list[Case], list[str]]:
    """Predicted vs published for every row that is not a calibration row, and a line per calibration."""
    rows = published_rows(path)
    fitted = calibrations(rows)
    cases = []
    for row in rows:
        if row.get("role") == "calibration" or row["kind"] == "train_memory":  # (a memory row: bench/training.py)
            continue
        # its own series' calibrated cost, or the one it borrows from a microbenchmark series
        key, value, _ = fitted.get(row["series"], fitted.get(row.get("borrows"), (None, 0.0, 0)))
        extra = [(key, f"{value * 1e6:.6f} us")] if key else []
        _, predicted = predict_row(row, extra)
        graphs = " + graphs" if (row.get("set") or {}).get("runtime.graphs") else ""  # replayed from CUDA graphs
        cases.append(Case(row["group"], row["name"], predicted, measured_seconds(row), row["source"],
                          unit="x" if row["kind"] == "ratio" else "s", runtime=row["runtime"] + graphs))
    notes = [f"{key} = {fmt_time(value)} for {next(r['group'] for r in rows if r['series'] == s)!r}: the median, "
             f"over its {n} calibration row{'s' if n > 1 else ''} (not in the table), of the value at which the "
             f"row's prediction meets its measurement" for s, (key, value, n) in fitted.items()]
    return cases, notes


def measured_cases() -> list[Case]:
    """Predicted vs measured for the rows memwall's own GPU script wrote (sim/data/measured-*.yaml:
    `python bench/gpu_measure.py` on a real GPU), one file per GPU."""
    cases = []
    for path in sorted(DATA.glob("measured-*.yaml")):
        cases += published_cases(path)[0]
    return cases
