"""The metric registry: every output figure defined once, with its name, unit and meaning.

`RUN` are the run's figures (the summary's scalars; the end-to-end table's rows; sweep columns),
`AGGREGATE` the figures of a set of ops (per op class, per phase, per top operator), `GROUP_COLUMNS` the
per-class sweep columns taken from them, and `OP` the per-op record fields (`--json` ops, `--csv` columns).
The summary, the terminal report, the CSV header, the sweep table and docs/outputs.md's tables are
produced from these lists (`python tests/test_outputs_doc.py --update` rewrites the tables; a test fails
when they disagree). Adding a figure is one entry here and, if it needs new facts, one line
where the summary gathers them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sim.config.units import fmt_bytes, fmt_si, fmt_time

#: report groups of op classes, in report order (and the sweep's per-class columns)
GROUPS = ("GEMM", "GEMV", "attention", "collective", "copy", "other")


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    definition: str
    #: its value from the facts the summary gathered (`summary.Facts`); None: not a summary scalar
    get: Callable[[Any], Any] | None = None
    #: its end-to-end table row from (summary, context): (label, text), or None where it does not apply
    row: Callable[[dict, dict], tuple[str, str] | None] | None = None
    sweep: bool = False  # a column of sweep tables


def _pct(x: float) -> str:
    return f"{100 * x + 0.0:.1f}%" if abs(x) >= 5e-4 else "0.0%"  # no "-0.0%" from rounding noise


def _resource(key: str) -> str:
    return key.replace("memory:", "").replace("link:", "link ")


def _host_row(s: dict, ctx: dict) -> tuple[str, str] | None:
    if not s["host_dispatch_s"]:
        return None
    share = s["host_dispatch_s"] / s["total_s"] if s["total_s"] else 0.0
    per_op = s["host_dispatch_s"] / s["host_dispatch_ops"]
    mixed = " on average" if ctx.get("hardware", {}).get("dispatch_by_kernel_s") else ""
    return (f"host dispatch ({s['host_dispatch_ops']} ops x {fmt_time(per_op)}{mixed})",
            f"{fmt_time(s['host_dispatch_s'])} ({100 * share:.0f}%)")


def _training(f) -> bool:
    return f.ctx.get("workload", {}).get("phase") == "train"


def _utilization(f, model: bool) -> float | None:
    """FLOPs per second of the step over the devices' matrix peak (training only): the model's (three times
    the forward pass: a backward counted at twice it, however a kernel recomputes), or the hardware's (every
    FLOP executed but the update's)."""
    if not _training(f) or not f.total:
        return None
    flops = f.pass_flops
    done = 3 * flops.get("forward", 0.0) if model else sum(flops.get(p, 0.0) for p in ("forward", "backward",
                                                                                        "recompute"))
    return done / (f.total * f.ctx["hardware"]["peak_flops"] * f.devices)


def _train_row(label: str, text: Callable[[dict], str]) -> Callable[[dict, dict], tuple[str, str] | None]:
    return lambda s, c: (label, text(s)) if s["step_s"] is not None else None


#: the end-to-end row of the time to first token, by phase (an encoder's pass has no token to come first)
_TTFT_LABEL = {"prefill": "prefill = time to first token", "generate": "prefill = time to first token",
               "decode": "first decode step = time to first token"}

RUN: list[Metric] = [
    Metric("total_s", "s", "end of the last op", lambda f: f.total,
           lambda s, c: ("total time", fmt_time(s["total_s"])), sweep=True),
    Metric("device_time_s", "s", "sum of op durations over all devices (= `total_s` on one device, unless "
           "collectives or prefetch copies overlap compute); class and phase shares are of this",
           lambda f: f.device_time),
    Metric("devices", "", "devices simulated (inference: one data-parallel replica, they are independent; "
           "training: every replica)", lambda f: f.devices, sweep=True),
    Metric("ttft_s", "s", "time to first token: end of prefill (generate/prefill), end of the first step "
           "(decode), total (encode); `null` for training", lambda f: f.ttft,
           lambda s, c: (_TTFT_LABEL[c.get("workload", {}).get("phase")], fmt_time(s["ttft_s"]))
           if c.get("workload", {}).get("phase") in _TTFT_LABEL else None, sweep=True),
    Metric("tpot_s", "s", "mean time per output token over the decode steps (`null` without decode)",
           lambda f: f.tpot, lambda s, c: ("time per output token (mean)", fmt_time(s["tpot_s"]))
           if s["tpot_s"] is not None else None, sweep=True),
    Metric("decode_s", "s", "time in the decode phase: total less prefill; `null` for training",
           lambda f: f.decode_s,
           lambda s, c: ("decode time", fmt_time(s["decode_s"])) if s["tpot_s"] is not None else None),
    Metric("prefill_s", "s", "end of the prefill or encode phase; `null` for training", lambda f: f.prefill_end),
    Metric("step_s", "s", "training: one optimizer step (forward and backward of every micro-batch, then the "
           "update); `null` otherwise", lambda f: f.total if _training(f) else None,
           _train_row("training step", lambda s: fmt_time(s["step_s"])), sweep=True),
    Metric("samples_per_s", "1/s", "training: sequences per second (batch / step)",
           lambda f: f.ctx["workload"]["batch"] / f.total if _training(f) and f.total else None,
           _train_row("samples/s", lambda s: f"{s['samples_per_s']:.1f}")),
    Metric("mfu", "fraction", "training: model FLOPs utilisation, three times the forward pass's FLOPs (the "
           "backward counted at twice the forward, without any recomputation) per second of the step over the "
           "devices' matrix peak", lambda f: _utilization(f, model=True),
           _train_row("MFU / HFU (model / hardware FLOPs utilisation)",
                      lambda s: f"{_pct(s['mfu'])} / {_pct(s['hfu'])}"), sweep=True),
    Metric("hfu", "fraction", "training: hardware FLOPs utilisation, every FLOP of forward, backward and "
           "recomputation as executed (FlashAttention's backward recomputes its scores) per second over the peak",
           lambda f: _utilization(f, model=False), sweep=True),
    Metric("tokens_per_s", "1/s", "generate: batch × new_tokens / total; decode: batch × new_tokens / decode "
           "time; encode/prefill/train: batch × prompt_tokens / total", lambda f: f.tokens_s,
           lambda s, c: ("tokens/s (generated)" if s["tpot_s"] is not None else "tokens/s (processed)",
                         f"{s['tokens_per_s']:.1f}"), sweep=True),
    Metric("flops", "FLOP", "all ops", lambda f: f.everything["flops"],
           lambda s, c: (f"FLOPs / bytes at {s['balance_level']}", f"{fmt_si(s['flops'], 'FLOP')} / "
                         f"{fmt_bytes(s['bytes_per_level'].get(s['balance_level'], 0.0))}"), sweep=True),
    Metric("bytes", "B", "bytes served, summed over memory levels (a byte crossing L2 and HBM counts at both)",
           lambda f: f.everything["bytes"]),
    Metric("bytes_per_level", "B", "bytes served by each memory level", lambda f: f.everything["bytes_per_level"]),
    Metric("balance_level", "", "the memory level the weights live in: balance points and intensities are "
           "taken against it", lambda f: f.level, sweep=True),
    Metric("bytes_at_balance_level", "B", "bytes served by the balance level",
           lambda f: f.everything["bytes_per_level"].get(f.level, 0.0), sweep=True),
    Metric("intensity_per_level", "FLOP/B", "FLOPs per byte served by each level",
           lambda f: f.everything["intensity_per_level"]),
    Metric("hit_rate", "fraction", "per shared cache: hit bytes / looked-up bytes", lambda f: f.everything["hit_rate"]),
    Metric("ops", "", "operators simulated (every device counted)", lambda f: f.ops,
           lambda s, c: ("ops simulated / events", f"{s['ops']} / {s['events']}")),
    Metric("events", "", "simulation events the run cost", lambda f: f.result.events),
    Metric("time_share", "fraction", "of device time: `compute` busy, `overhead`, and stalls: "
           "`memory:<level>`, `link:<topology>` (`link:net` where a collective leaves its node), `sync` "
           "(waiting for peers of a collective)",
           lambda f: f.everything["time_share"]),
    Metric("bound", "", "the resource that held the ops up longest (compute, overhead, a memory level's "
           "busy-or-stalled time, a link, sync)", lambda f: f.everything["bound"],
           lambda s, c: ("bound (held the ops up longest)", _resource(s["bound"])), sweep=True),
    Metric("host_dispatch_s", "s", "the host's own work: the ops it dispatches on the busiest device's "
           "program × each one's dispatch cost", lambda f: f.host_s, _host_row, sweep=True),
    Metric("host_dispatch_ops", "", "ops the host dispatches on the busiest device's program",
           lambda f: f.host_ops),
    Metric("comm_s", "s", "communication time, summed over devices: each collective's transfers (its duration "
           "less its dispatch wait and its wait for late peers, `sync`)", lambda f: f.comm),
    Metric("comm_exposed_s", "s", "the part of `comm_s` the compute streams waited for (a collective run in "
           "line is wholly exposed)", lambda f: f.exposed,
           lambda s, c: ("communication exposed / hidden under compute (all devices)",
                         f"{fmt_time(s['comm_exposed_s'])} / {fmt_time(s['comm_hidden_s'])}")
           if s["comm_s"] else None, sweep=True),
    Metric("comm_hidden_s", "s", "the rest of `comm_s`: hidden under compute that did not need it",
           lambda f: f.comm - f.exposed, sweep=True),
    Metric("bubble_s", "s", "mean per device of the time it spent neither running an op nor waiting for "
           "communication: waiting for other devices (a pipeline stage before its first micro-batch arrives "
           "and after its last has left; a rank waiting for a slower one)", lambda f: f.bubble,
           lambda s, c: ("idle waiting for other devices (bubble, mean per device)",
                         f"{fmt_time(s['bubble_s'])} ({_pct(s['bubble_fraction'])})")
           if s["bubble_s"] > 1e-9 * s["total_s"] else None),
    Metric("bubble_fraction", "fraction", "`bubble_s / total_s`; for p equal pipeline stages fed m "
           "micro-batches over free links, (p − 1)/(m + p − 1)",
           lambda f: f.bubble / f.total if f.total else 0.0, sweep=True),
    Metric("paced_by", "`host` \\| `device`", "`host` when the host's dispatch work is ≥ 95% of the total time: "
           "the device keeps up with the host, so a faster device would not shorten the run (GPT-2 at batch 1 "
           "on an A100 with 2 µs per op)", lambda f: f.paced_by,
           lambda s, c: ("paced by", "host dispatch (a faster device would not help)"
                         if s["paced_by"] == "host" else "device"), sweep=True),
    Metric("weights_bytes", "B", "weights one device holds (the fullest stage's shard)",
           lambda f: f.ctx.get("memory", {}).get("weights_bytes"), sweep=True),
    Metric("kv_cache_bytes", "B", "KV cache one device holds, at its final length",
           lambda f: f.ctx.get("memory", {}).get("kv_cache_bytes"), sweep=True),
    Metric("gradients_bytes", "B", "training: weight gradients one device holds",
           lambda f: f.ctx.get("memory", {}).get("gradients_bytes"), sweep=True),
    Metric("optimizer_bytes", "B", "training: optimizer state one device holds, fp32 master weights included",
           lambda f: f.ctx.get("memory", {}).get("optimizer_bytes"), sweep=True),
    Metric("activations_bytes", "B", "the activations' peak live set on one device (in training, what the "
           "forward pass keeps for backward at its peak)", lambda f: f.ctx.get("memory", {}).get("activations_bytes"),
           sweep=True),
    Metric("peak_bytes", "B", "the fullest device's peak in the memory level its weights live in (device "
           "memory), every part together (`memory.<level>` breaks it down)",
           lambda f: f.peak.get(f.ctx.get("memory", {}).get("home", {}).get("weight"), {}).get("peak_bytes"),
           sweep=True),
    Metric("balance_point_flop_per_byte", "FLOP/B", "matrix peak ÷ bandwidth of the balance level",
           lambda f: f.ctx.get("hardware", {}).get("balance_point_flop_per_byte"), sweep=True),
    Metric("achievable_balance_point_flop_per_byte", "FLOP/B", "the same with what the hardware file says is "
           "reachable: matrix peak × `matrix_efficiency` at large M ÷ the balance level's achievable bandwidth",
           lambda f: f.ctx.get("hardware", {}).get("achievable_balance_point_flop_per_byte"), sweep=True),
]

#: sections of the summary that are not scalars (documented here, built by the summary)
SECTIONS: list[Metric] = [
    Metric("classes.<GEMM/GEMV/attention/collective/copy/other>", "", "the aggregate figures below, per op "
           "class (`copy`: weights prefetched from host memory)"),
    Metric("phases.<pass>", "", "the same aggregate per pass (`encode`, `prefill`, `decode`, ...)"),
    Metric("top_ops", "", "the same aggregate per (pass, op kind), longest first, with `phase`, `kind`, "
           "`op_class`"),
    Metric("memory", "B", "`weights_bytes`, `kv_cache_bytes`, `activations_bytes` (peak live), "
           "`optimizer_bytes`, `gradients_bytes`, `home` (tensor kind → level), `partial_bytes` (kind → level → "
           "bytes of it served from a faster level than its home), `capacity_bytes`, `used_bytes` per level "
           "(both counting `reserved_bytes`: per level, the runtime's reserved memory)"),
    Metric("memory.<level>", "B", "the fullest device's peak on each memory level, `peak_bytes`, and its parts "
           "`weights`, `gradients`, `optimizer`, `activations`, `kv_cache`, `staging`, `runtime` (the runtime's "
           "reserved memory): what is held all run plus "
           "the activations' peak live set"),
]

AGGREGATE: list[Metric] = [
    Metric("ops", "", "ops in the set"),
    Metric("time_s", "s", "device time: the ops' durations summed"),
    Metric("flops", "FLOP", "their FLOPs"),
    Metric("bytes", "B", "bytes they moved, summed over levels"),
    Metric("bytes_per_level", "B", "bytes each memory level served them"),
    Metric("intensity_flop_per_byte", "FLOP/B", "FLOPs per byte at the balance level"),
    Metric("intensity_per_level", "FLOP/B", "FLOPs per byte at each level"),
    Metric("hit_rate", "fraction", "per shared cache: hit bytes / looked-up bytes"),
    Metric("achieved_flops_per_s", "FLOP/s", "`flops / time_s`"),
    Metric("achieved_bytes_per_s", "B/s", "`bytes / time_s`"),
    Metric("bytes_at_level", "B", "bytes at the balance level"),
    Metric("achieved_bytes_per_s_at_level", "B/s", "`bytes_at_level / time_s`"),
    Metric("time_share", "fraction", "of `time_s`: compute busy, overhead, each stall"),
    Metric("bound", "", "the resource that held them up longest"),
    Metric("share_of_total", "fraction", "`time_s` over the run's device time (classes and top ops)"),
]


def _share(key: str) -> Callable[[dict], float]:
    return lambda a: a["time_share"].get(key, 0.0)


def _stalls(prefix: str) -> Callable[[dict], float]:
    return lambda a: sum(v for k, v in a["time_share"].items() if k.startswith(prefix))


#: per op class, the sweep columns `<group>_<name>` taken from its aggregate
GROUP_COLUMNS: list[Metric] = [
    Metric("share", "fraction", "the class's share of device time", lambda a: a["share_of_total"]),
    Metric("bound", "", "what bounds the class", lambda a: a["bound"]),
    Metric("busy", "fraction", "of the class's time, compute busy", _share("compute")),
    Metric("memory_stall", "fraction", "of the class's time, stalled on any memory level", _stalls("memory:")),
    Metric("link_stall", "fraction", "of the class's time, stalled on links", _stalls("link:")),
    Metric("sync", "fraction", "of the class's time, waiting for peers", _share("sync")),
    Metric("overhead", "fraction", "of the class's time, dispatch and launch overhead", _share("overhead")),
]

@dataclass(frozen=True)
class OpField:
    """A field of a per-op record (`--json` ops); `csv`: its CSV column(s), `None` for none, `"one"` for a
    column of its own, or the name of what it expands over (`level`, `cache`, `stall`: one column each)."""

    name: str
    unit: str
    definition: str
    csv: str | None = "one"
    get: Callable[[Any, str], Any] | None = None  # (record, balance level) -> value, for its CSV column(s)


def _x(shape: tuple) -> str:
    return "x".join(map(str, shape))


def _rate(hit: tuple[float, float] | None) -> float | None:
    return hit[0] / hit[1] if hit and hit[1] else None


#: per-op record fields, in CSV column order
OP: list[OpField] = [
    OpField("name", "", "`<phase>[step].[mb<k>.]<L#/emb/head>.<kind>`", get=lambda r, lv: r.name),
    OpField("phase", "", "the pass it belongs to", get=lambda r, lv: r.phase),
    OpField("step", "", "decode step", get=lambda r, lv: r.step),
    OpField("micro", "", "micro-batch (names carry `mb<k>.` when there are several)", get=lambda r, lv: r.micro),
    OpField("layer", "", "-1 embeddings, `layers` the head", get=lambda r, lv: r.layer),
    OpField("kind", "", "what it does (`qkv`, `scores`, `ffn_up`, ...)", get=lambda r, lv: r.kind),
    OpField("op_class", "", "`gemm`, `gemv`, `attention`, `softmax`, `norm`, `elementwise`, `collective`, `copy`",
            get=lambda r, lv: r.op_class),
    OpField("device", "", "the device that ran it", get=lambda r, lv: r.device),
    OpField("unit", "", "`matrix`, `vector`, `link` (collectives) or `copy` (a prefetch's DMA)",
            get=lambda r, lv: r.unit),
    OpField("stream", "", "`comm` for a collective issued on a communication stream, `copy` for a prefetch "
            "from host memory (both may overlap compute); `compute` for every other op, collectives run in line "
            "included", get=lambda r, lv: r.stream),
    OpField("dtype", "", "compute dtype", get=lambda r, lv: r.dtype),
    OpField("shape", "", "matmul shapes are (batch, M, N, K); `BxMxNxK` in the CSV", get=lambda r, lv: _x(r.shape)),
    OpField("start_s", "s", "when its stream and its inputs were ready (its dispatch wait starts)",
            get=lambda r, lv: r.start_s),
    OpField("end_s", "s", "when it ended", get=lambda r, lv: r.end_s),
    OpField("duration_s", "s", "`end_s - start_s` = `compute_s + Σ stall_s + overhead_s`",
            get=lambda r, lv: r.duration_s),
    OpField("flops", "FLOP", "its FLOPs", get=lambda r, lv: r.flops),
    OpField("bytes", "B", "served by each memory level (CSV: `bytes`, their sum, and `bytes_<level>`)",
            csv="level", get=lambda r, lv: r.bytes.get(lv, 0.0) if lv else r.total_bytes),
    OpField("intensity", "FLOP/B", "flops ÷ bytes at the balance level", get=lambda r, lv: r.intensity_at(lv)),
    OpField("intensity_per_level", "FLOP/B", "flops ÷ bytes at each level", csv=None),
    OpField("hits", "B", "per shared cache: [hit bytes, looked-up bytes] (CSV: `hit_rate_<cache>`)", csv="cache",
            get=lambda r, cache: _rate(r.hits.get(cache))),
    OpField("link_bytes", "B", "per link: bytes this device sent over it (collectives)", csv=None),
    OpField("utilization", "fraction", "useful fraction of the unit's peak after tile and wave quantisation",
            get=lambda r, lv: r.utilization),
    OpField("compute_s", "s", "compute unit busy", get=lambda r, lv: r.compute_s),
    OpField("overhead_s", "s", "device not working on it before it starts: waiting for the host to dispatch "
            "it, then the device's `launch_overhead` and, for matmul-like ops, `matmul_overhead`",
            get=lambda r, lv: r.overhead_s),
    OpField("stall_s", "s", "per resource (`memory:<level>`, `link:<topology>` or `link:net`, `sync`): compute idle "
            "waiting on it (CSV: `stall_<resource>_s`)", csv="stall", get=lambda r, key: r.stall_s.get(key, 0.0)),
    OpField("exposed_s", "s", "collectives and copies: how much of their transfers the device's compute stream "
            "waited for (all of them for a collective run in line; none when hidden under compute)",
            get=lambda r, lv: r.exposed_s),
    OpField("bound", "", "the resource that held it up longest", get=lambda r, lv: r.bound),
    OpField("events", "", "simulation events it cost (not in the CSV: replay makes it differ from `--exact`)",
            csv=None),
]


def op_columns(levels: list[str], caches: list[str], stalls: list[str],
               level: str) -> list[tuple[str, Callable[[Any], Any]]]:
    """The per-op CSV's columns, (header, record -> value), from `OP`."""
    out: list[tuple[str, Callable[[Any], Any]]] = []
    for f in OP:
        get = f.get
        if f.csv == "one":
            out.append((f.name, lambda r, g=get: g(r, level)))
        elif f.csv == "level":
            out.append((f.name, lambda r, g=get: g(r, "")))
            out += [(f"{f.name}_{lvl}", lambda r, g=get, lvl=lvl: g(r, lvl)) for lvl in levels]
        elif f.csv == "cache":
            out += [(f"hit_rate_{c}", lambda r, g=get, c=c: g(r, c)) for c in caches]
        elif f.csv == "stall":
            out += [(f"stall_{k.replace(':', '_')}_s", lambda r, g=get, k=k: g(r, k)) for k in stalls]
    return out


def sweep_columns() -> list[str]:
    """The figures a sweep table has per point (after its identity and axes)."""
    return [m.name for m in RUN if m.sweep] + [f"{g}_{m.name}" for g in GROUPS for m in GROUP_COLUMNS]


def _table(metrics: list) -> str:
    lines = ["| field | unit | meaning |", "|---|---|---|"]
    lines += [f"| `{m.name}` | {m.unit} | {m.definition} |" for m in metrics]
    return "\n".join(lines)


def tables() -> dict[str, str]:
    """The Markdown tables docs/outputs.md carries, by marker name."""
    return {
        "summary": _table(RUN + SECTIONS),
        "aggregate": _table(AGGREGATE),
        "sweep": _table([Metric(f"<group>_{m.name}", m.unit, m.definition) for m in GROUP_COLUMNS]),
        "ops": _table(OP),
        "sweep-figures": ", ".join(f"`{m.name}`" for m in RUN if m.sweep),
        "sweep-groups": ", ".join(f"`{g}`" for g in GROUPS),
    }


def render_doc(text: str) -> str:
    """`text` with every `<!-- metrics:NAME -->...<!-- /metrics:NAME -->` block rewritten from the registry."""
    for name, table in tables().items():
        text = re.sub(rf"(<!-- metrics:{name} -->\n)(.*?\n)?(<!-- /metrics:{name} -->)",
                      lambda m, t=table: m.group(1) + t + "\n" + m.group(3), text, flags=re.S)
    return text
