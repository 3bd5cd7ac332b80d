"""The terminal report: what ran on what, end-to-end figures, memory vs capacity, and the headline
table contrasting GEMM, GEMV, attention and the rest — where the time went and which resource bounds it."""

from __future__ import annotations

import sys
from itertools import takewhile

from rich import box
from rich.console import Console
from rich.table import Table

from sim.config.units import fmt_bytes, fmt_si, fmt_time
from sim.report.context import context
from sim.report.metrics import RUN
from sim.report.metrics import _pct as _pct
from sim.report.summary import summarize

WIDTH = 170  # the report's width where it is not a terminal (a file, a pipe): nothing wraps


def report_console() -> Console:
    """The report's console: the terminal's own width where it prints to one (tables then wrap their
    text and fold their numbers rather than cut them), WIDTH otherwise (the same bytes whatever the
    terminal the command was started from)."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else WIDTH)


class _FittingConsole:
    """Prints tables so that no figure is cut: every column folds instead of ending in an ellipsis."""

    def __init__(self, out: Console):
        self.out = out

    def print(self, *objects, **kwargs) -> None:
        for obj in objects:
            if isinstance(obj, Table):
                for column in obj.columns:
                    column.overflow = "fold"
                    column.no_wrap = False
        self.out.print(*objects, **kwargs)


def _share_columns(summary: dict) -> list[str]:
    """compute, then every memory level / link that any op stalled on, then overhead."""
    keys = {k for c in summary["classes"].values() for k in c["time_share"]}
    stalls = sorted(k for k in keys if k not in ("compute", "overhead"))
    return ["compute", *stalls, "overhead"]


def _label(key: str) -> str:
    return {"compute": "busy", "overhead": "overhead"}.get(key, key.replace("memory:", "stall ").replace(
        "link:", "link "))


def _breakdown_table(title: str, rows: dict[str, dict], cols: list[str], peak: float, balance: float,
                     level: str) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left", pad_edge=False)
    for name in ("", "time", "share", "FLOPs", f"{level} bytes", "FLOP/B", "FLOP/s", "% peak", f"{level} B/s"):
        t.add_column(name, justify="left" if not name else "right", no_wrap=True)
    for key in cols:
        t.add_column(_label(key), justify="right", no_wrap=True)
    t.add_column("bound", no_wrap=True)
    for name, a in rows.items():
        ai = a["intensity_flop_per_byte"]
        side = "" if ai is None else ("<" if ai < balance else ">")
        t.add_row(
            name, fmt_time(a["time_s"]), _pct(a.get("share_of_total", 1.0)), fmt_si(a["flops"], "FLOP"),
            fmt_bytes(a["bytes_at_level"]), "-" if ai is None else f"{ai:.1f} {side}",
            fmt_si(a["achieved_flops_per_s"], "FLOP/s"), _pct(a["achieved_flops_per_s"] / peak),
            fmt_si(a["achieved_bytes_per_s_at_level"], "B/s"),
            *[_pct(a["time_share"].get(k, 0.0)) for k in cols],
            a["bound"].replace("memory:", "").replace("link:", "link "),
        )
    return t


def _traffic_table(summary: dict, levels: list[str]) -> Table:
    """Bytes each memory level served, the intensity at that level, and shared-cache hit rates."""
    t = Table(title="Memory traffic by level  (bytes served; FLOP/B at that level; hit rate of shared caches)",
              box=box.SIMPLE_HEAVY, title_justify="left", pad_edge=False)
    t.add_column("")
    caches = sorted({c for a in summary["classes"].values() for c in a["hit_rate"]})
    for lvl in levels:
        t.add_column(f"{lvl} bytes", justify="right", no_wrap=True)
        t.add_column(f"{lvl} FLOP/B", justify="right", no_wrap=True)
    for c in caches:
        t.add_column(f"{c} hits", justify="right", no_wrap=True)
    rows = {**summary["classes"], "all": {**summary, "hit_rate": summary["hit_rate"]}}
    for name, a in rows.items():
        cells = []
        for lvl in levels:
            b = a["bytes_per_level"].get(lvl, 0.0)
            ai = a["intensity_per_level"].get(lvl)
            cells += [fmt_bytes(b) if b else "-", f"{ai:.1f}" if ai else "-"]
        cells += [_pct(a["hit_rate"][c]) if a["hit_rate"].get(c) is not None else "-" for c in caches]
        t.add_row(name, *cells)
    return t


def render(result, console: Console | None = None, top: int = 10) -> None:
    s = summarize(result, top=top)
    meta = context(result)
    wl, hw, mem = meta["workload"], meta["hardware"], meta["memory"]
    out = _FittingConsole(console or report_console())
    p = wl["precision"]

    out.print(f"[bold]memwall[/bold] — {wl['name']}  on  {hw['name']}")
    if meta.get("overrides"):
        out.print(f"  with --set: {', '.join(meta['overrides'])} (the figures below are of these settings)")
    out.print(
        f"  model: {wl['family']}, {wl['layers']} layers, hidden {wl['hidden']}, {wl['heads']} heads "
        f"({wl['kv_heads']} KV), ffn {wl['ffn']}, vocab {wl['vocab']}; "
        f"weights {p['weights']}, activations {p['activations']}, KV cache {p['kv_cache']}"
    )
    tokens = f"prompt {wl['prompt_tokens']}" + (f", {wl['new_tokens']} new tokens" if wl["new_tokens"] else "")
    par = hw.get("parallelism", {})
    split = [f"{k} {par[k]}" for k in ("tensor", "pipeline", "data") if par.get(k, 1) > 1]
    if par.get("microbatches", 1) > 1:
        split.append(f"{par['microbatches']} micro-batches ({par['schedule']})")
    out.print(f"  scenario: {wl['phase']}, batch {wl['batch']}, {tokens}" + (f"; {', '.join(split)}" if split else ""))
    def level(n: str, m: dict) -> str:
        peak, got = m["bandwidth_bytes_per_s"], m.get("achievable_bandwidth_bytes_per_s", m["bandwidth_bytes_per_s"])
        achievable = f" ({fmt_si(got, 'B/s')} achievable)" if got < peak else ""
        return f"{n} {fmt_bytes(m['capacity_bytes'])} @ {fmt_si(peak, 'B/s')}{achievable}"

    levels = ", ".join(level(n, m) for n, m in hw["memory"].items())
    fixed = "".join(f", {label} {fmt_time(hw[key])}" for label, key in
                    (("launch", "launch_overhead_s"), ("matmul fixed", "matmul_overhead_s")) if hw.get(key))
    out.print(
        f"  hardware: {fmt_si(hw['peak_flops'], 'FLOP/s')} {hw['peak_dtype']} matrix, "
        f"{fmt_si(hw['vector_flops'], 'FLOP/s')} vector, dispatch {fmt_time(hw['dispatch_overhead_s'])}/op"
        f"{f' ({len(own)} kernels with their own)' if (own := hw.get('dispatch_by_kernel_s')) else ''}{fixed}"
    )
    out.print(f"  memory: {levels}")
    fuse = hw.get("fuse") or {}
    fused = "; ".join(f"{', '.join(names)} into {'its' if len(names) == 1 else 'their'} {way}"
                      for way in ("producer", "consumer") if (names := [k for k, w in fuse.items() if w == way]))
    fused = f"fuses {fused} (inference passes)" if fused else ""
    threads = f"; {hw['threads']} thread{'s' if hw['threads'] > 1 else ''}" if hw.get("threads") else ""
    if hw.get("runtime"):
        out.print(f"  runtime: {hw['runtime']}; its costs on {hw.get('platform', 'this platform')}{threads}"
                  + (f"; {fused}" if fused else ""))
    elif fused or threads:  # a hardware file's own device.fuse / device.threads
        out.print("  software: " + "; ".join(x for x in (fused, threads.removeprefix("; ")) if x))
    balance = hw["balance_point_flop_per_byte"]
    achievable = hw.get("achievable_balance_point_flop_per_byte", balance)
    sustained = f"; {achievable:.1f} FLOP/B sustained / achievable" if abs(achievable - balance) > 0.05 else ""
    out.print(f"  balance point: {balance:.1f} FLOP/B ({hw['peak_dtype']} peak / {hw['balance_level']} bandwidth"
              f"{sustained})")

    out.print()
    many = s.get("devices", 1) > 1
    e2e = Table(title="End to end", box=box.SIMPLE_HEAVY, title_justify="left", pad_edge=False, show_header=False,
                caption=(f"times are wall-clock; FLOPs, bytes, ops and communication are summed over the "
                         f"{s['devices']} devices" if many else None), caption_justify="left")
    e2e.add_column("figure")
    e2e.add_column("value", justify="right")
    for metric in RUN:  # the registry's rows, in its order
        row = metric.row(s, meta) if metric.row is not None else None
        if row is not None:
            e2e.add_row(*row)
    level = hw["balance_level"]
    out.print(e2e)

    fp = Table(title="Memory footprint vs capacity" + (" (per device: the fullest)" if many else ""),
               box=box.SIMPLE_HEAVY, title_justify="left", pad_edge=False)
    for col in ("", "bytes", "placed in"):
        fp.add_column(col, justify="right" if col == "bytes" else "left")
    for label, key, kind in (("weights", "weights_bytes", "weight"), ("gradients", "gradients_bytes", "gradient"),
                             ("optimizer state (with master weights)", "optimizer_bytes", "optimizer_state"),
                             ("KV cache", "kv_cache_bytes", "kv_cache"),
                             ("activations (peak live)", "activations_bytes", "activation")):
        if kind in ("gradient", "optimizer_state") and not mem.get(key):
            continue
        placed = mem["home"].get(kind, "-")
        for inner, nbytes in mem.get("partial_bytes", {}).get(kind, {}).items():  # the part served from nearer
            placed = f"{inner} {fmt_bytes(nbytes)}, the rest {placed}"
        fp.add_row(label, fmt_bytes(mem[key]), placed)
    for name, nbytes in mem.get("reserved_bytes", {}).items():
        fp.add_row("reserved by the runtime (outside the graph)", fmt_bytes(nbytes), name)
    for name, cap in mem["capacity_bytes"].items():
        used = mem["used_bytes"][name]
        fp.add_row(f"{name} used / capacity", f"{fmt_bytes(used)} / {fmt_bytes(cap)}", _pct(used / cap))
    out.print(fp)

    cols = _share_columns(s)
    peak = hw["peak_flops"]
    # the marks compare with what the machine sustains (the datasheet ratio when no efficiency is given)
    mark = "sustained balance point" if sustained else "balance point"
    out.print(_breakdown_table(
        f"Where the time goes, by op class  (FLOP/B at {level}: < below / > above the {mark}, "
        f"{achievable:.0f} FLOP/B; % peak of matrix peak)",
        s["classes"], cols, peak, achievable, level))
    out.print(_traffic_table(s, list(hw["memory"])))
    phases = {k: {**v, "share_of_total": v["time_s"] / s["device_time_s"]} for k, v in s["phases"].items()}
    out.print(_breakdown_table("By phase", phases, cols, peak, achievable, level))
    tops = {f"{a['phase']} {a['kind']} x{a['ops']}": a for a in s["top_ops"]}
    if tops:  # --top 0: no table
        out.print(_breakdown_table(f"Top {len(tops)} operators (summed over layers and steps)", tops, cols, peak,
                                   achievable, level))


def render_comparison(results: list, labels: list[str], console: Console | None = None) -> None:
    """The end-to-end table of several runs side by side (one column per run, as `render` prints each)
    and, for each figure with a number, every run's over the first's."""
    out = _FittingConsole(console or report_console())
    runs = [(summarize(r, top=0), context(r)) for r in results]
    t = Table(title=f"{runs[0][1]['workload']['name']}: {' vs '.join(labels)}", box=box.SIMPLE_HEAVY,
              title_justify="left", pad_edge=False)
    t.add_column("figure")
    for label in labels:
        t.add_column(label, justify="right")
    for label in labels[1:]:
        t.add_column(f"{label} / {labels[0]}", justify="right")
    for metric in RUN:
        rows = [metric.row(s, c) if metric.row is not None else None for s, c in runs]
        if all(row is None for row in rows):
            continue
        names = [row[0] for row in rows if row is not None]
        cells = [row[1] if row else "-" for row in rows]
        same = len(set(names)) == 1
        if same:
            name = names[0]
        else:  # a label with each run's own figures (its level, its dispatch cost): theirs go in their cells
            words = [n.split(" ") for n in names]
            common = [w[0] for w in takewhile(lambda w: len(set(w)) == 1 and not w[0].startswith("("), zip(*words))]
            name = " ".join(common[:-1] if common and common[-1] in ("at", "of", "on", "by", "x") else common)
            name = name or names[0]
            own = [None if row is None else " ".join(row[0].split(" ")[len(common):]).strip("()") for row in rows]
            cells = [f"{cell} ({mine})" if mine else cell for cell, mine in zip(cells, own)]
        values = [s.get(metric.name) for s, _ in runs]
        # a cell pairing two figures (FLOPs / bytes at a level each run names) has no single ratio
        paired = any(" / " in str(cell) for cell in cells)
        ratios = []
        for v in values[1:]:
            base = values[0]
            numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (v, base))
            ratios.append(f"{v / base:.2f}x" if numeric and base and not paired else "")
        t.add_row(name, *cells, *ratios)
    out.print(t)
