"""Training on one GPU, a node and a cluster: what fits and what it costs.
`python bench/training.py [--markdown docs/training.md]`
prints (and writes) the tables of docs/training.md, every figure simulated:

1. GPT-2 124M and Llama-2-7B on one A100-80GB under fp32 Adam, mixed-precision AdamW (bf16 weights,
   activations and gradients; fp32 master weights and moments) and bf16 SGD: the memory by part, whether
   the step fits in HBM (or what spills to host memory) and the step time.
2. The same with activation recomputation none / selective / full: the activations kept, the step time
   and the cost of recomputing (the study's "up to ~5x less activation memory for ~20% more compute").
3. Llama-2-7B and -70B data-parallel over the 8 A100s of a node with ZeRO 0-3: per-GPU memory, whether
   it fits, the step time and the communication exposed and hidden per GPU.
4. GPT-3 175B with Megatron's 3D parallelism (tensor 8 inside a node, pipeline 8 or 16, data) over DGX
   A100 nodes joined by InfiniBand, up to 1,024 GPUs: step time, TFLOP/s per GPU as Megatron counts it,
   MFU and HFU, the pipeline bubble and the exposed communication.
5. The published training steps of sim/data/published.yaml (BERT-Large pretraining from NVIDIA's
   DeepLearningExamples, GPT-2 from llm.c, MPT from LLM Foundry, GPT 1.7B-310B from Megatron-LM's weak
   scaling on up to 1,920 GPUs), predicted, with the median and worst error.
6. The published peak memory per GPU of training steps (llm.c's GPT-2 124M and 1558M with ZeRO-0 and -1),
   against the simulated peak and its parts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from sim.config import load_run  # noqa: E402
from sim.config.units import fmt_bytes, fmt_time  # noqa: E402
from sim.errors import ConfigError  # noqa: E402
from sim.pipeline import run  # noqa: E402
from sim.report import summarize  # noqa: E402

GIB = 2 ** 30
MODELS = {
    "GPT-2 124M, 8 x 1024 tokens": ("workloads/gpt2-train.yaml", []),
    "Llama-2-7B, 1 x 4096 tokens": ("workloads/llama2-7b.yaml", [
        ("scenario.phase", "train"), ("scenario.new_tokens", 0), ("scenario.prompt_tokens", 4096),
        ("scenario.batch", 1)]),
}
RECIPES = {
    "fp32 Adam": [("scenario.precision", {"weights": "fp32", "activations": "fp32", "kv_cache": "fp32"}),
                  ("training.precision", {"gradients": "fp32", "optimizer_state": "fp32"}),
                  ("training.optimizer", "adam"), ("training.master_weights", False)],
    "mixed-precision AdamW": [("scenario.precision", {"weights": "bf16", "activations": "bf16", "kv_cache": "bf16"}),
                              ("training.precision", {"gradients": "bf16", "optimizer_state": "fp32"}),
                              ("training.optimizer", "adamw"), ("training.master_weights", True)],
    "bf16 SGD": [("scenario.precision", {"weights": "bf16", "activations": "bf16", "kv_cache": "bf16"}),
                 ("training.precision", {"gradients": "bf16", "optimizer_state": "bf16"}),
                 ("training.optimizer", "sgd"), ("training.master_weights", False)],
}
HARDWARE = "hardware_models/a100-sxm4-80gb.yaml"


def simulate(path: str, overrides: list, hw_overrides: list | None = None) -> tuple[dict | None, str]:
    wl, hw, _ = load_run(ROOT / path, list(overrides) + list(hw_overrides or []), ROOT / HARDWARE)
    try:
        result = run(wl, hw)
    except ConfigError as e:
        return None, str(e).split(": ", 2)[-1]
    return summarize(result, top=0), ""


def fits(s: dict) -> str:
    mem = s["memory"]
    spilled = {kind: level for kind, level in mem["home"].items() if level == "host"}
    if not spilled:
        return f"yes ({fmt_bytes(mem['used_bytes']['hbm'])} of {fmt_bytes(mem['capacity_bytes']['hbm'])})"
    names = {"weight": "weights", "gradient": "gradients", "optimizer_state": "optimizer state",
             "activation": "activations"}
    return "no: " + ", ".join(names.get(k, k) for k in spilled) + " in host memory"


def memory_table() -> Table:
    t = Table(title="Memory and step time on one A100-80GB (no recomputation)")
    for col in ("model", "recipe", "weights", "gradients", "optimizer", "activations", "fits in HBM", "step",
                "MFU"):
        t.add_column(col, justify="left" if col in ("model", "recipe", "fits in HBM") else "right")
    for name, (path, base) in MODELS.items():
        for recipe, sets in RECIPES.items():
            s, err = simulate(path, base + sets)
            if s is None:
                t.add_row(name, recipe, "", "", "", "", f"does not fit: {err}", "", "")
                continue
            mem = s["memory"]
            t.add_row(name, recipe, *(f"{mem[k] / GIB:.2f} GiB" for k in
                                      ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes")),
                      fits(s), fmt_time(s["step_s"]), f"{100 * s['mfu']:.1f}%")
    return t


def recompute_table() -> Table:
    t = Table(title="Activation recomputation, mixed-precision AdamW on one A100-80GB")
    for col in ("model", "recompute", "activations kept", "vs none", "step", "vs none", "MFU", "HFU"):
        t.add_column(col, justify="left" if col in ("model", "recompute") else "right")
    for name, (path, base) in MODELS.items():
        ref = None
        for mode in ("none", "selective", "full"):
            s, err = simulate(path, base + RECIPES["mixed-precision AdamW"] + [("training.recompute", mode)])
            if s is None:
                t.add_row(name, mode, f"does not fit: {err}", "", "", "", "", "")
                continue
            act = s["memory"]["activations_bytes"]
            ref = ref or (act, s["step_s"])
            t.add_row(name, mode, f"{act / GIB:.2f} GiB", f"{ref[0] / act:.2f}x less", fmt_time(s["step_s"]),
                      f"+{100 * (s['step_s'] / ref[1] - 1):.0f}%", f"{100 * s['mfu']:.1f}%", f"{100 * s['hfu']:.1f}%")
    return t


ZERO_MODELS = {
    "Llama-2-7B, 8 x 4096 tokens": ("workloads/llama2-7b.yaml", [
        ("scenario.phase", "train"), ("scenario.new_tokens", 0), ("scenario.prompt_tokens", 4096),
        ("scenario.batch", 8), ("parallelism.data", 8), ("training.recompute", "full")]),
    "Llama-2-70B, 8 x 4096 tokens": ("workloads/llama2-70b-tp8.yaml", [
        ("scenario.phase", "train"), ("scenario.new_tokens", 0), ("scenario.prompt_tokens", 4096),
        ("scenario.batch", 8), ("parallelism.tensor", 1), ("parallelism.data", 8), ("training.recompute", "full")]),
}


def zero_table() -> Table:
    t = Table(title="ZeRO over 8 A100-80GB (one node, NVLink), mixed-precision AdamW, full recomputation: per GPU")
    for col in ("model", "ZeRO", "weights", "gradients", "optimizer", "activations", "fits in HBM", "step",
                "comm exposed / hidden", "MFU"):
        t.add_column(col, justify="left" if col in ("model", "ZeRO", "fits in HBM") else "right")
    for name, (path, base) in ZERO_MODELS.items():
        for stage in range(4):
            s, err = simulate(path, base + RECIPES["mixed-precision AdamW"] + [("training.zero", stage)])
            if s is None:
                t.add_row(name, str(stage), "", "", "", "", f"does not fit: {err}", "", "", "")
                continue
            mem, n = s["memory"], s["devices"]
            t.add_row(name, str(stage), *(f"{mem[k] / GIB:.2f} GiB" for k in
                                          ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes")),
                      fits(s), fmt_time(s["step_s"]),
                      f"{fmt_time(s['comm_exposed_s'] / n)} / {fmt_time(s['comm_hidden_s'] / n)}",
                      f"{100 * s['mfu']:.1f}%")
    return t


GPT3 = [("name", "GPT-3 175B"), ("model.layers", 96), ("model.hidden", 12288), ("model.heads", 96),
        ("model.ffn", 49152), ("model.vocab", 51200), ("model.max_positions", 2048),
        ("scenario.prompt_tokens", 2048), ("parallelism.tensor", 8), ("parallelism.schedule", "1f1b"),
        ("training.recompute", "full"), ("training.dropout", 0.1)]
#: a DGX A100 node's 8 single-port 200 Gb/s (25 GB/s) HDR InfiniBand HCAs, one per GPU (NVIDIA DGX A100 datasheet,
#: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/nvidia-dgx-a100-datasheet.pdf); the
#: fabric's 5 us per hop is an assumption (a round figure for NIC + switch + NCCL's proxy), not a measurement
INFINIBAND = {"link": {"bandwidth": "25 GB/s", "latency": "5 us"}}
GPT3_RUNS = [  # (pipeline stages, data-parallel replicas, micro-batches of one sequence per replica, network)
    (8, 1, 8, INFINIBAND), (8, 2, 32, INFINIBAND),  # and a 4x faster NIC:
    (8, 2, 32, {"link": {"bandwidth": "100 GB/s", "latency": "5 us"}}),
    # the batch and GPU count for which Megatron-LM reports 140 TFLOP/s per GPU (Narayanan et al., 2021, §5.1;
    # its layout is not given there: tensor 8 x pipeline 16 as Megatron's GPT-3 175B example script)
    (16, 8, 192, INFINIBAND),
]


def gpt3_table() -> Table:
    from sim.validate.published import megatron_step_flops

    t = Table(title="GPT-3 175B on DGX A100 nodes (NVLink inside, InfiniBand between): tensor 8 x pipeline x data, "
                    "1F1B, mixed-precision AdamW, dropout 0.1, full recomputation")
    for col in ("GPUs (nodes)", "pipeline x data", "micro-batches", "NIC per GPU", "step", "samples/s",
                "TFLOP/s per GPU", "MFU", "HFU", "bubble", "comm exposed per GPU"):
        t.add_column(col, justify="right")
    for pipeline, data, micro, net in GPT3_RUNS:
        gpus = 8 * pipeline * data
        batch = data * micro
        s, err = simulate("workloads/gpt2-train.yaml", GPT3 + RECIPES["mixed-precision AdamW"] + [
            ("parallelism.pipeline", pipeline), ("parallelism.data", data), ("parallelism.microbatches", micro),
            ("scenario.batch", batch)], [("nodes", gpus // 8), ("network", net)])
        if s is None:
            t.add_row(f"{gpus} ({gpus // 8})", f"{pipeline} x {data}", str(micro), net["link"]["bandwidth"],
                      f"fails: {err}", "", "", "", "", "", "")
            continue
        # Megatron's count (its eq. 3, recomputation included) per GPU, as its papers report throughput
        flops = megatron_step_flops({"scenario.batch": batch, "scenario.prompt_tokens": 2048, "model.layers": 96,
                                     "model.hidden": 12288, "model.vocab": 51200})
        t.add_row(f"{gpus} ({gpus // 8})", f"{pipeline} x {data}", str(micro), net["link"]["bandwidth"],
                  fmt_time(s["step_s"]), f"{s['samples_per_s']:.1f}", f"{flops / s['step_s'] / gpus / 1e12:.0f}",
                  f"{100 * s['mfu']:.1f}%", f"{100 * s['hfu']:.1f}%",
                  f"{100 * s['bubble_s'] / s['step_s']:.0f}%", fmt_time(s["comm_exposed_s"] / s["devices"]))
    return t


def validation_table() -> Table:
    """The published training steps (sim/data/published.yaml, `kind: train`), predicted."""
    from sim.validate.published import measured_seconds, predict_row, published_rows

    t = Table(title="Predicted vs published training steps (shipped A100 model)")
    for col in ("source", "case", "predicted", "published", "error"):
        t.add_column(col, justify="left" if col in ("source", "case") else "right")
    errors = []
    for row in published_rows():
        if row["kind"] != "train":
            continue
        _, predicted = predict_row(row)
        measured = measured_seconds(row)
        errors.append(predicted / measured - 1)
        t.add_row(row["group"], row["name"], fmt_time(predicted), fmt_time(measured),
                  f"{100 * (predicted / measured - 1):+.1f}%")
    t.caption = _errors(errors, "steps")
    return t


def memory_validation_table() -> Table:
    """The published peak memory per GPU of training steps (sim/data/published.yaml, `kind: train_memory`)
    against the fullest device's simulated peak in HBM, with its parts."""
    from sim.validate.published import measured_peak_bytes, predict_training, published_rows

    t = Table(title="Predicted vs published peak memory per GPU (shipped A100 model)")
    for col in ("source", "case", "weights", "gradients", "optimizer", "activations", "predicted", "published",
                "error"):
        t.add_column(col, justify="left" if col in ("source", "case") else "right")
    errors = []
    for row in published_rows():
        if row["kind"] != "train_memory":
            continue
        peak = predict_training(row)["memory"]["hbm"]
        predicted, measured = peak["peak_bytes"], measured_peak_bytes(row)
        errors.append(predicted / measured - 1)
        parts = (f"{peak.get(k, 0.0) / 2 ** 20:,.0f} MiB" for k in ("weights", "gradients", "optimizer", "activations"))
        t.add_row(row["group"], row["name"], *parts, f"{predicted / 2 ** 20:,.0f} MiB",
                  f"{measured / 2 ** 20:,.0f} MiB", f"{100 * (predicted / measured - 1):+.1f}%")
    t.caption = _errors(errors, "peaks")
    return t


def _errors(errors: list[float], what: str) -> str:
    errors = sorted(abs(e) for e in errors)
    median = errors[len(errors) // 2] if len(errors) % 2 else sum(errors[len(errors) // 2 - 1:][:2]) / 2
    return f"median |error| {100 * median:.1f}%, worst {100 * errors[-1]:.1f}% over {len(errors)} {what}"


def markdown(table: Table) -> str:
    cols = [c.header for c in table.columns]
    rows = zip(*[list(c._cells) for c in table.columns])
    lines = [f"**{table.title}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if table.caption:
        lines += ["", str(table.caption)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", type=Path, help="also write the tables into this Markdown file's marked block")
    args = parser.parse_args()
    tables = [memory_table(), recompute_table(), zero_table(), gpt3_table(), validation_table(),
              memory_validation_table()]
    console = Console(width=170)
    for t in tables:
        console.print(t)
    if args.markdown:
        text = args.markdown.read_text()
        start, end = "<!-- bench/training.py -->", "<!-- /bench/training.py -->"
        body = "\n\n".join(markdown(t) for t in tables)
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        args.markdown.write_text(f"{head}{start}\n{body}\n{end}{tail}")
        console.print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
