"""Where a framework's forward pass spends device time, op by op, from the Chrome traces that
`python bench/gpu_measure.py --only trace` writes (each op of the pass inside a profiler range named
as memwall's graph names it).

    python bench/trace_ops.py out/traces/llama2-7b-b1-decode-1024.json.gz [--kernels] [--predicted CSV]

Prints, per op, how many CUDA kernels one pass launches for it and their summed device time (mean
over the traced passes), with `--kernels` which kernels, and with `--predicted` memwall's time for the
same op from a `python -m sim run ... --csv CSV` of the same pass. Each kernel is given to the
innermost range open when the host launched it (its launch and the kernel share a correlation id).
Kernel times are the profiler's, of eager launches: they leave out the gaps between kernels that a
graph replay still has, which memwall counts in each op's launch.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import csv
import gzip
import json
import statistics


def attribute(path: str) -> tuple[int, dict[str, list[tuple[str, float]]]]:
    """(passes, {op: [(kernel name, seconds), ...] over all passes})."""
    with gzip.open(path) if path.endswith(".gz") else open(path, "rb") as fh:
        events = json.load(fh)["traceEvents"]
    ranges = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events if e.get("cat") == "user_annotation")
    launch_ts = {e["args"]["correlation"]: e["ts"] for e in events
                 if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    starts = [r[0] for r in ranges]
    ops: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
    for k in (e for e in events if e.get("cat") == "kernel"):
        ts = launch_ts.get(k["args"].get("correlation"))
        owner = "(outside any op)"
        if ts is not None:  # innermost range holding the launch: the latest-starting one that still spans it
            for _start, end, name in reversed(ranges[:bisect.bisect_right(starts, ts)]):
                if end >= ts and name != "pass":
                    owner = name
                    break
        ops[owner].append((k["name"], k["dur"] * 1e-6))
    return sum(1 for r in ranges if r[2] == "pass"), ops


def short(kernel: str) -> str:
    """A kernel's name without its template arguments and parameter list."""
    name = kernel.split("(")[0]
    depth, out = 0, []
    for ch in name:
        depth += ch == "<"
        if depth == 0:
            out.append(ch)
        depth -= ch == ">"
    return "".join(out).replace("void ", "").split("::")[-1][:60]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace", nargs="+")
    p.add_argument("--kernels", action="store_true", help="list each op's kernels too")
    p.add_argument("--predicted", metavar="CSV", help="memwall's per-op CSV of the same pass (`sim run --csv`)")
    args = p.parse_args()
    predicted: dict[str, float] = collections.defaultdict(float)
    if args.predicted:
        with open(args.predicted) as fh:
            for row in csv.DictReader(fh):
                predicted[row["kind"]] += float(row["duration_s"])
    for path in args.trace:
        passes, ops = attribute(path)
        print(f"\n{path}: {passes} passes")
        print(f"{'op':18s} {'kernels/pass':>12s} {'device us/pass':>15s} {'us/kernel':>10s}"
              + (f" {'memwall us':>11s}" if args.predicted else ""))
        total_k = total_s = 0.0
        for op, ks in sorted(ops.items(), key=lambda kv: -sum(d for _, d in kv[1])):
            per_pass_s = sum(d for _, d in ks) / passes
            total_k += len(ks) / passes
            total_s += per_pass_s
            per_kernel_s = per_pass_s * passes / len(ks)
            print(f"{op:18s} {len(ks) / passes:12.1f} {per_pass_s * 1e6:15.1f} {per_kernel_s * 1e6:10.2f}"
                  + (f" {predicted.get(op, 0.0) * 1e6:11.1f}" if args.predicted else ""))
            if args.kernels:
                by_name = collections.defaultdict(list)
                for name, d in ks:
                    by_name[short(name)].append(d)
                for name, ds in sorted(by_name.items(), key=lambda kv: -sum(kv[1])):
                    print(f"    {name:60s} x{len(ds) / passes:6.1f}  median {statistics.median(ds) * 1e6:7.2f} us")
        print(f"{'all':18s} {total_k:12.1f} {total_s * 1e6:15.1f} {'':10s}"
              + (f" {sum(predicted.values()) * 1e6:11.1f}" if args.predicted else ""))


if __name__ == "__main__":
    main()
