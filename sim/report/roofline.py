"""The roofline of a run: its ops, per op class and phase, on the machine's roofs — the matrix and vector
peaks, and one bandwidth roof per memory level — from a run's op records and hardware context (a
`RunResult`'s, or a saved `--json`'s), so that a plot can be redrawn without running again.

A point is a class's ops in one phase: x its arithmetic intensity at the balance level (FLOPs per byte
moved through the memory level that sets the balance point), y its achieved rate (FLOPs over the time
its ops took, summed over devices); its area is its share of the run's op time. A point under a roof
is held below it by something else (another level, latency, dispatch and launch costs).
"""

from __future__ import annotations

import io
from collections import defaultdict

from sim.config.units import fmt_si
from sim.graph.ops import CLASS_GROUP

#: intensities the roofs are drawn over, FLOP per byte
X_RANGE = (1e-2, 1e4)


def points(ops: list[dict], level: str) -> list[dict]:
    """Per (class, phase) with FLOPs and bytes at `level`: its intensity there, achieved FLOP/s and time."""
    agg: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: {"flops": 0.0, "bytes": 0.0, "time": 0.0})
    for op in ops:
        a = agg[CLASS_GROUP.get(op["op_class"], op["op_class"]), op["phase"]]
        a["flops"] += op["flops"]
        a["bytes"] += op["bytes"].get(level, 0.0)
        a["time"] += op["duration_s"]
    total = sum(a["time"] for a in agg.values()) or 1.0
    return [{"class": cls, "phase": phase, "intensity": a["flops"] / a["bytes"], "flops_per_s": a["flops"] / a["time"],
             "share": a["time"] / total}
            for (cls, phase), a in sorted(agg.items()) if a["flops"] > 0 and a["bytes"] > 0 and a["time"] > 0]


def roofline_png(ops: list[dict], hw: dict, title: str) -> bytes:
    """The plot as PNG bytes (`hw`: the report context's hardware section)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level = hw["balance_level"]
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    xs = [X_RANGE[0] * (X_RANGE[1] / X_RANGE[0]) ** (i / 200) for i in range(201)]
    peak, vector = hw["peak_flops"], hw["vector_flops"]
    ax.plot(X_RANGE, [peak, peak], color="black", lw=2, label=f"matrix peak ({hw['peak_dtype']}), "
            f"{fmt_si(peak, 'FLOP/s')}")
    if vector < peak:
        ax.plot(X_RANGE, [vector, vector], color="black", lw=1, ls="--",
                label=f"vector peak, {fmt_si(vector, 'FLOP/s')}")
    roofs = ["tab:cyan", "tab:olive", "tab:brown", "tab:pink", "tab:red", "tab:purple"]
    for i, (name, mem) in enumerate(hw["memory"].items()):
        bw = mem.get("achievable_bandwidth_bytes_per_s", mem["bandwidth_bytes_per_s"])
        ax.plot(xs, [min(peak, bw * x) for x in xs], lw=2 if name == level else 1, color=roofs[i % len(roofs)],
                label=f"{name} roof, {fmt_si(bw, 'B/s')}" + (" (balance level)" if name == level else ""))
    shapes = {"prefill": "o", "decode": "s", "encode": "D", "forward": "o", "backward": "v", "update": "^"}
    colors = {"GEMM": "tab:blue", "GEMV": "tab:orange", "attention": "tab:green", "other": "dimgray"}
    for p in points(ops, level):
        ax.scatter(p["intensity"], p["flops_per_s"], s=40 + 800 * p["share"], marker=shapes.get(p["phase"], "o"),
                   color=colors.get(p["class"], "tab:purple"), edgecolor="black", alpha=0.8, zorder=3,
                   label=f"{p['class']}, {p['phase']} ({100 * p['share']:.0f}% of op time)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*X_RANGE)
    ax.set_xlabel(f"arithmetic intensity at {level} [FLOP/B]")
    ax.set_ylabel("achieved [FLOP/s]")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", markerscale=0.5)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()

