"""Calibration and validation plumbing (the measurements themselves are benchmarks, not tests)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import DATA, ROOT, cli, load
from sim.config import load_hardware
from sim.errors import ConfigError
from sim.graph import build_graph
from sim.mapping import place
from sim.validate import calibrate as cal
from sim.validate import cases as live
from sim.validate import native
from sim.validate.calibrate import os_caches, typical_time, write_model
from sim.validate.cases import Case, Timed, live_cases, machine_drift, matmul_op, predict_matmul
from sim.validate.gpu import gpu_figures, runtime_figures
from sim.validate.published import (
    DATA as VALIDATION_DATA,
)
from sim.validate.published import (
    calibrations,
    measured_cases,
    measured_peak_bytes,
    measured_seconds,
    predict_allreduce,
    predict_row,
    published_cases,
    published_rows,
)
from sim.validate.reference import Reference
from sim.validate.report import drift_line, to_markdown


def test_efficiency_table_interpolates_in_log_rows():
    hw = load(DATA / "toy-gpt.yaml", device__compute__matrix_efficiency={16: 0.4, 256: 0.8})[1]
    c = hw.device.compute
    assert c.efficiency(1) == 0.4 and c.efficiency(4096) == 0.8
    assert c.efficiency(64) == pytest.approx(0.6)  # halfway between 16 and 256 in log2


def test_a_gemm_on_the_vector_units_runs_at_the_librarys_efficiency_too():
    """On a CPU the matrix engine is the vector units: a compute-bound fp32 GEMM on the Xeon (2.56 TFLOP/s,
    matrix_efficiency 0.90) takes its FLOPs over 0.90 x the peak, not the bare peak (it took the vector
    path at full rate before)."""
    from sim.mapping.plan import Planner
    from sim.validate.cases import matmul_op

    hw = load_hardware(ROOT / "hardware_models/xeon-gold-6242.yaml")
    op = matmul_op("gemm", 4096, 4096, 4096, "fp32")
    plan = Planner(hw, place([op], hw)).plan(op)
    assert plan.compute_s == pytest.approx(2 * 4096**3 / (0.90 * 2.56e12), rel=0.02)
    full = load_hardware(ROOT / "hardware_models/xeon-gold-6242.yaml",
                         [("device.compute.matrix_efficiency", {1: 1.0})])
    assert Planner(full, place([op], full)).plan(op).compute_s == pytest.approx(0.90 * plan.compute_s, rel=1e-9)


def test_a_gemm_whose_weight_streams_from_dram_runs_at_the_cold_efficiency():
    """With a cold-weight table, a GEMM whose weight the walk served from DRAM takes it (here half the
    rate); the same GEMM again, its weight now in the L3, takes the cached table. Without the table,
    both take the cached one."""
    from sim.mapping.plan import Planner
    from sim.validate.cases import matmul_op

    xeon = ROOT / "hardware_models/xeon-gold-6242.yaml"
    hw = load_hardware(xeon, [("device.compute.matrix_efficiency_cold", {1: 0.45})])
    ops = [matmul_op("first", 64, 1024, 1024), matmul_op("again", 64, 1024, 1024)]  # a 4 MiB weight, L3 22 MiB
    planner = Planner(hw, place(ops, hw))
    cold, warm = (planner.plan(op) for op in ops)
    assert any(lvl == "dram" for lvl, _ in cold.loads) and not any(lvl == "dram" for lvl, _ in warm.loads)
    assert cold.compute_s == pytest.approx(2 * warm.compute_s)  # 0.45 against the Xeon's 0.90
    plain = load_hardware(xeon)
    planner = Planner(plain, place(ops, plain))
    first, second = (planner.plan(op) for op in ops)
    assert first.compute_s == pytest.approx(second.compute_s) == pytest.approx(warm.compute_s)
    # the weight warm, a new 8 MiB input from DRAM: not a cold weight
    wide = matmul_op("again", 2048, 1024, 1024, tensors="big_")
    wide = replace(wide, reads=(wide.reads[0], ops[1].reads[1]))
    planner = Planner(hw, place(ops + [wide], hw))
    planner.plan(ops[0])
    assert planner._cold_weight(wide, planner.walk(wide)) is False
    # attention's products read the KV cache, not a weight: never the cold table
    from sim.graph import build_graph

    wl, hw_toy = load(DATA / "toy-gpt.yaml", device__compute__matrix_efficiency_cold={1: 0.1})
    graph = build_graph(wl)
    ops_all = graph.ops
    planner = Planner(hw_toy, place(graph, hw_toy))
    scores = [op for op in ops_all if op.name.endswith("scores")]
    assert scores and not any(planner._cold_weight(op, planner.walk(op)) for op in scores)


def test_reference_forward_runs_the_graph_shapes(toy):
    wl, _ = toy
    ref = Reference(wl.model, batch=2, max_context=16)
    out = ref.forward(np.zeros((2, 8), np.int64), 0)
    assert out.shape == (2, wl.model.vocab)
    step = ref.forward(np.zeros((2, 1), np.int64), 8)
    assert step.shape == (2, wl.model.vocab) and np.isfinite(step).all()
    # the reference holds exactly the weights the graph counts
    held = sum(a.size for a in [ref.wte, ref.wpe, *ref.ln_f]
               + [v for layer in ref.layers for p in layer.values() if p is not None
                  for v in (p if isinstance(p, tuple) else (p,))])
    assert held == sum(t.elements for t in build_graph(wl).tensors().values() if t.kind == "weight")


def test_gqa_reference_decodes():
    wl, _ = load(ROOT / "workloads/llama2-7b.yaml", model__layers=1, model__hidden=64, model__heads=8,
                 model__kv_heads=2, model__ffn=128, model__vocab=100, scenario__prompt_tokens=4, scenario__new_tokens=1)
    ref = Reference(wl.model, 1, 8)
    ref.forward(np.zeros((1, 4), np.int64), 0)
    assert ref.forward(np.zeros((1, 1), np.int64), 4).shape == (1, 100)


def test_the_reference_gives_the_same_logits_in_every_installed_framework():
    """numpy and eager PyTorch run one definition of the model: the same weights give the same outputs
    (GPT, Llama with GQA and RoPE, BERT). Runs only where PyTorch is installed (`pip install -e
    '.[torch]'`; the CI installs none, and skips it)."""
    from sim.validate.kernels import FRAMEWORKS, kernels_of

    installed = [kernels_of(name) for name in FRAMEWORKS if kernels_of(name) is not None]
    if len(installed) < 2:
        pytest.skip("only numpy is installed")
    for path, sets in (("workloads/gpt2.yaml", {}), ("workloads/bert-base.yaml", {"scenario__phase": "encode"}),
                       ("workloads/llama2-7b.yaml", {"model__hidden": 128, "model__heads": 4, "model__kv_heads": 2,
                                                     "model__ffn": 256})):
        wl, _ = load(ROOT / path, model__layers=1, scenario__prompt_tokens=8, **sets)
        outs = [np.asarray(Reference(wl.model, 1, 9, kernels=k).forward(np.zeros((1, 8), np.int64), 0))
                for k in installed]
        assert all(np.allclose(out, outs[0], atol=1e-4) for out in outs[1:]), path


def test_a_framework_that_is_not_installed_is_one_line(tmp_path):
    from sim.validate.kernels import kernels_of

    if kernels_of("torch") is not None:
        pytest.skip("PyTorch is installed here")
    for command, out in (("calibrate", "--out"), ("validate", "--hardware")):
        r = cli(command, "--framework", "torch", out, str(tmp_path / "hw.yaml"),
                "--runtime-out" if command == "calibrate" else "--runtime", str(tmp_path / "rt.yaml"))
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "--framework: torch is not installed here" in r.stderr
    assert not list(tmp_path.iterdir())


def test_warm_matmul_prediction_hits_the_cache_cold_does_not():
    hw = load_hardware(DATA / "toy-cache-hw.yaml")
    # 64 x 64 fp32 weights (16 KiB) fit the 256 KiB L2: the second run reads them from there
    warm = predict_matmul(hw, 1, 64, 64)
    assert 0 < warm < 64 * 64 * 4 / 10e9  # faster than streaming them from DRAM
    cold = predict_matmul(hw, 1, 64, 64, cold=True)  # other weights of the same shape: from DRAM
    assert cold >= 64 * 64 * 4 / 10e9


def test_allreduce_prediction_matches_the_ring_formula():
    hw = load_hardware(ROOT / "hardware_models/a100-sxm4-80gb.yaml")
    t = predict_allreduce(hw, 2**30, 8)
    ring = 2 * 7 / 8 * 2**30 / (300e9 * hw.interconnect.link.efficiency) + 14 * hw.interconnect.link.latency
    assert t == pytest.approx(ring, rel=1e-6)


def test_published_rows_cite_sources_and_convert_to_seconds():
    rows = published_rows()
    assert {r["kind"] for r in rows} == {"matmul", "allreduce", "generate", "train", "train_memory", "ratio"}
    for row in rows:
        measured = measured_peak_bytes(row) if row["kind"] == "train_memory" else measured_seconds(row)
        assert measured > 0 and row["source"].count("http") >= 1
        assert (ROOT / "hardware_models" / f"{row['hardware']}.yaml").exists()
        if row["kind"] in ("generate", "train", "train_memory", "ratio"):
            assert (ROOT / "workloads" / f"{row['workload']}.yaml").exists()
    # the published figure, converted: nccl-tests busbw = algbw x 2(p-1)/p; a GEMM's FLOP/s; tokens/s
    assert measured_seconds({"bytes": 2**20, "devices": 8, "busbw": "1.75 GB/s"}) == pytest.approx(2**20 / 1e9)
    assert measured_seconds({"bytes": 2**20, "devices": 4, "time": "101.9 us"}) == pytest.approx(101.9e-6)  # as printed
    assert measured_seconds({"m": 10, "n": 10, "k": 10, "rate": "2 kFLOP/s"}) == pytest.approx(1.0)
    assert measured_seconds({"tokens": 200, "tokens_per_s": 100}) == pytest.approx(2.0)
    assert measured_seconds({"samples": 8192, "samples_per_s": 580}) == pytest.approx(8192 / 580)  # a step
    # Megatron-LM's achieved TFLOP/s per GPU, back to the step through its eq. 3: 96 B s l h^2 (1 + s/6h + V/16lh)
    megatron = {"scenario.batch": 1536, "scenario.prompt_tokens": 2048, "model.layers": 96, "model.hidden": 12288,
                "model.vocab": 51200}
    flops = 96 * 1536 * 2048 * 96 * 12288 ** 2 * (1 + 2048 / (6 * 12288) + 51200 / (16 * 96 * 12288))
    assert measured_seconds({"tflops_per_gpu": 140, "gpus": 1024, "set": megatron}) == pytest.approx(
        flops / (140e12 * 1024))
    assert measured_peak_bytes({"peak_mib_per_gpu": 100}) == 100 * 2 ** 20


def test_a_ratio_row_is_a_latency_over_its_reference_case_s():
    """The memory-wall study publishes CPU latency only normalised to BERT-Base at 128 tokens: such a row
    is predicted as its case's time over the reference case's (the reference itself gives exactly 1), and
    reported as a ratio, not in seconds."""
    rows = [r for r in published_rows() if r["kind"] == "ratio"]
    assert rows and all(r["reference"]["workload"] == "bert-base" for r in rows)
    row = next(r for r in rows if r["name"] == "BERT-Base, 2048 tokens")
    itself = {**row, "set": row["reference"]["set"], "normalized": 1}
    assert predict_row(itself)[1] == pytest.approx(1.0, rel=1e-12)
    assert 16 < predict_row(row)[1] < 64  # 16x the tokens: more than linear (attention), far from quadratic
    assert measured_seconds({"normalized": 25}) == 25
    case = Case("g", "n", 28.2, 25.0, unit="x")
    assert (case.shown(case.predicted_s), f"{case.error:+.3f}") == ("28.2x", "+0.128")


def test_gpu_measurements_memwall_took_are_all_predicted():
    """Every row of sim/data/measured-*.yaml (bench/gpu_measure.py's output) becomes a case, predicted
    with graph-replay settings its series sets (no host cost per kernel) merged under the row's own."""
    files = sorted(VALIDATION_DATA.glob("measured-*.yaml"))
    assert files, "no GPU measurements shipped"
    rows = [r for f in files for r in published_rows(f)]
    cases = measured_cases()
    assert len(cases) == len(rows) and all(c.predicted_s > 0 and c.measured_s > 0 for c in cases)
    forward = [r for r in rows if r["kind"] == "generate"]
    assert forward and all(r["set"]["runtime.graphs"] is True and "scenario.phase" in r["set"]
                           for r in forward)


def test_calibration_rows_fit_an_additive_cost_and_are_held_out(tmp_path: Path):
    """A series' calibration rows set its additive parameter (median residual) and are not predicted;
    the other rows of the series are predicted with it."""
    hw = load_hardware(ROOT / "hardware_models/a100-sxm4-80gb.yaml", runtime=ROOT / "runtimes/compiled.yaml")
    base = predict_allreduce(hw, 4096, 8)
    data = {"series": {"s": {"group": "g", "kind": "allreduce", "hardware": "a100-sxm4-80gb", "devices": 8,
                             "runtime": "compiled", "calibrates": "interconnect.collective_overhead", "source": "http://x"}},
            "cases": [{"series": "s", "name": "cal", "bytes": 4096, "measured_s": base + 30e-6, "role": "calibration"},
                      {"series": "s", "name": "held out", "bytes": 4096, "measured_s": base + 30e-6}]}
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump(data))
    (key, value, n), = calibrations(published_rows(path)).values()
    assert key == "interconnect.collective_overhead" and value == pytest.approx(30e-6, rel=1e-3) and n == 1
    cases, notes = published_cases(path)
    assert [c.name for c in cases] == ["held out"] and abs(cases[0].error) < 1e-3 and len(notes) == 1
    # a series that borrows the calibrated cost is predicted with it; one that does not, without
    data["series"]["b"] = {**data["series"]["s"], "calibrates": None, "borrows": "s"}
    data["series"]["n"] = {**data["series"]["s"], "calibrates": None}
    data["cases"] += [{"series": "b", "name": "borrows", "bytes": 4096, "measured_s": base + 30e-6},
                      {"series": "n", "name": "does not", "bytes": 4096, "measured_s": base + 30e-6}]
    path.write_text(yaml.safe_dump(data))
    cases, _ = published_cases(path)
    error = {c.name: c.error for c in cases}
    assert abs(error["borrows"]) < 1e-3 and error["does not"] < -0.1


def test_a_per_step_calibration_divides_the_residual_by_the_steps(tmp_path: Path):
    """A parameter a row pays once per step (a framework's host time per step) is calibrated per step:
    a measurement made with 50 us per step gives back 50 us, whatever the number of steps; the held-out
    row is then predicted with it, and the table names the row's runtime."""
    settings = {"scenario.phase": "generate", "scenario.batch": 1, "scenario.prompt_tokens": 8,
                "scenario.new_tokens": 3, "model.layers": 1}
    series = {"group": "g", "kind": "generate", "hardware": "a100-sxm4-80gb", "workload": "gpt2",
              "runtime": "serving", "calibrates": "runtime.step_overhead", "source": "http://x", "set": settings}
    row = {**series, "series": "s", "name": "cal"}
    measured = predict_row(row, [("runtime.step_overhead", "50 us")])[1]
    assert measured > predict_row(row, [("runtime.step_overhead", "0 s")])[1] + 100e-6  # paid more than twice
    data = {"series": {"s": series},
            "cases": [{"series": "s", "name": "cal", "measured_s": measured, "role": "calibration"},
                      {"series": "s", "name": "held out", "measured_s": measured}]}
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump(data))
    (key, value, n), = calibrations(published_rows(path)).values()
    assert key == "runtime.step_overhead" and value == pytest.approx(50e-6, rel=1e-6) and n == 1
    cases, notes = published_cases(path)
    assert [c.name for c in cases] == ["held out"] and abs(cases[0].error) < 1e-6
    assert "prediction meets its measurement" in notes[0]
    assert "| `serving` |" in to_markdown([], cases, "")


def test_every_calibrating_series_has_its_rows_and_every_calibration_row_its_parameter():
    """published.yaml: a series that names `calibrates` has calibration rows (else it would run
    uncalibrated, silently), and a calibration row belongs to such a series."""
    rows = published_rows()
    for series in {r["series"] for r in rows}:
        mine = [r for r in rows if r["series"] == series]
        calibrating = [r for r in mine if r.get("role") == "calibration"]
        assert bool(calibrating) == bool(mine[0].get("calibrates")), series
        assert all(r["calibrates"] == mine[0]["calibrates"] for r in calibrating)


def test_a_calibration_reads_its_line_above_zero_where_the_host_starts_waiting(tmp_path):
    """Under a runtime whose host runs ahead, any step cost makes it wait at every step: the prediction
    jumps as the parameter leaves 0, then grows in step with it. The fit takes its line above 0, so a
    measurement made with 300 us per step gives back 300 us."""
    settings = {"scenario.phase": "generate", "scenario.batch": 1, "scenario.prompt_tokens": 8,
                "scenario.new_tokens": 3, "model.layers": 1}
    series = {"group": "g", "kind": "generate", "hardware": "a100-sxm4-80gb", "workload": "gpt2",
              "runtime": "eager-pytorch", "calibrates": "runtime.step_overhead", "source": "http://x",
              "set": settings}
    row = {**series, "series": "s", "name": "cal"}
    at = {v: predict_row(row, [("runtime.step_overhead", f"{v} us")])[1] for v in (0, 1, 300, 600)}
    assert at[1] - at[0] > 4 * (at[600] - at[300]) / 300  # the jump: more than 1 us x its 4 steps
    data = {"series": {"s": series}, "cases": [{"series": "s", "name": "cal", "measured_s": at[300],
                                                "role": "calibration"}]}
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump(data))
    (key, value, _), = calibrations(published_rows(path)).values()
    assert value == pytest.approx(300e-6, rel=1e-6)
    data["series"]["s"]["calibrates"] = None
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="calibrates"):
        calibrations(published_rows(path))


def test_case_error_sign():
    assert Case("g", "c", 1.1, 1.0).error == pytest.approx(0.1)


def test_cold_pool_hands_out_the_least_recently_used_window():
    """Consecutive weights are disjoint windows of the pool; a weight that would run past its end starts
    again at the front, which the others have not touched for longest."""
    pool = cal.ColdPool(10 * 4 * 16)  # ten 4 x 4 weights
    taken = [pool.take(4, 4) for _ in range(11)]
    starts = [w.__array_interface__["data"][0] for w in taken]
    assert len(set(starts[:10])) == 10 and starts[10] == starts[0]
    with pytest.raises(ValueError):
        pool.take(100, 100)


def test_live_cases_predict_with_the_model_against_each_cases_median_round():
    timed = [Timed("g", "a", lambda hw: 2.0 * hw, lambda: None), Timed("g", "b", lambda hw: hw, lambda: None)]
    cases = live_cases(3.0, timed, [[5.0, 4.0, 6.0], [1.0, 2.0, 3.0]])
    assert [(c.predicted_s, c.measured_s, c.spread) for c in cases] == [(6.0, 5.0, 0.2), (3.0, 2.0, 0.5)]
    assert live.spread([1.0, 1.0, 1.0, 100.0]) == pytest.approx(24.75)  # q1 1, q3 25.75 over the median 1
    assert live.spread([1.0] * 15 + [100.0]) == 0.0  # one round in a burst of load moves it not at all
    assert live.spread([3.0]) == 0.0
    times = [[], []]
    live.time_round(timed, times)
    assert all(len(t) == 1 and t[0] >= 0 for t in times)
    timed.append(Timed("g", "c", lambda hw: hw, lambda: None, stage="dram"))
    times.append([])
    live.time_round(timed, times, "dram")  # only that stage's cases
    assert [len(t) for t in times] == [1, 1, 1]


def test_gemv_cases_are_cold_and_warm_only_where_the_weight_fits_half_the_last_cache(monkeypatch):
    """Re-reading a weight larger than the cache would time its replacement policy, which memwall does
    not model: with a 16 MiB last cache only GPT-2's 6.75 MiB qkv weight (of the quick shapes) is timed
    warm, and every shape cold."""
    monkeypatch.setattr(cal, "os_caches", lambda: [{"level": 3, "bytes": 16 << 20, "private": False}])
    gemvs = [c for c in live.matmul_cases(quick=True) if c.group.startswith("GEMV")]
    warm = [c.name for c in gemvs if "warm" in c.group]
    cold = [c.name for c in gemvs if "cold" in c.group]
    assert warm == ["GPT-2 qkv 768x2304"] and len(cold) == 5
    # each timed right after the calibration stage that measures its memory level
    assert {c.stage for c in gemvs if "warm" in c.group} == {"caches"}
    assert {c.stage for c in gemvs if "cold" in c.group} == {"dram"}


def test_gemv_rates_are_net_of_the_dispatch_the_model_adds_back():
    """A GEMV's bytes over its time less the framework's per-call cost (the model charges that as the
    op's dispatch, so a prediction of the calibrated shape is its measurement); never below a tenth of
    the call, whatever the overhead."""
    assert cal._net_rate(100, 2.0, 1.0) == pytest.approx(100.0)
    assert cal._net_rate(100, 2.0, 0.0) == pytest.approx(50.0)
    assert cal._net_rate(100, 1.0, 5.0) == pytest.approx(1000.0)


def test_calibration_helpers(tmp_path: Path):
    assert typical_time(lambda: sum(range(100)), min_time=0.001, repeats=2) > 0
    assert all(c["bytes"] > 0 for c in os_caches())
    data = yaml.safe_load((DATA / "toy-hw.yaml").read_text())
    write_model(data, tmp_path / "hw.yaml", tmp_path / "rt.yaml")
    bare, hw = load_hardware(tmp_path / "hw.yaml"), load_hardware(tmp_path / "hw.yaml", runtime=tmp_path / "rt.yaml")
    assert bare.name == "toy" and bare.device.platform == "cpu" and bare.device.dispatch_overhead == 0
    assert hw.device.dispatch_overhead == pytest.approx(1e-6) and hw.runtime == "numpy on this machine"
    # an output that cannot be written leaves neither file
    from sim.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot write"):
        write_model(data, tmp_path / "new-hw.yaml", tmp_path / "hw.yaml" / "rt.yaml")
    assert not list(tmp_path.glob("new-hw.yaml*"))


@pytest.mark.skipif(not native.available(), reason="no C compiler")
def test_native_microbenchmarks_see_the_hierarchy():
    """A chase through 64 MiB (past every cache) waits longer per load than one inside L1, and the
    read loop moves bytes at a plausible rate."""
    near, far = native.load_latency(16 << 10, steps=200_000), native.load_latency(64 << 20, steps=200_000)
    assert 0 < near < far
    assert 1e9 < native.read_bandwidth(16 << 10, seconds=0.005) < 1e13


def test_validate_rounds_option_states_its_default_and_refuses_zero():
    """`--help` gives the rounds a run takes without the option; no rounds is a usage error (exit 2, one
    line naming the option), before anything is measured or written."""
    assert f"[default: {live.ROUNDS};" in " ".join(cli("validate", "--help").stdout.split())
    bad = cli("validate", "--rounds", "0", "--no-published", "--no-measured")
    assert bad.returncode == 2 and "--rounds" in bad.stderr and "Traceback" not in bad.stderr


def test_machine_drift_compares_the_machine_with_its_model():
    """Each figure is measured now over the calibrated one: a toy claiming 1 GB/s of DRAM sees this
    machine's DRAM as far faster than that; the line names every figure before and after."""
    hw = load(DATA / "toy-gpt.yaml", device__memory__dram__bandwidth="1 GB/s")[1]
    drift = machine_drift(hw)
    assert set(drift) == {"GEMM peak", "DRAM bandwidth"} and drift["DRAM bandwidth"] > 1
    line = drift_line(drift, drift)
    assert "GEMM peak" in line and "DRAM bandwidth" in line and "x / " in line
    assert "after the live cases: GEMM peak" in drift_line(None, drift)  # calibrated between the cases


@pytest.mark.parametrize("bursts", [1, 2])
def test_calibration_measures_contradicting_figures_again_and_never_writes_them(monkeypatch, bursts):
    """A burst of load can make a cold L3 read faster than L1 in one measurement: no hierarchy has that.
    `calibrate` then measures everything once more; if the contradiction stays, it refuses in one line
    (naming the level) rather than return a model that says it."""
    from sim.errors import ConfigError

    caches = [{"level": 1, "bytes": 32 << 10, "private": True}, {"level": 3, "bytes": 8 << 20, "private": False}]
    calls = []

    def figures(caches, cores, compiled, dram_bytes, progress, after, kern=None):
        calls.append(1)
        l1 = 10e9 if len(calls) <= bursts else 200e9  # the first (and with 2, every) measurement contradicts
        return {"l1.bw": l1, **{f"l3.size.{(8 << 20) // k}": 50e9 for k in cal.CACHE_FRACTIONS},
                "l3.run.256": 25e9, "l3.run.1024": 40e9, "dram.copy": 10e9, "dram.gemv": 20e9, "fp32": 1e11,
                "fp16": 1e9, "dispatch.add": 2e-6, "vector.add": 4e9, **{f"rows.{m}": 5e10 for m in cal.ROWS},
                **{f"cold_rows.{m}": 4e10 for m in cal.ROWS},
                **{f"depth.{k}": 1e9 for k in cal.DEPTHS + (cal.MATRIX_SIZE,)},
                **{f"alias.{m}": 0.9 for m in cal.ALIAS_ROWS},
                **{f"cold.{s}": 10e9 for s in cal.COLD_SIZES}, **{f"dram.run.{n}": 5e9 for n in cal.RUN_COLUMNS}}

    monkeypatch.setattr(cal, "os_caches", lambda: caches)
    monkeypatch.setattr(cal, "_measure_once", figures)
    monkeypatch.setattr(cal.native, "available", lambda: False)
    if bursts == 1:
        data = cal.calibrate(rounds=1)
        assert len(calls) == 2 and cal.contradictions(data["device"]["memory"]) == []
        return
    with pytest.raises(ConfigError, match="l3 read at 50.0 GB/s, faster than l1 inside it at 10.0 GB/s") as err:
        cal.calibrate(rounds=1)
    assert err.value.key == "device.memory.l3.bandwidth" and len(calls) == 2


@pytest.mark.parametrize("compiled", [True, False])
def test_calibration_assembles_a_loadable_model_from_its_figures(tmp_path: Path, monkeypatch, compiled):
    """The YAML `calibrate` writes, from given figures: the median round of each (here the second of
    three rounds, whatever their order), DRAM's efficiency by size relative to its bandwidth, each kernel's own costs
    with their medians as the device-wide ones, and what was measured how; without a C compiler the
    latencies are the assumed ones and the notes say so."""
    caches = [{"level": 1, "bytes": 32 << 10, "private": True}, {"level": 3, "bytes": 8 << 20, "private": False}]
    rounds = iter([3.0, 1.0, 2.0])

    def figures(caches, cores, compiled, dram_bytes, progress, after, kern=None):
        f = next(rounds)
        for stage in cal.STAGES:
            after(stage)
        l3 = dict(zip(cal.CACHE_FRACTIONS, (40e9, 50e9, 50e9, 45e9)))  # 512 KiB .. 4 MiB
        out = {"l1.bw": 100e9 * f, **{f"l3.size.{(8 << 20) // k}": r * f for k, r in l3.items()},
               "l3.run.256": 25e9, "l3.run.1024": 40e9,
               "dram.copy": 10e9, "dram.gemv": 20e9 * f, "fp32": 1e11 * f,
               "fp16": 1e9, "dispatch.add": 2e-6 / f, "dispatch.gelu": 6e-6 / f, "dispatch.matmul": 5e-6 / f,
               "dispatch.linear": 5e-6 / f, "epilogue.linear": 0.5e9 * f,
               "vector.add": 4e9, "vector.gelu": 1e9 * f, **{f"rows.{m}": 5e10 for m in cal.ROWS},
               **{f"cold_rows.{m}": 4e10 for m in cal.ROWS},
               **{f"depth.{k}": 1e9 * k ** 0.5 * f for k in cal.DEPTHS + (cal.MATRIX_SIZE,)},
               **{f"alias.{m}": min(1.2, 0.3 * f * (1 + i)) for i, m in enumerate(cal.ALIAS_ROWS)},
               **{f"cold.{s}": 10e9 for s in cal.COLD_SIZES}, f"cold.{16 << 20}": 50e9,
               **{f"dram.run.{n}": 5e9 for n in cal.RUN_COLUMNS}}
        if compiled:
            out.update({"l1.lat": 2e-9 * f, "l3.lat": 20e-9 * f, "dram.lat": 100e-9 * f})
        return out

    monkeypatch.setattr(cal, "os_caches", lambda: caches)
    monkeypatch.setattr(cal, "_measure_once", figures)
    monkeypatch.setattr(cal.native, "available", lambda: compiled)
    stages = []
    data = cal.calibrate(rounds=3, between=lambda r, stage: stages.append((r, stage)))
    assert stages == [(r, stage) for r in range(3) for stage in cal.STAGES]
    cal.write_model(data, tmp_path / "host.yaml", tmp_path / "host-numpy.yaml")
    assert load_hardware(tmp_path / "host.yaml").device.kernels == {}  # the framework's costs: the runtime's
    hw = load_hardware(tmp_path / "host.yaml", runtime=tmp_path / "host-numpy.yaml")
    dram = hw.levels["dram"]
    assert hw.levels["l1"].bandwidth == pytest.approx(200e9)
    assert dram.bandwidth == pytest.approx(50e9)  # the fastest figure, a cold 16 MiB GEMV's, unclipped ...
    assert hw.device.compute.peak["fp32"] == pytest.approx(2e11)
    assert hw.device.compute.matrix_efficiency == {m: 0.25 for m in cal.ROWS}  # rows: 5e10 of 2e11
    assert hw.device.compute.matrix_efficiency_cold == {m: 0.2 for m in cal.ROWS}  # cold rows: 4e10
    assert hw.device.dispatch_overhead == pytest.approx(2.5e-6)  # the median kernel's, matmul's
    assert hw.device.dispatch_for("gelu") == pytest.approx(3e-6)
    assert hw.device.dispatch_for("tanh") == pytest.approx(2.5e-6)  # no kernel of its own: the median
    assert hw.device.vector_for("gelu") == pytest.approx(2e9)
    assert hw.device.vector_for("add") == pytest.approx(4e9)
    assert hw.device.epilogue_for("linear") == pytest.approx(1e9) and hw.device.epilogue_for("matmul") is None
    assert hw.device.compute.vector == pytest.approx(3e9) and hw.device.kernels["matmul"].vector is None
    assert dram.bandwidth_for(1 << 20) == pytest.approx(10e9, rel=1e-3)  # 10 of the 50 GB/s: 0.2
    assert dram.effective_bandwidth == pytest.approx(40e9)  # ... a long transfer the largest GEMV's
    assert dram.bandwidth_for(64 << 20, run=4 * 256) == pytest.approx(0.5 * dram.bandwidth_for(64 << 20))
    assert dram.efficiency_by_run[1024] == 0.5 and 1 << 16 not in hw.levels["l1"].efficiency_by_run
    l3 = hw.levels["l3"]  # the fastest size (median round) is the bandwidth; the run table is over a quarter's
    assert l3.bandwidth == pytest.approx(100e9)
    assert l3.efficiency_by_size == {512 << 10: 0.8, 1 << 20: 1.0, 2 << 20: 1.0, 4 << 20: 0.9}
    assert l3.efficiency_by_run == {1024: 0.25, 4096: 0.4, 16384: 1.0}  # over the 2 MiB one's, 100e9
    depth = hw.device.compute.matrix_efficiency_by_depth  # each K's rate over K = MATRIX_SIZE's, same round
    assert depth == {k: round((k / cal.MATRIX_SIZE) ** 0.5, 3) for k in cal.DEPTHS} | {cal.MATRIX_SIZE: 1.0}
    # the aliased rows' rate over the unaliased ones' (the median round), at most 1; the L1's set span (4 KiB
    # where sysfs does not say)
    assert hw.device.compute.matrix_efficiency_aliased == {m: round(min(1.0, 0.6 * (1 + i)), 3)
                                                           for i, m in enumerate(cal.ALIAS_ROWS)}
    assert hw.device.compute.aliasing_stride == 4096
    assert hw.levels["l1"].latency == pytest.approx(4e-9 if compiled else 1.5e-9)  # the median round too
    assert ("no C compiler" in data["calibration"]["device.memory.l1"]) is not compiled


def test_one_published_row_of_each_kind_predicts_the_right_order_of_magnitude():
    """Real rows, real hardware models: a units or conversion slip (bytes vs bits, per-direction vs
    bidirectional, tokens vs steps) would put a prediction off by 2x or more; the model is within 2x."""
    rows = published_rows()
    picks = [next(r for r in rows if r["series"] == "azure-a100-gemm" and r["m"] == 8192),
             next(r for r in rows if r["series"] == "azure-a100-nccl" and r["bytes"] == 1 << 30),
             next(r for r in rows if r["series"] == "gpt-fast-a100" and r["name"] == "Llama-2 7B bf16, TP1")]
    for row in picks:
        predicted = predict_row(row)[1]
        assert 0.5 < predicted / measured_seconds(row) < 2.0, row["name"]


def test_a_dtype_can_have_its_own_efficiency_table():
    """fp16 at 0.5 of its peak, everything else at 0.8: the fp16 GEMM's compute time is 1.6x what the
    general table gives it."""
    from sim.mapping.plan import Planner

    base = load(DATA / "toy-gpt.yaml", device__compute__matrix_efficiency={1: 0.8})[1]
    own = load(DATA / "toy-gpt.yaml", device__compute__matrix_efficiency={1: 0.8},
               device__compute__matrix_efficiency_by_dtype={"fp16": {1: 0.5}})[1]
    assert own.device.compute.efficiency(64, "fp16") == 0.5 and own.device.compute.efficiency(64, "fp32") == 0.8
    op = matmul_op("g", 256, 256, 256, "fp16")
    times = [Planner(hw, place([op], hw)).plan(op).compute_s for hw in (base, own)]
    assert times[1] == pytest.approx(1.6 * times[0])


def test_the_shipped_h200_model_takes_its_figures_from_the_shipped_microbenchmarks():
    """The H200 model's L2 and HBM latencies and HBM efficiency by size are what sim/validate/gpu.py
    derives from the microbenchmarks memwall measured on an H200."""
    micro = yaml.safe_load((VALIDATION_DATA / "measured-h200.yaml").read_text())["microbenchmarks"]
    hw = load_hardware(ROOT / "hardware_models/h200-sxm.yaml")
    fig = gpu_figures(micro, hw.levels["hbm"].bandwidth)
    assert hw.levels["l2"].latency == pytest.approx(fig["l2_latency"])
    assert hw.levels["hbm"].latency == pytest.approx(fig["dram_latency"])
    assert hw.levels["hbm"].efficiency_by_size == pytest.approx(fig["efficiency_by_size"])


@pytest.mark.parametrize("runtime,measured", [("compiled", "compiled"), ("eager-pytorch", "eager")])
def test_the_shipped_runtimes_take_their_cuda_figures_from_the_shipped_microbenchmarks(runtime, measured):
    """The compiled and eager PyTorch runtimes' launch and matmul overheads, each kernel's fixed time and
    the norms' time per row element on a GPU, and eager PyTorch's dispatch, are what sim/validate/gpu.py
    derives from the H200 microbenchmarks; the machine they land on has them."""
    micro = yaml.safe_load((VALIDATION_DATA / "measured-h200.yaml").read_text())["microbenchmarks"]
    fig = runtime_figures(micro, measured)
    dev = load_hardware(ROOT / "hardware_models/h200-sxm.yaml", runtime=ROOT / f"runtimes/{runtime}.yaml").device
    assert dev.launch_overhead == pytest.approx(fig["launch_overhead"])
    assert dev.compute.matmul_overhead == pytest.approx(fig["matmul_overhead"])
    fixed = {k: c.fixed for k, c in dev.kernels.items()}
    assert fixed == pytest.approx(fig["kernel_fixed"]) and len(fixed) == 8
    rows = {k: c.row_element for k, c in dev.kernels.items() if c.row_element}
    assert rows == pytest.approx(fig["row_element"]) and set(rows) == {"layernorm", "rmsnorm"}
    if "dispatch_overhead" in fig:
        assert dev.dispatch_overhead == pytest.approx(fig["dispatch_overhead"])


def test_gpu_figures_invert_the_engines_copy_time():
    """A copy the engine would time at launch + latency + 2 S / (B x e) gives back e; a runtime's kernel
    fixed times are its tiny ops less one launch."""
    micro = {"tiny_kernel_in_graph_s": 1e-6, "tiny_op_in_graph_s": {"linear": 2.5e-6, "add": 1.5e-6},
             "compiled_tiny_op_in_graph_s": {"add": 1.2e-6},
             "load_latency_s_by_bytes": {1 << 20: 1e-7, 1 << 30: 4e-7},
             "copy_s_by_bytes": {s: 1e-6 + 4e-7 + 2 * s / (1e12 * e) for s, e in ((1 << 20, 0.5), (1 << 26, 0.8))}
             | {1 << 30: 1.0}}  # larger than the largest copy taken: left out
    fig = gpu_figures(micro, 1e12)
    assert fig["efficiency_by_size"] == {1 << 20: 0.5, 1 << 26: 0.8}
    assert fig["dram_latency"] == pytest.approx(4e-7) and fig["l2_latency"] == pytest.approx(1e-7)
    compiled = runtime_figures(micro, "compiled")
    assert compiled["matmul_overhead"] == pytest.approx(1.5e-6) and compiled["launch_overhead"] == pytest.approx(1e-6)
    assert compiled["kernel_fixed"] == {"add": pytest.approx(2e-7)}  # the fused runtime's op beyond the launch
    assert runtime_figures({**micro, "tiny_kernel_eager_s": 7e-6}, "eager")["kernel_fixed"] == {
        "add": pytest.approx(5e-7)}


def test_eager_passes_take_the_eager_ops_fixed_times():
    """Eager PyTorch's kernel fixed times are its tiny ops launched kernel by kernel, less one launch; the
    measured file's eager series runs under the eager runtime, its compiled series under the compiled
    one, both replayed from graphs (no host dispatch)."""
    from sim.validate.published import published_rows

    micro = {"tiny_kernel_in_graph_s": 1e-6, "tiny_kernel_eager_s": 7e-6,
             "tiny_op_in_graph_s": {"rope": 2.1e-5, "sdpa": 5e-6, "linear": 3e-6},
             "compiled_tiny_op_in_graph_s": {},
             "row_op_in_graph_s": {"eager": {"rms_norm": {64: 2e-6 + 64e-9, 4096: 2e-6 + 4096e-9},
                                             "softmax": {64: 2e-6, 4096: 3e-6}}}}
    fig = runtime_figures(micro, "eager")
    assert fig["kernel_fixed"] == {"rope": pytest.approx(2e-5), "attention": pytest.approx(4e-6)}
    assert fig["row_element"] == {"rmsnorm": pytest.approx(1e-9)} and fig["dispatch_overhead"] == 7e-6
    runtimes = {r["series"]: (r["runtime"], r["set"]["runtime.graphs"])
                for r in published_rows(VALIDATION_DATA / "measured-h200.yaml") if r["kind"] == "generate"}
    assert runtimes == {"h200-sxm-forward": ("eager-pytorch", True), "h200-sxm-forward-compiled": ("compiled", True)}


def test_a_short_reduction_depth_lowers_the_matrix_efficiency():
    """With half the efficiency at K = 64 and all of it from K = 1024, a K = 64 GEMM computes 2x as long
    as without the table, a K = 256 one 1 / (0.5 + 0.5 x 2/4) x as long (log interpolation), and a
    K = 2048 one as before; a GEMM's rows table still multiplies in."""
    from sim.mapping.plan import Planner

    base = load(DATA / "toy-gpt.yaml", device__compute__matrix_efficiency={1: 0.8})[1]
    deep = load(DATA / "toy-gpt.yaml", device__compute__matrix_efficiency={1: 0.8},
                device__compute__matrix_efficiency_by_depth={64: 0.5, 1024: 1.0})[1]
    assert deep.device.compute.efficiency(64, "fp32", 256) == pytest.approx(0.8 * 0.75)
    for k, factor in ((64, 2.0), (256, 1 / 0.75), (2048, 1.0)):
        op = matmul_op("g", 256, 256, k, "fp32")
        times = [Planner(hw, place([op], hw)).plan(op).compute_s for hw in (base, deep)]
        assert times[1] == pytest.approx(factor * times[0]), k


def test_trace_ops_gives_each_kernel_to_the_innermost_op_open_at_its_launch(tmp_path: Path):
    """bench/trace_ops.py on a hand-made profiler trace: a kernel belongs to the innermost named range
    that was open when the host launched it (matched by correlation id), never to `pass`; a kernel
    launched outside every op is counted apart."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("trace_ops", ROOT / "bench/trace_ops.py")
    trace_ops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trace_ops)
    ranges = [("pass", 0, 100), ("attention", 10, 40), ("kv_write", 12, 20), ("lm_head", 60, 70)]
    launches = {1: 15, 2: 30, 3: 65, 4: 200}  # correlation -> host launch time (us)
    events = ([{"ph": "X", "cat": "user_annotation", "name": n, "ts": a, "dur": b - a} for n, a, b in ranges]
              + [{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": t, "dur": 1,
                  "args": {"correlation": c}} for c, t in launches.items()]
              + [{"ph": "X", "cat": "kernel", "name": f"void k{c}<float>(int)", "ts": 1000 + c, "dur": 2.0 * c,
                  "args": {"correlation": c}} for c in launches])
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": events}))
    passes, ops = trace_ops.attribute(str(path))
    assert passes == 1
    assert ops == {"kv_write": [("void k1<float>(int)", 2e-6)], "attention": [("void k2<float>(int)", 4e-6)],
                   "lm_head": [("void k3<float>(int)", 6e-6)], "(outside any op)": [("void k4<float>(int)", 8e-6)]}
    assert trace_ops.short("void at::native::vectorized_kernel<float, 4>(int, float*)") == "vectorized_kernel"


def test_a_row_wise_reduction_computes_for_at_least_its_rows_serial_time():
    """A norm over 4096 elements at 1 ns per row element computes for 4.1 us however few its FLOPs
    (one thread block reduces the row); without the figure, or for an elementwise op, nothing changes."""
    from sim.mapping.plan import Planner

    wl = load(ROOT / "workloads/llama2-7b.yaml", model__layers=1, scenario__phase="decode",
              scenario__prompt_tokens=8, scenario__new_tokens=1)[0]
    h200, compiled = ROOT / "hardware_models/h200-sxm.yaml", ROOT / "runtimes/compiled.yaml"
    base = load_hardware(h200, runtime=compiled)
    slow = load_hardware(h200, [("device.kernels.rmsnorm.row_element", "1 ns")], compiled)
    ops = build_graph(wl).ops
    norm = next(o for o in ops if o.kind == "attn_norm")
    add = next(o for o in ops if o.kind == "residual")
    assert norm.row == 4096 and add.row == 0
    plans = {hw is slow: {o.kind: Planner(hw, place(ops, hw)).plan(o).compute_s for o in (norm, add)}
             for hw in (base, slow)}
    assert plans[True]["attn_norm"] == pytest.approx(4096e-9)
    assert plans[False]["attn_norm"] == pytest.approx(max(norm.flops / base.device.compute.vector, 4096 * 0.12e-9))
    assert plans[True]["residual"] == plans[False]["residual"]


def test_markdown_tables_give_live_cases_their_spread_and_published_ones_their_source():
    live = [Case("g", "a", 1.1, 1.0, spread=0.2), Case("g", "b", 0.5, 1.0, spread=0.1)]
    published = [Case("p", "c", 2.0, 1.0, source="a paper")]
    text = to_markdown(live, published, "hw.yaml")
    assert "| g | a | 1.100 s | 1.000 s | +10.0% | 20% |" in text
    assert "Median |error| 30.0%, worst 50.0% over 2 cases; the middle half of a case's rounds spans 15% of its " \
           "median (median over cases), 20% (most)." in text
    assert "| p | c | 2.000 s | 1.000 s | +100.0% | a paper |" in text
    assert "Median |error| 100.0%, worst 100.0% over 1 cases." in text


@pytest.mark.skipif(not native.available(), reason="no C compiler")
def test_calibration_leaves_no_build_folder_behind(tmp_path, monkeypatch):
    """The C microbenchmarks are compiled into a temporary folder that is removed once the library is
    loaded (it stays mapped)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    native._library.cache_clear()
    try:
        assert native.available() and native.load_latency(1 << 16, steps=1000) > 0
        assert not list(tmp_path.iterdir())
    finally:
        native._library.cache_clear()


def test_a_weight_whose_rows_alias_in_the_cache_lowers_the_matrix_efficiency():
    """With the aliased table at half from 16 rows on and a 4 KiB stride, a GEMM over a K x 1024 fp32
    weight (rows 4 KiB apart) computes 2x as long as without the table, a K x 1008 or a K x 1040 one as
    before; an fp16 weight aliases at 2048 columns; a table without its stride is one line."""
    from sim.mapping.plan import Planner

    base = load(DATA / "toy-gpt.yaml", device__compute__matrix_efficiency={1: 0.8})[1]
    alias = load(DATA / "toy-gpt.yaml", device__compute__matrix_efficiency={1: 0.8},
                 device__compute__aliasing_stride="4 KiB", device__compute__matrix_efficiency_aliased={16: 0.5})[1]
    for n, dtype, factor in ((1024, "fp32", 2.0), (1008, "fp32", 1.0), (1040, "fp32", 1.0), (2048, "fp16", 2.0),
                             (1024, "fp16", 1.0)):
        op = matmul_op("g", 256, n, 256, dtype)
        times = [Planner(hw, place([op], hw)).plan(op).compute_s for hw in (base, alias)]
        assert times[1] == pytest.approx(factor * times[0]), (n, dtype)
    with pytest.raises(ConfigError, match="matrix_efficiency_aliased: needs `aliasing_stride`"):
        load(DATA / "toy-gpt.yaml", device__compute__matrix_efficiency_aliased={16: 0.5})
