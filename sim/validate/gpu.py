"""A GPU's hardware-model figures, and its runtimes' figures, from memwall's own GPU microbenchmarks (the
`microbenchmarks` that `bench/gpu_measure.py` writes into sim/data/measured-*.yaml), by the engine's
formulas. The shipped model of that GPU and the shipped runtimes' `cuda` sections take these figures,
and tests hold them equal: nothing is tuned by hand, and none of them comes from the cases `validate`
then predicts."""

from __future__ import annotations

import statistics

#: the largest copy taken: the 1 GiB copy replayed from a graph ran at 2.7 TB/s where the same copy
#: outside a graph reached 4.2 TB/s (a graph's memcpy node, not the memory), so it is left out
LARGEST_COPY = 256 << 20
#: the tiny ops `bench/gpu_measure.py` times as its forward pass runs them, by the graph kernel each stands
#: for (its linear is the matmul). Eager PyTorch launches every kernel of an op (SwiGLU's activation and
#: product, RoPE on q and k in 14 kernels, the KV-cache writes and fused attention); torch.compile fuses
#: each op's elementwise kernels into one, as a serving runtime does
#: (`compiled_tiny_op_in_graph_s`)
TINY_KERNELS = {"add": "add", "gelu": "gelu", "silu": "silu", "layer_norm": "layernorm", "rms_norm": "rmsnorm",
                "softmax": "softmax", "rope": "rope", "sdpa": "attention"}


def gpu_figures(micro: dict, dram_bandwidth: float) -> dict:
    """The hardware's figures:
    - `l2_latency`, `dram_latency`: a pointer chase over a buffer the L2 holds, and over the largest;
    - `efficiency_by_size`: cold copies moving S bytes each way take launch + DRAM latency +
      2 S / (bandwidth x efficiency), as the engine times them: solved for the efficiency.
    Rounded as a hardware file writes them (10 ns, two decimals)."""
    chase = {int(size): t for size, t in micro["load_latency_s_by_bytes"].items()}
    launch = round(micro["tiny_kernel_in_graph_s"], 7)
    dram_latency = round(chase[max(chase)], 8)
    efficiency = {}
    for size, t in sorted(micro["copy_s_by_bytes"].items()):
        size = int(size)
        if size <= LARGEST_COPY:
            efficiency[size] = round(min(1.0, 2 * size / (dram_bandwidth * (t - launch - dram_latency))), 2)
    return {"l2_latency": round(chase[min(chase)], 8), "dram_latency": dram_latency,
            "efficiency_by_size": efficiency}


def runtime_figures(micro: dict, runtime: str) -> dict:
    """A runtime's figures on this GPU (`runtime`: "compiled", torch.compile's kernels; "eager", eager
    PyTorch's):
    - `launch_overhead`: a 1-element kernel replayed from a CUDA graph (nothing left but the launch);
    - `matmul_overhead`: a 1 x 64 x 64 linear replayed from a graph, less the launch (a cuBLAS call
      either way); `kernel_fixed`, the same for each other op timed on a tiny input as the runtime runs
      it (add, GELU, SwiGLU, the norms, softmax, RoPE, and the KV-cache write with fused attention over
      16 keys): what remains of an op with nothing to do beyond one launch (an op of several kernels
      keeps the others' launches); `row_element`, the least-squares slope of a norm's time on one row
      over the row's width (64 - 8192 elements);
    - eager only, `dispatch_overhead`: one tiny kernel called eagerly, per call (the host's cost).
    Rounded as a runtime file writes them (0.1 us, 0.01 ns)."""
    launch = round(micro["tiny_kernel_in_graph_s"], 7)
    tiny = micro["tiny_op_in_graph_s" if runtime == "eager" else "compiled_tiny_op_in_graph_s"]
    out = {"launch_overhead": launch, "matmul_overhead": round(micro["tiny_op_in_graph_s"]["linear"] - launch, 7),
           "kernel_fixed": kernel_fixed(tiny, launch), "row_element": row_element(micro, runtime)}
    if runtime == "eager":
        out["dispatch_overhead"] = round(micro["tiny_kernel_eager_s"], 7)
    return out


def kernel_fixed(tiny: dict[str, float], launch: float) -> dict[str, float]:
    """Each graph kernel's fixed time: its tiny op's time in a graph less one launch."""
    return {kernel: round(max(0.0, tiny[name] - launch), 7) for name, kernel in TINY_KERNELS.items() if name in tiny}


#: the row-wise reductions `bench/gpu_measure.py` times by width, by graph kernel. Not softmax: eager
#: PyTorch's ran a 4096-wide row faster than a 2048-wide one (another kernel above some width), no line
ROW_KERNELS = {"layer_norm": "layernorm", "rms_norm": "rmsnorm"}


def row_element(micro: dict, framework: str) -> dict[str, float]:
    """Per row-wise kernel, seconds per element of one row (`row_op_in_graph_s`: the slope of a least-
    squares line through its times by width), rounded to 0.01 ns as a hardware file writes it."""
    rows = (micro.get("row_op_in_graph_s") or {}).get(framework, {})
    out = {}
    for name, kernel in ROW_KERNELS.items():
        if name in rows:
            widths, times = zip(*((float(w), t) for w, t in rows[name].items()))
            out[kernel] = round(max(0.0, statistics.linear_regression(widths, times).slope), 11)
    return out
