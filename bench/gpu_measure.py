"""Measure a CUDA GPU with PyTorch and write the results as validation rows for `python -m sim validate`.

    python bench/gpu_measure.py --hardware h200-sxm --out sim/data/measured-h200.yaml

Not part of memwall's install or tests (it needs PyTorch and a GPU). What it times, all in bf16 with
device events, after warm-up, as the median over repeated replays:
  * microbenchmarks (written to the file's `microbenchmarks`, not predicted): cold square GEMVs of
    1 MiB - 1 GiB of weights (the HBM's efficiency by size, as `calibrate` measures it on a CPU), copies
    (4 GiB, and 256 KiB - 1 GiB from cold buffers in a graph), row sums (reads) by size, a Triton
    streaming read of 256 MiB by 1 .. 4 x SMs thread blocks, a pointer chase (latency) over 4 MiB - 1 GiB,
    an 8192^3 matmul, a 1-element kernel replayed from a graph and launched eagerly (`--only tiny`
    with the next), each op of the forward pass on a tiny model as eager PyTorch runs it and through
    torch.compile (add, GELU, SwiGLU, norms, softmax, RoPE, a 64 x 64 linear, the KV-cache write and
    attention over 16 keys; with the kernels each launches) and on one token of GPT-2 and Llama-2 7B,
    and (`--only rows`) the norms and softmax on one row of 64 - 8192 elements;
  * matmuls `y = x W^T` (PyTorch's F.linear layout, cuBLAS) at the shapes of GPT-2 and Llama layers and
    a sweep over M, captured in a CUDA graph over enough copies of the operands that each one comes
    from DRAM (cold caches, as in a decode step);
  * whole forward passes of GPT-2 and Llama-2 (random weights, one kernel per op where PyTorch has
    one: fused attention through scaled_dot_product_attention, a static KV cache), each captured in a
    CUDA graph and replayed: single decode steps at a given context and batch, prefills, and the
    headline GPT-2 generate (512-token prompt + 64 tokens) as one graph per forward pass replayed in order;
  * the batch-1 decode steps of GPT-2 and Llama-2 7B again through torch.compile (fused elementwise ops).
Each model row records the CUDA kernels one pass launches (PyTorch profiler). `--only trace` (never
by default) writes profiler traces of eager passes, each op in a range named as memwall's graph names
it, for bench/trace_ops.py. `--update` keeps what --out holds except the parts measured now.
`--smoke` runs tiny shapes on the CPU to check the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # one line, not a traceback: this script measures a GPU through PyTorch
    raise SystemExit("bench/gpu_measure.py needs PyTorch (pip install -e '.[torch]') and a CUDA GPU") from None
import yaml

DT = torch.bfloat16
L2_BYTES = 64 << 20  # larger than any current GPU's L2 (H100/H200: 50 MiB): operands rotate past it


# -- timing ----------------------------------------------------------------------------------------
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int) -> float:
    """Median seconds of one call of `fn` over `reps` calls, timed with device events (host clock on CPU)."""
    fn()
    sync()
    out = []
    for _ in range(reps):
        if torch.cuda.is_available():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(out)


def graphed(body):
    """`body` captured in a CUDA graph (a replay launches all its kernels at once), or itself on CPU."""
    if not torch.cuda.is_available():
        return body
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up outside the capture: cuBLAS picks and loads its kernels
        body()
    torch.cuda.current_stream().wait_stream(s)
    sync()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        body()
    sync()
    return g.replay


# -- microbenchmarks -------------------------------------------------------------------------------
def microbenchmarks(dev: str, smoke: bool) -> dict:
    n = (1 << 20) if smoke else (2 << 30)
    src = torch.empty(n // 2, dtype=DT, device=dev).normal_()
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src), 5 if smoke else 20)
    size = 256 if smoke else 8192
    a = torch.randn(size, size, dtype=DT, device=dev)
    b = torch.randn(size, size, dtype=DT, device=dev)
    mm_s = timed(lambda: a @ b, 3 if smoke else 20)
    sizes = [1 << p for p in range(18, 22 if smoke else 31, 2)]  # 256 KiB .. 1 GiB
    gemv_sides = [256, 512] if smoke else [724, 1448, 2896, 5793, 11585, 23170]  # 1 MiB .. 1 GiB of bf16
    return {
        "gemv_s_by_weight_bytes": {n * n * 2: matmul_seconds(1, n, n, dev, smoke) for n in gemv_sides},
        "read_bytes_per_s_by_programs": read_by_programs(dev, smoke),
        "load_latency_s_by_bytes": latency_by_bytes(dev),
        **launch_seconds(dev, smoke),  # just before the ops it is subtracted from, as `--only tiny` does
        **tiny_op_seconds(dev, smoke),
        **row_op_seconds(dev, smoke),
        "copy_s_by_bytes": {n: rotating(n, lambda a, b: b.copy_(a), dev, smoke) for n in sizes},
        "read_s_by_bytes": {n: rotating(n, lambda a, b: torch.sum(a.view(-1, 1024), dim=1, out=b[:a.numel() // 1024]),
                                        dev, smoke) for n in sizes},
        "copy_read_plus_write_bytes_per_s": 2 * src.numel() * src.element_size() / copy_s,
        "copy_bytes": 2 * src.numel() * src.element_size(),
        f"matmul_{size}_bf16_flop_per_s": 2 * size**3 / mm_s,
    }


def launch_seconds(dev: str, smoke: bool) -> dict[str, float]:
    """A 1-element kernel, 200 times, replayed from a graph and launched eagerly: the launch alone."""
    x = torch.zeros(1, device=dev)
    kernels = 200

    def tiny() -> None:
        for _ in range(kernels):
            x.add_(1.0)

    # one graph's replays agree to a few ns, but graphs captured afresh differ by up to 40% (1.07 - 1.53 us
    # seen on one H200 within a minute): the median over several graphs
    graphs = 2 if smoke else 7
    return {"tiny_kernel_in_graph_s": statistics.median(timed(graphed(tiny), 5 if smoke else 20) / kernels
                                                        for _ in range(graphs)),
            "tiny_kernel_eager_s": timed(tiny, 5 if smoke else 20) / kernels}


def framework_ops(dev: str, hidden: int, heads: int, ffn: int, keys: int) -> dict:
    """One decode token's ops as `Model.forward` runs them (every kernel the framework launches for
    each), on a model of `hidden` / `heads` / `ffn` with `keys` cached keys; `linear` is one matmul."""
    d = hidden // heads
    model = Model.__new__(Model)  # its norm and rope alone: no weights
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
    ang = torch.outer(torch.arange(keys + 1, device=dev, dtype=torch.float32), inv)
    model.cos, model.sin = ang.cos().to(DT), ang.sin().to(DT)
    x, y = (torch.randn(1, 1, hidden, dtype=DT, device=dev) for _ in range(2))
    w, wb = (torch.randn(hidden, dtype=DT, device=dev) for _ in range(2))
    g, u = (torch.randn(1, 1, ffn, dtype=DT, device=dev) for _ in range(2))
    m = torch.randn(hidden, hidden, dtype=DT, device=dev)
    q, k, v = (torch.randn(1, 1, heads, d, dtype=DT, device=dev) for _ in range(3))
    kc, vc = (torch.zeros(1, heads, keys + 1, d, dtype=DT, device=dev) for _ in range(2))

    def attention():  # the cache write and the fused attention, as `Model.forward` does them
        kc[:, :, keys:keys + 1] = k.transpose(1, 2)
        vc[:, :, keys:keys + 1] = v.transpose(1, 2)
        return F.scaled_dot_product_attention(q.transpose(1, 2), kc, vc)

    return {
        "add": lambda: x + y,
        "gelu": lambda: F.gelu(g, approximate="tanh"),
        "silu": lambda: F.silu(g) * u,  # SwiGLU: the activation and the gate's product
        "layer_norm": lambda: F.layer_norm(x, (hidden,), w, wb),
        "rms_norm": lambda: F.rms_norm(x, (hidden,), w),
        "softmax": lambda: torch.softmax(x, -1),
        "rope": lambda: (Model.rope(model, q, keys), Model.rope(model, k, keys)),
        "linear": lambda: F.linear(x, m),
        "sdpa": attention,
    }


def framework_op_seconds(ops: dict, dev: str, smoke: bool) -> tuple[dict[str, float], dict[str, int]]:
    """Each op replayed 100 times from a graph: seconds per call, and the CUDA kernels one call launches."""
    seconds, kernels = {}, {}
    for name, op in ops.items():
        def body(op=op) -> None:
            for _ in range(100):
                op()
        seconds[name] = statistics.median(timed(graphed(body), 3 if smoke else 10) / 100  # over graphs, as
                                          for _ in range(2 if smoke else 5))            # `launch_seconds`
        kernels[name] = kernels_per_pass(lambda _t, _p, op=op: op(), None, 0)
    return seconds, kernels


def tiny_op_seconds(dev: str, smoke: bool) -> dict:
    """Per op, as the forward pass runs it, on a tiny model (hidden 64, one head, 64-wide FFN, 16 cached
    keys): what remains of its kernels when they have nothing to do (launch, ramp-up, chains of
    dependent memory accesses); and the same ops on one token of GPT-2 and Llama-2 7B, for comparison."""
    tiny, tiny_kernels = framework_op_seconds(framework_ops(dev, 64, 1, 64, 16), dev, smoke)
    at_width = {}
    for name, (hidden, heads, ffn) in {"gpt2": (768, 12, 3072), "llama2-7b": (4096, 32, 11008)}.items():
        if smoke:
            hidden, heads, ffn = hidden // 16, heads // 4, ffn // 16
        at_width[name] = framework_op_seconds(framework_ops(dev, hidden, heads, ffn, 1024), dev, smoke)[0]
    compiled, compiled_kernels = compiled_op_seconds(dev, smoke)
    return {"tiny_op_in_graph_s": tiny, "tiny_op_kernels": tiny_kernels,
            "tiny_op_in_graph_median_s": statistics.median(tiny.values()),
            "one_token_op_in_graph_s": at_width,
            "compiled_tiny_op_in_graph_s": compiled, "compiled_tiny_op_kernels": compiled_kernels}


#: row widths the row-wise reductions are timed at (one row: a decode token's norm, or one score row)
ROW_WIDTHS = (64, 512, 1024, 2048, 4096, 8192)


def row_op_seconds(dev: str, smoke: bool) -> dict:
    """Layer norm, RMSNorm and softmax on one row of each of ROW_WIDTHS elements, eager and through
    torch.compile, replayed from a graph: one thread block reduces the row, so the time grows with the
    width even where the bytes are nothing (sim/validate/gpu.py takes the slope as each kernel's
    `row_element`)."""
    out: dict[str, dict[str, dict[int, float]]] = {"eager": {}, "compiled": {}}
    for width in ROW_WIDTHS[:3] if smoke else ROW_WIDTHS:
        x = torch.randn(1, width, dtype=DT, device=dev)
        w, b = (torch.randn(width, dtype=DT, device=dev) for _ in range(2))
        ops = {"layer_norm": lambda x=x, w=w, b=b: F.layer_norm(x, (x.shape[-1],), w, b),
               "rms_norm": lambda x=x, w=w: F.rms_norm(x, (x.shape[-1],), w),
               "softmax": lambda x=x: torch.softmax(x, -1)}
        for framework in ("eager", "compiled"):
            fns = ops if framework == "eager" else {n: torch.compile(f, dynamic=False) for n, f in ops.items()}
            for name, t in framework_op_seconds(fns, dev, smoke)[0].items():
                out[framework].setdefault(name, {})[width] = t
    return {"row_op_in_graph_s": out}


def compiled_op_seconds(dev: str, smoke: bool) -> tuple[dict[str, float], dict[str, int]]:
    """The tiny ops again, each through torch.compile (Inductor fuses an op's elementwise kernels into
    one, as it does in the compiled forward pass); the linear stays cuBLAS there, so it is left out.
    An op Inductor fails on is left out too."""
    ops = {name: op for name, op in framework_ops(dev, 64, 1, 64, 16).items() if name != "linear"}
    compiled = {}
    for name, op in ops.items():
        fn = torch.compile(op, dynamic=False)
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - report and go on: one op must not stop the run
            print(f"torch.compile failed on {name}: {type(exc).__name__}: {exc}"[:300], flush=True)
            continue
        compiled[name] = fn
    return framework_op_seconds(compiled, dev, smoke)


try:  # Triton, where the GPU machine has it: one streaming-read kernel with a chosen number of blocks
    import triton
    import triton.language as tl

    @triton.jit
    def triton_read(x_ptr, out_ptr, per_program, BLOCK: tl.constexpr):
        base = tl.program_id(0).to(tl.int64) * per_program
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(0, per_program, BLOCK):
            acc += tl.load(x_ptr + base + i + tl.arange(0, BLOCK)).to(tl.float32)
        tl.store(out_ptr + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), acc)

    @triton.jit
    def triton_chase(next_ptr, out_ptr, start, steps):
        idx = tl.load(next_ptr + start)  # every load waits for the one before it
        for _ in range(steps):
            idx = tl.load(next_ptr + idx)
        tl.store(out_ptr, idx)
except ImportError:
    triton_read = triton_chase = None


def latency_by_bytes(dev: str) -> dict[int, float]:
    """Seconds per dependent load (one thread chasing a random cycle of 256-byte-spaced slots) over
    buffers of 4 MiB (L2-resident) to 1 GiB (HBM): the memory latency one kernel sees. Empty without
    Triton and a GPU; an error is recorded, not raised."""
    if triton_chase is None or dev != "cuda":
        return {}
    out = {}
    for nbytes in (4 << 20, 16 << 20, 256 << 20, 1 << 30):
        try:
            stride = 32  # int64 slots: 256 B apart, a new cache line every hop
            slots = nbytes // 8 // stride
            # past the L2, the walk must touch more lines than it holds, or a repeat finds them there
            steps = 20000 if nbytes <= L2_BYTES else min(slots, 1 << 20)
            order = torch.randperm(slots, device=dev) * stride
            nxt = torch.zeros(nbytes // 8, dtype=torch.int64, device=dev)
            nxt[order] = torch.roll(order, -1)  # one cycle through every slot, in random order
            sink = torch.zeros(1, dtype=torch.int64, device=dev)
            start = int(order[0])
            secs = timed(lambda nxt=nxt, sink=sink, start=start, steps=steps:
                         triton_chase[(1,)](nxt, sink, start, steps, num_warps=1), 3)
            out[nbytes] = secs / steps
        except Exception as e:  # noqa: BLE001 - a failed microbenchmark must not lose the run
            out[nbytes] = f"failed: {type(e).__name__}: {e}"[:200]
    return out


def read_by_programs(dev: str, smoke: bool) -> dict[int, float]:
    """Bytes/s a streaming read reaches with g thread blocks (Triton programs), each summing its own
    contiguous slice of one 256 MiB buffer: how the HBM bandwidth an op sees grows with the SMs it
    occupies. Empty without Triton and a GPU."""
    if triton_read is None or dev != "cuda":
        return {}
    block, total = 4096, 128 << 20  # elements: 256 MiB of bf16
    x = torch.empty(total, dtype=DT, device=dev).normal_()
    units = torch.cuda.get_device_properties(0).multi_processor_count
    out = {}
    for g in sorted({1, 2, 4, 8, 16, 32, 64, units // 2, units, 2 * units, 4 * units}):
        per = total // g // block * block
        sink = torch.empty(g * block, dtype=torch.float32, device=dev)
        secs = timed(lambda g=g, per=per, sink=sink: triton_read[(g,)](x, sink, per, BLOCK=block, num_warps=8), 5)
        out[g] = g * per * 2 / secs
    return out


def rotating(nbytes: int, kernel, dev: str, smoke: bool) -> float:
    """Seconds of one `kernel(src, dst)` over `nbytes` of bf16 from cold buffers (a graph over enough
    distinct buffers to pass the L2 several times)."""
    copies = 2 if smoke else max(2, min(256, math.ceil(4 * L2_BYTES / nbytes)))
    srcs = [torch.empty(nbytes // 2, dtype=DT, device=dev).normal_() for _ in range(copies)]
    dsts = [torch.empty(nbytes // 2, dtype=DT, device=dev) for _ in range(copies)]

    def body() -> None:
        for a, b in zip(srcs, dsts):
            kernel(a, b)

    return timed(graphed(body), 3 if smoke else 10) / copies


# -- matmuls ---------------------------------------------------------------------------------------
def matmul_seconds(m: int, n: int, k: int, dev: str, smoke: bool) -> float:
    """One y = x W^T, (m x k) by (n x k)^T, from cold operands: a graph of `copies` matmuls over
    distinct buffers whose total is several times the L2."""
    per = (m * k + n * k + m * n) * 2
    copies = 2 if smoke else max(2, min(256, math.ceil(4 * L2_BYTES / per)))
    xs = [torch.randn(m, k, dtype=DT, device=dev) for _ in range(copies)]
    ws = [torch.randn(n, k, dtype=DT, device=dev) for _ in range(copies)]
    ys = [torch.empty(m, n, dtype=DT, device=dev) for _ in range(copies)]

    def body() -> None:
        for x, w, y in zip(xs, ws, ys):
            torch.mm(x, w.t(), out=y)

    return timed(graphed(body), 3 if smoke else 10) / copies


GEMV_SHAPES = [  # (name, K in, N out): the weight matrices of GPT-2 124M and Llama-2 7B / 13B / 70B
    ("GPT-2 qkv 768x2304", 768, 2304), ("GPT-2 attn out 768x768", 768, 768),
    ("GPT-2 ffn up 768x3072", 768, 3072), ("GPT-2 ffn down 3072x768", 3072, 768),
    ("GPT-2 LM head 768x50257", 768, 50257),
    ("Llama-7B qkv 4096x12288", 4096, 12288), ("Llama-7B attn out 4096x4096", 4096, 4096),
    ("Llama-7B ffn up 4096x11008", 4096, 11008), ("Llama-7B ffn down 11008x4096", 11008, 4096),
    ("Llama-7B LM head 4096x32000", 4096, 32000),
    ("Llama-13B ffn up 5120x13824", 5120, 13824), ("Llama-13B ffn down 13824x5120", 13824, 5120),
    ("Llama-70B qkv 8192x10240", 8192, 10240), ("Llama-70B ffn up 8192x28672", 8192, 28672),
    ("Llama-70B ffn down 28672x8192", 28672, 8192),
]


def matmul_rows(dev: str, smoke: bool) -> list[dict]:
    rows = []
    shrink = 16 if smoke else 1
    for name, k, n in GEMV_SHAPES:
        k, n = max(8, k // shrink), max(8, n // shrink)
        rows.append({"series": "gemv", "name": name, "m": 1, "n": n, "k": k,
                     "measured_s": matmul_seconds(1, n, k, dev, smoke)})
    for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192):
        kn = 4096 // shrink
        rows.append({"series": "gemm-m", "name": f"M = {m}", "m": m, "n": kn, "k": kn,
                     "measured_s": matmul_seconds(m, kn, kn, dev, smoke)})
    for s in (256, 512, 1024, 2048, 4096, 8192, 16384):
        s = max(8, s // shrink)
        rows.append({"series": "gemm-square", "name": f"{s} x {s} x {s}", "m": s, "n": s, "k": s,
                     "measured_s": matmul_seconds(s, s, s, dev, smoke)})
    for m, k, n in ((512, 768, 2304), (512, 768, 3072), (512, 3072, 768), (1024, 4096, 12288),
                    (1024, 4096, 11008), (1024, 11008, 4096), (128, 4096, 11008)):
        m, k, n = max(8, m // shrink), max(8, k // shrink), max(8, n // shrink)
        rows.append({"series": "gemm-prefill", "name": f"{m} x {n} x {k}", "m": m, "n": n, "k": k,
                     "measured_s": matmul_seconds(m, n, k, dev, smoke)})
    return rows


# -- Transformer forward passes --------------------------------------------------------------------
@dataclass
class Shape:
    family: str  # gpt | llama
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int


NAMES = {"gpt2": "GPT-2", "llama2-7b": "Llama-2 7B", "llama2-13b-int4": "Llama-2 13B"}
GPT2 = Shape("gpt", 12, 768, 12, 3072, 50257)
LLAMA7 = Shape("llama", 32, 4096, 32, 11008, 32000)
LLAMA13 = Shape("llama", 40, 5120, 40, 13824, 32000)


class Model:
    """A pre-norm decoder with a static KV cache: GPT-2 (LayerNorm, GELU, biases, tied head) or Llama
    (RMSNorm, RoPE, SwiGLU, no biases). Random weights: timing does not depend on their values."""

    def __init__(self, s: Shape, batch: int, max_len: int, dev: str):
        self.s, self.batch, self.dev = s, batch, dev
        self.tracing = False
        h, f, d = s.hidden, s.ffn, s.hidden // s.heads
        gpt = s.family == "gpt"

        def w(*shape):
            return torch.empty(*shape, dtype=DT, device=dev).normal_(std=0.02)

        self.wte = w(s.vocab, h)
        self.wpe = w(1024, h) if gpt else None
        self.head = self.wte if gpt else w(s.vocab, h)
        self.layers = []
        for _ in range(s.layers):
            lay = {"ln1": w(h), "ln2": w(h), "wqkv": w(3 * h, h), "wo": w(h, h),
                   "up": w(f, h), "down": w(h, f), "gate": None if gpt else w(f, h)}
            if gpt:
                lay.update(ln1b=w(h), ln2b=w(h), bqkv=w(3 * h), bo=w(h), bup=w(f), bdown=w(h))
            lay["k"] = torch.zeros(batch, s.heads, max_len, d, dtype=DT, device=dev)
            lay["v"] = torch.zeros(batch, s.heads, max_len, d, dtype=DT, device=dev)
            self.layers.append(lay)
        self.lnf = w(h)
        self.lnfb = w(h) if gpt else None
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
        ang = torch.outer(torch.arange(max_len, device=dev, dtype=torch.float32), inv)
        self.cos, self.sin = ang.cos().to(DT), ang.sin().to(DT)

    def norm(self, x, wgt, bias):
        if self.s.family == "gpt":
            return F.layer_norm(x, (x.shape[-1],), wgt, bias)
        return F.rms_norm(x, (x.shape[-1],), wgt)

    def rope(self, t, pos: int):  # t: (B, T, H, d), rotate-half form
        n = t.shape[1]
        cos = self.cos[pos:pos + n, None, :].repeat(1, 1, 2)
        sin = self.sin[pos:pos + n, None, :].repeat(1, 1, 2)
        half = t.shape[-1] // 2
        rot = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
        return t * cos + rot * sin

    def mark(self, name: str):
        """A profiler range named as memwall's graph names the op, when tracing (see `trace_passes`)."""
        return torch.profiler.record_function(name) if self.tracing else contextlib.nullcontext()

    def forward(self, tokens, pos: int):
        """`tokens` (B, T) at positions pos..pos+T-1; returns the last position's logits."""
        s, (B, T), mark = self.s, tokens.shape, self.mark
        h, d = s.hidden, s.hidden // s.heads
        gpt = s.family == "gpt"
        with mark("embed"):
            x = F.embedding(tokens, self.wte)
            if gpt:
                x = x + self.wpe[pos:pos + T]
        for lay in self.layers:
            with mark("attn_norm"):
                a = self.norm(x, lay["ln1"], lay.get("ln1b"))
            with mark("qkv"):
                qkv = F.linear(a, lay["wqkv"], lay.get("bqkv")).view(B, T, 3, s.heads, d)
                q, k, v = qkv.unbind(2)
            if not gpt:
                with mark("rope"):
                    q, k = self.rope(q, pos), self.rope(k, pos)
            with mark("kv_write"):
                lay["k"][:, :, pos:pos + T] = k.transpose(1, 2)
                lay["v"][:, :, pos:pos + T] = v.transpose(1, 2)
            ctx = pos + T
            with mark("attention"):
                o = F.scaled_dot_product_attention(q.transpose(1, 2), lay["k"][:, :, :ctx], lay["v"][:, :, :ctx],
                                                   is_causal=T > 1)
            with mark("attn_out"):
                o = F.linear(o.transpose(1, 2).reshape(B, T, h), lay["wo"], lay.get("bo"))
            with mark("residual"):
                x = x + o
            with mark("ffn_norm"):
                a = self.norm(x, lay["ln2"], lay.get("ln2b"))
            if gpt:
                with mark("ffn_up"):
                    u = F.linear(a, lay["up"], lay["bup"])
                with mark("act"):
                    u = F.gelu(u, approximate="tanh")
            else:
                with mark("ffn_gate"):
                    g = F.linear(a, lay["gate"])
                with mark("ffn_up"):
                    u = F.linear(a, lay["up"])
                with mark("act"):
                    u = F.silu(g) * u
            with mark("ffn_down"):
                o = F.linear(u, lay["down"], lay.get("bdown"))
            with mark("residual2"):
                x = x + o
        with mark("final_norm"):
            x = self.norm(x[:, -1], self.lnf, self.lnfb)
        with mark("lm_head"):
            return F.linear(x, self.head)


def kernels_per_pass(forward, tokens, pos: int, show: bool = False) -> int:
    """CUDA kernels one eager forward pass launches (0 on CPU); `show` prints their device times."""
    if not torch.cuda.is_available():
        return 0
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward(tokens, pos)
        sync()
    if show:
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def pass_seconds(model: Model, tokens_n: int, pos: int, reps: int, show: bool = False) -> tuple[float, int]:
    tokens = torch.zeros(model.batch, tokens_n, dtype=torch.long, device=model.dev)
    return timed(graphed(lambda: model.forward(tokens, pos)), reps), kernels_per_pass(model.forward, tokens, pos, show)


def generate_seconds(model: Model, prompt: int, new: int, reps: int) -> float:
    """Prefill then `new` decode steps, one graph per pass replayed back to back (no host work between)."""
    prompt_ids = torch.zeros(model.batch, prompt, dtype=torch.long, device=model.dev)
    steps = [graphed(lambda: model.forward(prompt_ids, 0))]
    one = torch.zeros(model.batch, 1, dtype=torch.long, device=model.dev)
    for i in range(new):
        steps.append(graphed(lambda p=prompt + i: model.forward(one, p)))

    def run_all() -> None:
        for step in steps:
            step()

    return timed(run_all, reps)


def model_rows(dev: str, smoke: bool, rows: list[dict], save) -> None:
    """Appends each model's rows to `rows` and calls `save` after each model."""
    reps = 3 if smoke else 20
    shrink = (lambda s: Shape(s.family, 2, s.hidden // 16, s.heads // 4, s.ffn // 16, 1000)) if smoke else (lambda s: s)
    fused = {"scenario.attention": "fused"}
    plans = [  # (workload, shape, batch, [(phase, prompt, tokens this pass)])
        ("gpt2", GPT2, 1, [("decode", 512), ("decode", 1023), ("prefill", 512), ("prefill", 128)]),
        ("gpt2", GPT2, 32, [("decode", 512), ("prefill", 512)]),
        ("llama2-7b", LLAMA7, 1, [("decode", 128), ("decode", 1024), ("decode", 4095), ("prefill", 128),
                                   ("prefill", 1024)]),
        ("llama2-7b", LLAMA7, 16, [("decode", 1024), ("prefill", 512)]),
        ("llama2-7b", LLAMA7, 64, [("decode", 512)]),
        ("llama2-13b-int4", LLAMA13, 1, [("decode", 1024), ("prefill", 512)]),
    ]
    for workload, shape, batch, passes in plans:
        max_len = max(prompt + 1 for _, prompt in passes)
        if workload == "gpt2" and batch == 1:
            max_len = max(max_len, 512 + 64)
        model = Model(shrink(shape), batch, max_len, dev)
        for phase, prompt in passes:
            n = 1 if phase == "decode" else prompt
            pos = prompt if phase == "decode" else 0
            show = batch == 1 and phase == "decode" and prompt in (512, 1024)  # which kernels take the time
            secs, kernels = pass_seconds(model, n, pos, reps, show)
            what = f"decode step, context {prompt}" if phase == "decode" else f"prefill {prompt} tokens"
            rows.append({"series": "forward", "name": f"{NAMES[workload]} batch {batch}, {what}", "workload": workload,
                         "measured_s": secs, "kernels": kernels,
                         "set": {**fused, "scenario.phase": phase, "scenario.batch": batch,
                                 "scenario.prompt_tokens": prompt, "scenario.new_tokens": 1 if phase == "decode" else 0,
                                 **bf16_set(workload)}})
        if workload == "gpt2" and batch == 1:
            secs = generate_seconds(model, 512, 64, 3 if smoke else 5)
            rows.append({"series": "forward", "name": "GPT-2 batch 1, generate 512 + 64 tokens", "workload": workload,
                         "measured_s": secs,
                         "set": {**fused, "scenario.phase": "generate", "scenario.batch": 1,
                                 "scenario.prompt_tokens": 512, "scenario.new_tokens": 64, **bf16_set(workload)}})
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        save()


def compiled_rows(dev: str, smoke: bool, rows: list[dict], save) -> None:
    """Batch-1 decode steps of GPT-2 and Llama-2 7B through torch.compile (Inductor fuses the norms,
    RoPE, activations and residual adds into one kernel each, as a serving runtime does), replayed
    from a CUDA graph."""
    shrink = (lambda s: Shape(s.family, 2, s.hidden // 16, s.heads // 4, s.ffn // 16, 1000)) if smoke else (lambda s: s)
    for workload, shape, prompt in (("gpt2", GPT2, 512), ("llama2-7b", LLAMA7, 1024)):
        model = Model(shrink(shape), 1, prompt + 1, dev)
        forward = torch.compile(model.forward, dynamic=False)
        tokens = torch.zeros(1, 1, dtype=torch.long, device=dev)
        t0 = time.time()
        forward(tokens, prompt)
        sync()
        compile_s = time.time() - t0
        secs = timed(graphed(lambda f=forward, t=tokens, p=prompt: f(t, p)), 3 if smoke else 20)
        rows.append({"series": "forward-compiled", "name": f"{NAMES[workload]} batch 1, decode step, context {prompt}",
                     "workload": workload, "measured_s": secs, "kernels": kernels_per_pass(forward, tokens, prompt),
                     "compile_s": round(compile_s, 1),
                     "set": {"scenario.attention": "fused", "scenario.phase": "decode", "scenario.batch": 1,
                             "scenario.prompt_tokens": prompt, "scenario.new_tokens": 1, **bf16_set(workload)}})
        del model, forward
        save()


def trace_passes(dev: str, smoke: bool, out: str) -> None:
    """Profiles eager forward passes with each op in a range named as memwall's graph names it, and
    writes their Chrome traces (gzipped) under `out`: which CUDA kernels, how many and how long, each
    memwall op becomes (bench/trace_ops.py reads them). Three passes per trace, after a warm-up."""
    from torch.profiler import ProfilerActivity, profile
    os.makedirs(out, exist_ok=True)
    shrink = (lambda s: Shape(s.family, 2, s.hidden // 16, s.heads // 4, s.ffn // 16, 1000)) if smoke else (lambda s: s)
    plans = [("gpt2", GPT2, 1, [("decode", 512), ("prefill", 512)]), ("gpt2", GPT2, 32, [("prefill", 512)]),
             ("llama2-7b", LLAMA7, 1, [("decode", 1024), ("prefill", 1024)]),
             ("llama2-7b", LLAMA7, 16, [("prefill", 512)]), ("llama2-7b", LLAMA7, 64, [("decode", 512)])]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    for workload, shape, batch, passes in plans:
        model = Model(shrink(shape), batch, max(prompt + 1 for _, prompt in passes), dev)
        for phase, prompt in passes:
            n, pos = (1, prompt) if phase == "decode" else (prompt, 0)
            tokens = torch.zeros(batch, n, dtype=torch.long, device=dev)
            model.forward(tokens, pos)
            sync()
            model.tracing = True
            with profile(activities=activities) as prof:
                for _ in range(3):
                    with torch.profiler.record_function("pass"):
                        model.forward(tokens, pos)
                    sync()
            model.tracing = False
            name = f"{workload}-b{batch}-{phase}-{prompt}"
            prof.export_chrome_trace(os.path.join(out, name + ".json"))
            with open(os.path.join(out, name + ".json"), "rb") as src, gzip.open(
                    os.path.join(out, name + ".json.gz"), "wb") as dst:
                dst.write(src.read())
            os.remove(os.path.join(out, name + ".json"))
            print(f"traced {name}", flush=True)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def bf16_set(workload: str) -> dict:
    return {f"scenario.precision.{k}": "bf16" for k in ("weights", "activations", "kv_cache")}


HEADER = "# Written by `python bench/gpu_measure.py` (see its docstring); predicted by `python -m sim validate`.\n"
SERIES = {  # the script's series -> (group, kind-specific keys)
    "gemv": ("GEMV, bf16", {"kind": "matmul", "dtype": "bf16", "caches": "cold"}),
    "gemm-m": ("GEMM over M, K = N = 4096, bf16", {"kind": "matmul", "dtype": "bf16", "caches": "cold"}),
    "gemm-square": ("GEMM, square, bf16", {"kind": "matmul", "dtype": "bf16", "caches": "cold"}),
    "gemm-prefill": ("GEMM, layer shapes, bf16", {"kind": "matmul", "dtype": "bf16", "caches": "cold"}),
    "forward": ("forward, bf16, eager kernels in a CUDA graph", {"kind": "generate"}),
    "forward-compiled": ("forward, bf16, torch.compile in a CUDA graph", {"kind": "generate"}),
}


def as_validation(hardware: str, env: dict, micro: dict, rows: list[dict]) -> dict:
    """The measurements in sim/data/published.yaml's schema: one series per kind of case, every row
    with its measured seconds; the environment and the microbenchmarks ride along, unpredicted."""
    chip = env["device"].removeprefix("NVIDIA ")
    source = (f"memwall bench/gpu_measure.py on one {env['device']} (PyTorch {env['torch']}, CUDA {env['cuda']}), "
              f"{env['date']}: median of replays of a CUDA graph, timed with device events")
    graph = {"runtime.graphs": True}  # a graph replay launches all its kernels at once: no host cost
    # the runtime whose kernels each series ran (runtimes/*.yaml; their figures: sim/validate/gpu.py)
    series = {f"{hardware}-{key}": {"group": f"{chip} {group} (memwall)", **extra, "hardware": hardware,
                                     "runtime": "eager-pytorch" if key == "forward" else "compiled",
                                     "set": graph, "source": source}
              for key, (group, extra) in SERIES.items() if any(r["series"] == key for r in rows)}
    cases = [{**r, "series": f"{hardware}-{r['series']}"} for r in rows]
    return {"environment": env, "microbenchmarks": micro, "series": series, "cases": cases}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hardware", default="h200-sxm", help="memwall hardware model the rows are predicted with")
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script only")
    p.add_argument("--only", choices=["micro", "tiny", "rows", "matmul", "model", "compiled", "trace"], action="append")
    p.add_argument("--update", action="store_true",
                   help="keep what --out already holds except the parts measured now")
    p.add_argument("--trace-dir", default="out/traces", help="where `--only trace` writes its traces")
    args = p.parse_args()
    dev = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
    only = set(args.only or ["micro", "matmul", "model", "compiled"])  # `trace` only when asked for
    t0 = time.time()
    env = {"torch": str(torch.__version__), "python": platform.python_version(),
           "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
           "cuda": str(torch.version.cuda), "date": time.strftime("%Y-%m-%d")}
    micro: dict = {}
    rows: list[dict] = []
    if args.update and os.path.exists(args.out):
        with open(args.out) as fh:
            old = yaml.safe_load(fh)
        micro = old["microbenchmarks"]
        mine = {"matmul": ("gemv", "gemm-m", "gemm-square", "gemm-prefill"), "model": ("forward",),
                "compiled": ("forward-compiled",)}
        remeasured = {series for part in only for series in mine.get(part, ())}
        for case in old["cases"]:
            series = case["series"].removeprefix(f"{args.hardware}-")
            if series not in remeasured:
                rows.append({**case, "series": series})

    def save() -> None:  # after each part: a run stopped at its time limit keeps what it measured
        with open(args.out, "w") as fh:
            fh.write(HEADER)
            yaml.safe_dump(as_validation(args.hardware, env, micro, rows), fh, sort_keys=False, width=120)

    if "micro" in only:
        micro.update(microbenchmarks(dev, args.smoke))
        print(json.dumps(micro, indent=1), flush=True)
        save()
    if "tiny" in only and "micro" not in only:  # the launch and the framework's ops alone
        micro.update(launch_seconds(dev, args.smoke))
        micro.update(tiny_op_seconds(dev, args.smoke))
        print(json.dumps(micro, indent=1), flush=True)
        save()
    if "rows" in only and "micro" not in only:  # the row-wise reductions by width alone
        micro.update(row_op_seconds(dev, args.smoke))
        save()
    if "matmul" in only:
        rows += matmul_rows(dev, args.smoke)
        print(f"matmuls done at {time.time() - t0:.0f} s", flush=True)
        save()
    if "model" in only:
        model_rows(dev, args.smoke, rows, save)
        print(f"models done at {time.time() - t0:.0f} s", flush=True)
    if "compiled" in only:  # last: compiling takes the longest, and a time limit keeps what came before
        compiled_rows(dev, args.smoke, rows, save)
        print(f"compiled models done at {time.time() - t0:.0f} s", flush=True)
    if "trace" in only:
        trace_passes(dev, args.smoke, args.trace_dir)
        print(f"traces done at {time.time() - t0:.0f} s", flush=True)
    for r in rows:
        print(f"{r['series']:14s} {r['name']:48s} {r['measured_s'] * 1e6:12.2f} us  {r.get('kernels', '')}")


if __name__ == "__main__":
    main()
