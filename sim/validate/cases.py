"""`python -m sim validate`, live: predicted vs measured on this machine, case by case.

Live cases are timed here, now, with numpy or (`--framework torch`) eager PyTorch (the median of repeated
runs over several rounds; warm caches, as the simulation of the same sequence run twice sees them, or a
cold weight where the case says so) and predicted with the host model and runtime calibrated with that
framework. Published cases (measurements on real accelerators) are
in `published`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from sim.config import DTYPE_BYTES, load_workload
from sim.config.hardware import Hardware
from sim.config.units import fmt_time
from sim.config.workload import Workload
from sim.engine import simulate
from sim.graph.ops import Access, Op, Tensor
from sim.mapping import place
from sim.mapping.plan import Planner
from sim.pipeline import run
from sim.report import summarize
from sim.validate import calibrate as cal
from sim.validate import kernels as numpy_kernels
from sim.validate.reference import Reference
from sim.validate.timing import typical_time

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = Path(__file__).resolve().parents[1] / "data" / "published.yaml"


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    predicted_s: float
    measured_s: float
    source: str = "measured here"
    spread: float | None = None  # live cases: the interquartile range of its rounds / the median round
    #: what predicted_s and measured_s are in: seconds, or "x" for a ratio (a latency over a reference
    #: case's, where the source publishes only that)
    unit: str = "s"
    runtime: str = ""  # the shipped runtime (runtimes/<name>.yaml) a published row is predicted under

    def shown(self, value: float) -> str:
        return fmt_time(value) if self.unit == "s" else f"{value:.3g}{self.unit}"

    @property
    def error(self) -> float:
        return (self.predicted_s - self.measured_s) / self.measured_s


# -- single operators ------------------------------------------------------------------------------
def matmul_op(name: str, m: int, n: int, k: int, dtype: str = "fp32", out_dtype: str | None = None,
              tensors: str = "") -> Op:
    """An (m x k) @ (k x n) matmul in `dtype`, writing its result in `out_dtype` (default: `dtype`);
    ops with the same `tensors` prefix share their operands."""
    size = DTYPE_BYTES[dtype]
    a = Tensor(f"{tensors}x", "activation", m * k * size, m * k)
    w = Tensor(f"{tensors}w", "weight", k * n * size, k * n)
    y = Tensor(f"{tensors}y", "activation", m * n * DTYPE_BYTES[out_dtype or dtype], m * n)
    return Op(name=name, kind="matmul", op_class="gemv" if m == 1 else "gemm", engine="matrix", phase="prefill",
              step=0, layer=0, dtype=dtype, flops=2.0 * m * n * k, reads=(Access(a, a.bytes), Access(w, w.bytes)),
              writes=(Access(y, y.bytes),), shape=(1, m, n, k), kernel="matmul", weight_element_bytes=size)


def predict_matmul(hw: Hardware, m: int, n: int, k: int, dtype: str = "fp32", out_dtype: str | None = None,
                   cold: bool = False) -> float:
    """The second of two matmuls in a row, what a timing loop sees: the same operands again (warm
    caches), or, `cold`, other operands of the same shape (a loop rotating through more buffers than
    the caches hold, as a decode step reads each weight once)."""
    ops = [matmul_op("first", m, n, k, dtype, out_dtype), matmul_op("again", m, n, k, dtype, out_dtype,
                                                                    tensors="other_" if cold else "")]
    planner = Planner(hw, place(ops, hw))
    records = simulate([planner.plan(op) for op in ops], hw).ops
    return records[1].duration_s


@dataclass(frozen=True)
class Timed:
    """A live case before measurement: the call to time, and its prediction from a hardware model
    (a function of the model, so that the model can be calibrated while the cases are timed)."""
    group: str
    name: str
    predict: Callable[[Hardware], float]
    fn: Callable[[], object]
    stage: str = "kernels"  # the calibration stage (`calibrate.STAGES`) whose figures it depends on most


def _cold(x, k: int, n: int, kernels: ModuleType = numpy_kernels) -> Callable[[], object]:
    """x @ W with each call's W the least recently used weight of calibration's cold pool, so that it
    streams from DRAM whatever the caches' replacement policy."""
    pool = cal.cold_pool()
    return lambda: x @ kernels.array(pool.take(k, n))


def matmul_cases(quick: bool, kernels: ModuleType = numpy_kernels) -> list[Timed]:
    """The GEMM sweep (weight warm in cache, as a timing loop leaves it), and GEMVs of GPT-2 and Llama
    shapes cold (a decode step reads each weight once, after all the others) and, where the weight fits
    in half the last-level cache, warm too. A warm GEMV of a weight larger than the cache would time the
    cache's replacement policy for a stream re-read (part of it survives on this machine's L3), which
    memwall does not model (see docs/model.md)."""
    last_cache = cal.last_cache_bytes(cal.os_caches())
    cases = []
    k_n, a, fw = 1024, kernels.own, kernels.NAME
    for m in (1, 16, 64, 256, 1024) if quick else (1, 16, 64, 256, 1024, 4096):
        x, w = a(np.ones((m, k_n), np.float32)), a(np.ones((k_n, k_n), np.float32))
        cases.append(Timed(f"GEMM sweep (K = N = 1024, fp32, {fw})", f"M = {m}",
                           lambda hw, m=m: predict_matmul(hw, m, k_n, k_n), lambda x=x, w=w: x @ w,
                           "caches" if m == 1 else "gemm"))
    shapes = [("GPT-2 qkv 768x2304", 768, 2304), ("GPT-2 ffn up 768x3072", 768, 3072),
              ("GPT-2 ffn down 3072x768", 3072, 768), ("GPT-2 LM head 768x50257", 768, 50257),
              ("Llama-7B attn out 4096x4096", 4096, 4096), ("Llama-7B ffn up 4096x11008", 4096, 11008),
              ("Llama-7B ffn down 11008x4096", 11008, 4096)]
    for name, k, n in shapes[:5] if quick else shapes:
        x = a(np.ones((1, k), np.float32))
        if 4 * k * n <= last_cache // 2:
            w = a(np.ones((k, n), np.float32))
            cases.append(Timed(f"GEMV (fp32, {fw}), weight warm in cache", name,
                               lambda hw, k=k, n=n: predict_matmul(hw, 1, n, k), lambda x=x, w=w: x @ w,
                               "caches"))
        cases.append(Timed(f"GEMV (fp32, {fw}), weight cold (from DRAM)", name,
                           lambda hw, k=k, n=n: predict_matmul(hw, 1, n, k, cold=True),
                           _cold(x, k, n, kernels), "dram"))
    return cases


# -- whole forward passes --------------------------------------------------------------------------
def _workload(path: str, phase: str, prompt: int, new: int, **model) -> Workload:
    sets = [("scenario.phase", phase), ("scenario.batch", 1), ("scenario.prompt_tokens", prompt),
            ("scenario.new_tokens", new), ("scenario.precision.weights", "fp32"),
            ("scenario.precision.activations", "fp32"), ("scenario.precision.kv_cache", "fp32")]
    sets += [(f"model.{k}", v) for k, v in model.items()]
    return load_workload(ROOT / path, sets)[0]


def forward_cases(quick: bool, kernels: ModuleType = numpy_kernels) -> list[Timed]:
    """GPT-2 / BERT / Llama-style forward passes (prefill, and decode with a KV cache), written with
    `kernels`' framework (numpy, or eager PyTorch)."""
    small_llama = {"layers": 8, "hidden": 1024, "heads": 16, "kv_heads": 4, "ffn": 2816}
    specs = [
        ("BERT-Base encode, 128 tokens", "workloads/bert-base.yaml", "encode", 128, 0, {}),
        ("GPT-2 prefill, 128 tokens", "workloads/gpt2.yaml", "prefill", 128, 0, {}),
        ("GPT-2 decode step, context 128", "workloads/gpt2.yaml", "decode", 128, 1, {}),
        ("Llama-style 8L/1024 GQA prefill, 64 tokens", "workloads/llama2-7b.yaml", "prefill", 64, 0, small_llama),
        ("Llama-style 8L/1024 GQA decode step, context 256", "workloads/llama2-7b.yaml", "decode", 256, 1,
         small_llama),
    ]
    if quick:
        specs = [s for s in specs if "BERT" not in s[0]]
    cases = []
    for name, path, phase, prompt, new, model in specs:
        wl = _workload(path, phase, prompt, new, **model)
        ref = Reference(wl.model, 1, prompt + new + 1, kernels=kernels)
        if phase == "decode":
            ref.forward(np.zeros((1, prompt), np.int64), 0)  # fill the cache once
            fn = lambda ref=ref, p=prompt: ref.forward(np.zeros((1, 1), np.int64), p)  # noqa: E731
        else:
            fn = lambda ref=ref, p=prompt: ref.forward(np.zeros((1, p), np.int64), 0)  # noqa: E731
        cases.append(Timed(f"Transformer forward ({kernels.NAME}, fp32)", name,
                           lambda hw, wl=wl: summarize(run(wl, hw))["total_s"], fn))
    return cases



def machine_drift(hw: Hardware, kernels: ModuleType = numpy_kernels) -> dict[str, float]:
    """The machine now against its calibration: three of calibration's microbenchmarks again (GEMM
    peak, the shared cache's and DRAM's bandwidth, in `kernels`' framework as calibrated), each as now /
    calibrated. On a shared machine they move by tens of percent within minutes; a case's error cannot
    be smaller than that."""
    out = {"GEMM peak": cal.gemm_rate(np.float32, cal.MATRIX_SIZE, kernels) / hw.device.compute.peak["fp32"]}
    gemv = hw.device.dispatch_for("matmul")  # calibration's shared-cache GEMVs are net of it
    shared = [(n, lvl) for n, lvl in hw.levels.items() if lvl.kind == "cache" and lvl.scope == "shared"]
    for name, lvl in shared:
        quarter = int(lvl.capacity) // 4
        out[f"{name} bandwidth"] = (cal.gemv_bandwidth(quarter, cal.CACHE_ROW, gemv, kernels)
                                    / lvl.bandwidth_for(quarter))
    dram = next((lvl for lvl in hw.levels.values() if lvl.kind == "dram"), None)
    if dram is not None:
        out["DRAM bandwidth"] = (cal.cold_gemv_rate(256 << 20, columns=cal.LONG_ROW, kern=kernels)
                                 / dram.bandwidth_for(256 << 20))
    return out


#: Rounds of live timing (and, with `validate --calibrate`, of calibration between them): on a shared
#: machine each figure is the median of its rounds. Single rounds of a case scatter by 30-60% on this
#: project's VM, independently of calibration's round beside them (judged round by round, one run
#: scattered more than its medians: 13.6% / 26.8% against 7.8% / 38.7%), so only more rounds narrow
#: it (docs/validation-history.md: 4 to 16 rounds of three runs).
ROUNDS = 16


def live_timed(quick: bool = False, kernels: ModuleType = numpy_kernels) -> list[Timed]:
    """Every live case in `kernels`' framework, ready to time and to predict."""
    return matmul_cases(quick, kernels) + forward_cases(quick, kernels)


def time_round(timed: list[Timed], times: list[list[float]], stage: str | None = None) -> None:
    """One round: every case (of calibration stage `stage`, if given) timed once (`typical_time`, as
    calibration times its microbenchmarks: the median of three batches of calls), appended to its list.
    Cases are timed round-robin, so that a burst of someone else's load on a shared machine spreads
    over all cases instead of ruining one."""
    for t, case in zip(times, timed):
        if stage is None or case.stage == stage:
            t.append(typical_time(case.fn, repeats=3))


def live_cases(hw: Hardware, timed: list[Timed], times: list[list[float]]) -> list[Case]:
    """Each case predicted with `hw` (the machine under the cases' framework's runtime) against its
    median round, as calibration keeps each microbenchmark's median round: both describe the machine as
    it ran in the same minutes. Each case also carries the spread of its rounds, the noise its error is
    measured against."""
    return [Case(c.group, c.name, c.predict(hw), statistics.median(t), spread=spread(t)) for c, t in zip(timed, times)]


def spread(rounds: list[float]) -> float:
    """The interquartile range of a case's rounds over their median: how far single rounds scatter, not
    moved by one round that fell into a burst of someone else's load (which the slowest-to-fastest range,
    growing with the number of rounds, is)."""
    if len(rounds) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(rounds, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(rounds)
