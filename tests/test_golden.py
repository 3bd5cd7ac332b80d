"""Golden regression: every shipped workload on every shipped hardware model (and a few variants that
exercise pipeline parallelism, fused attention and pinning) gives the figures stored in
tests/data/golden.json. A figure may move only with a documented model change or bug fix: regenerate
with `python tests/test_golden.py --update`, review the diff, and say why in the commit.

The figures are the run's whole summary (end-to-end times, per class / phase / top-op aggregates,
bytes per level, stall shares, memory), flattened to dotted keys. The event count is left out: it is
the simulation's cost, not a result."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "data" / "golden.json"
REL = 1e-9

#: (workload, hardware or None for the workload's default, --set overrides)
VARIANTS = [
    ("llama2-70b-tp8.yaml", None, {"parallelism.tensor": 2, "parallelism.pipeline": 4, "scenario.batch": 8}),
    ("llama2-70b-tp8.yaml", None, {"parallelism.tensor": 2, "parallelism.pipeline": 4, "scenario.batch": 8,
                                   "parallelism.microbatches": 8}),
    ("gpt2.yaml", None, {"parallelism.microbatches": 2, "scenario.batch": 4, "scenario.new_tokens": 4}),
    ("gpt2-train.yaml", None, {"training.recompute": "full", "scenario.attention": "fused"}),
    ("gpt2-train.yaml", None, {"training.recompute": "selective", "training.optimizer": "sgd",
                               "parallelism.microbatches": 2}),
    ("gpt2-train.yaml", None, {"parallelism.data": 8, "scenario.batch": 64}),
    ("bert-base.yaml", None, {"scenario.phase": "train", "scenario.batch": 32}),
    ("gpt2-train.yaml", None, {"parallelism.data": 8, "scenario.batch": 64, "training.zero": 3}),
    ("gpt2-train.yaml", None, {"parallelism.pipeline": 4, "parallelism.microbatches": 8, "scenario.batch": 16}),
    ("llama2-7b.yaml", None, {"scenario.phase": "train", "scenario.new_tokens": 0, "scenario.prompt_tokens": 2048,
                              "scenario.batch": 8, "parallelism.tensor": 4, "parallelism.data": 2,
                              "training.recompute": "selective", "training.zero": 1}),
    ("gpt2-train.yaml", None, {"parallelism.data": 8, "scenario.batch": 64, "training.zero": 2}),
    ("llama2-7b.yaml", None, {"scenario.phase": "train", "scenario.new_tokens": 0, "scenario.prompt_tokens": 512,
                              "scenario.batch": 2, "training.optimizer": "adafactor"}),
    ("gpt2.yaml", None, {"scenario.attention": "fused", "scenario.batch": 4}),
    ("gpt2.yaml", None, {"device.memory.l2.capacity": "512 MiB", "device.memory.l2.pin": ["weight"],
                         "scenario.new_tokens": 8}),
    # a runtime's keys set one by one: eager PyTorch's CPU dispatch, a kernel's own, no per-call cost
    ("gpt2.yaml", "xeon-gold-6242.yaml", {"scenario.new_tokens": 8, "runtime.dispatch_overhead": "4.8 us",
                                          "runtime.kernels.layernorm.dispatch": "5.5 us",
                                          "runtime.step_overhead": "0 s"}),
    # Megatron's 3D layout over two nodes joined by a network: tensor 4 x pipeline 2 x data 2, 1F1B, dropout,
    # full recomputation (one program per stage stands for its 4 ranks of 2 replicas)
    ("gpt2-train.yaml", None, {"parallelism.tensor": 4, "parallelism.pipeline": 2, "parallelism.data": 2,
                               "parallelism.microbatches": 4, "parallelism.schedule": "1f1b", "scenario.batch": 8,
                               "training.recompute": "full", "training.dropout": 0.1, "devices": 4, "nodes": 4,
                               "network": {"link": {"bandwidth": "25 GB/s", "latency": "5 us"}}}),
]


def cases() -> list[tuple[str, str, str | None, dict]]:
    out = []
    for w in sorted((ROOT / "workloads").glob("*.yaml")):
        for h in sorted((ROOT / "hardware_models").glob("*.yaml")):
            if h.name.startswith("host"):  # this machine's calibration: not shipped
                continue
            out.append((f"{w.name}@{h.name}", w.name, h.name, {}))
    for w, h, sets in VARIANTS:
        label = f"{w}@{h or 'default'}+" + ",".join(f"{k}={v}" for k, v in sets.items())
        out.append((label, w, h, sets))
    return out


def flatten(doc, prefix: str = "") -> dict:
    out = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = doc
    return out


def figures(workload: str, hardware: str | None, sets: dict) -> dict:
    """The flattened summary, or the one-line error of a case that does not run."""
    from sim.config import load_run
    from sim.errors import ConfigError
    from sim.pipeline import run
    from sim.report import summarize

    try:
        wl, hw, hw_path = load_run(ROOT / "workloads" / workload, list(sets.items()),
                                   ROOT / "hardware_models" / hardware if hardware else None)
        summary = summarize(run(wl, hw, hw_path.name, workload))
    except ConfigError as e:
        return {"error": str(e).replace(str(ROOT) + "/", "")}
    summary.pop("events")
    return flatten(summary)


def differences(want: dict, got: dict) -> list[str]:
    out = []
    for k in sorted(set(want) | set(got)):
        a, b = want.get(k, "<missing>"), got.get(k, "<missing>")
        same = (isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool)
                and math.isclose(a, b, rel_tol=REL, abs_tol=1e-30)) or a == b
        if not same:
            out.append(f"{k}: stored {a!r}, now {b!r}")
    return out


def load_golden() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


@pytest.mark.parametrize("label,workload,hardware,sets", cases(), ids=[c[0] for c in cases()])
def test_figures_match_the_stored_golden_values(label, workload, hardware, sets):
    stored = load_golden()
    assert label in stored, f"no golden values for {label}: run python tests/test_golden.py --update"
    diff = differences(stored[label], figures(workload, hardware, sets))
    assert not diff, f"{label}: {len(diff)} figures moved:\n  " + "\n  ".join(diff[:40])


def test_every_stored_case_is_still_a_case():
    assert sorted(load_golden()) == sorted(c[0] for c in cases())


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_golden.py --update")
    sys.path.insert(0, str(ROOT))
    old = load_golden()
    new = {label: figures(w, h, s) for label, w, h, s in cases()}
    for label, figs in new.items():
        for line in [] if label not in old else differences(old.get(label, {}), figs)[:10]:
            print(f"{label}: {line}")
    GOLDEN.write_text(json.dumps(new, indent=0, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({len(new)} cases)")
