"""Reports and the CLI: the headline claims, the JSON/CSV/trace schemas, determinism."""

import csv
import io
import json
from pathlib import Path

import pytest

from conftest import DATA, ROOT, cli, load
from sim.errors import ConfigError
from sim.pipeline import run
from sim.report import summarize, to_csv, to_json, to_trace


@pytest.fixture(scope="module")
def gpt2_a100():
    wl, hw = load(ROOT / "workloads/gpt2.yaml", scenario__new_tokens=4)
    return run(wl, hw)


def test_headline_decode_gemv_waits_on_dram_prefill_gemm_computes(gpt2_a100):
    s = summarize(gpt2_a100)
    gemv, gemm = s["classes"]["GEMV"], s["classes"]["GEMM"]
    assert gemv["bound"] == "memory:hbm"
    assert gemv["time_share"]["memory:hbm"] > 0.5
    assert gemm["bound"] == "compute"
    assert gemm["intensity_flop_per_byte"] > s["balance_point_flop_per_byte"] > gemv["intensity_flop_per_byte"]


def test_end_to_end_figures_are_consistent(gpt2_a100):
    s = summarize(gpt2_a100)
    assert s["total_s"] == pytest.approx(s["prefill_s"] + s["decode_s"])
    assert s["ttft_s"] == s["prefill_s"]
    assert s["tpot_s"] == pytest.approx(s["decode_s"] / 4)
    assert s["tokens_per_s"] == pytest.approx(4 / s["total_s"])
    assert sum(c["time_s"] for c in s["classes"].values()) == pytest.approx(s["total_s"])
    assert s["flops"] == sum(r.flops for r in gpt2_a100.ops)


def test_host_dispatch_paces_a_run_of_tiny_ops_not_a_run_of_long_ones():
    """The host's dispatch work is ops x dispatch_overhead on the busiest stream. With 1 ms per op the
    toy model's ops finish long before the next is dispatched: the host paces the run (total = its
    dispatch time plus the last op), in async and in sync mode; with 1 ns per op the device does."""
    wl, slow_host = load(DATA / "toy-gpt.yaml", device__dispatch_overhead="1 ms")
    s = summarize(run(wl, slow_host))
    assert s["host_dispatch_s"] == pytest.approx(s["host_dispatch_ops"] * 1e-3)
    assert s["host_dispatch_ops"] == s["ops"] and s["paced_by"] == "host"
    assert s["host_dispatch_s"] <= s["total_s"] < s["host_dispatch_s"] + 1e-3
    _, fast_host = load(DATA / "toy-gpt.yaml", device__dispatch_overhead="1 ns")
    assert summarize(run(wl, fast_host))["paced_by"] == "device"
    _, sync_host = load(DATA / "toy-gpt.yaml", device__dispatch_overhead="1 ms", device__dispatch_mode="sync")
    assert summarize(run(wl, sync_host))["paced_by"] == "host"  # taking turns, the host's share is all but all


def test_host_dispatch_adds_each_ops_kernel_cost():
    """With layernorm's own 5 ms dispatch (others 1 ms), the host's dispatch time is 1 ms per op plus 4 ms
    per layernorm: the toy GPT has two per layer and a final one per pass, 4 passes."""
    wl, hw = load(DATA / "toy-gpt.yaml", device__dispatch_overhead="1 ms",
                  device__kernels={"layernorm": {"dispatch": "5 ms"}})
    result = run(wl, hw)
    s = summarize(result)
    norms = sum(1 for r in result.ops if r.op_class == "norm")
    assert norms == 4 * 3
    assert s["host_dispatch_s"] == pytest.approx(s["ops"] * 1e-3 + norms * 4e-3, rel=1e-12)


def test_json_schema(gpt2_a100):
    doc = json.loads(to_json(gpt2_a100))
    for key in ("total_s", "ttft_s", "tpot_s", "tokens_per_s", "flops", "bytes", "classes"):
        assert key in doc["summary"]
    op = doc["ops"][0]
    for key in ("name", "layer", "phase", "op_class", "device", "flops", "bytes", "start_s", "end_s",
                "compute_s", "stall_s", "overhead_s", "intensity", "bound"):
        assert key in op
    assert isinstance(op["bytes"], dict) and isinstance(op["stall_s"], dict)
    assert len(doc["ops"]) == len(gpt2_a100.ops)


def test_csv_has_one_row_per_op(gpt2_a100):
    rows = list(csv.DictReader(io.StringIO(to_csv(gpt2_a100))))
    assert len(rows) == len(gpt2_a100.ops)
    assert {"bytes_hbm", "stall_memory_hbm_s", "bound"} <= set(rows[0])


def test_trace_has_a_track_per_unit_level_and_link_that_carries_events(gpt2_a100):
    """One track per compute unit, memory level and link with events on that device; a single-device run
    has no link or stream rows (20 empty ones before, review 2026-12-05), a tensor-parallel run its links."""
    def tracks(trace):
        named = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
                 if e.get("name") == "thread_name"}
        used = {(e["pid"], e["tid"]) for e in trace["traceEvents"] if e["ph"] == "X"}
        assert set(named) == used
        return set(named.values())

    trace = to_trace(gpt2_a100)
    assert tracks(trace) == {"host dispatch", "compute:matrix", "compute:vector", "memory:smem", "memory:l2",
                             "memory:hbm"}
    assert all(e["dur"] >= 0 for e in trace["traceEvents"] if e["ph"] == "X")
    wl, hw = load(ROOT / "workloads/gpt2.yaml", parallelism__tensor=2, scenario__new_tokens=1, model__layers=2)
    assert {"link:0->switch", "link:switch->1", "collectives"} <= tracks(to_trace(run(wl, hw)))


def test_cli_writes_outputs_and_is_deterministic(tmp_path):
    outs = []
    for i in range(2):
        paths = [tmp_path / f"{i}.{ext}" for ext in ("json", "csv", "trace.json")]
        r = cli("run", str(DATA / "toy-gpt.yaml"), "--json", str(paths[0]), "--csv", str(paths[1]),
                "--trace", str(paths[2]))
        assert r.returncode == 0, r.stderr
        assert "Where the time goes" in r.stdout and "GEMV" in r.stdout
        report = [line for line in r.stdout.splitlines() if not line.startswith("wrote ")]
        outs.append((report, *[p.read_bytes() for p in paths]))
    assert outs[0] == outs[1]


def test_encode_reports_processed_tokens():
    wl, hw = load(ROOT / "workloads/bert-base.yaml", model__layers=2, scenario__batch=2, scenario__prompt_tokens=32)
    s = summarize(run(wl, hw))
    assert s["tpot_s"] is None
    assert s["tokens_per_s"] == pytest.approx(64 / s["total_s"])
    assert set(s["classes"]) == {"GEMM", "attention", "other"}


WORKLOADS = sorted((ROOT / "workloads").glob("*.yaml"))
HARDWARE = sorted((ROOT / "hardware_models").glob("*.yaml"))


@pytest.mark.parametrize("hw_path", HARDWARE, ids=lambda p: p.stem)
@pytest.mark.parametrize("wl_path", WORKLOADS, ids=lambda p: p.stem)
def test_every_shipped_workload_runs_on_every_shipped_hardware(wl_path, hw_path):
    """Full-size models (so the fit check is real), one decode step to keep it fast."""
    from sim.config import load_hardware, load_workload

    wl, _ = load_workload(wl_path)
    if wl.scenario.new_tokens:
        wl, _ = load_workload(wl_path, [("scenario.new_tokens", 1)])
    hw = load_hardware(hw_path)
    if wl.parallelism.devices > hw.devices:  # e.g. TP=8 on a single CPU: a clear error, not a run
        with pytest.raises(ConfigError, match="parallelism: tensor x pipeline x data = 8 devices"):
            run(wl, hw)
        return
    s = summarize(run(wl, hw))
    assert s["total_s"] > 0 and s["flops"] > 0
    assert sum(c["time_s"] for c in s["classes"].values()) == pytest.approx(s["device_time_s"])


def test_summary_totals_equal_sums_over_every_op_record(gpt2_a100):
    """The summary adds each distinct block record once, times its runs: the same as adding up every
    expanded op record (time, FLOPs, bytes per level, and resource times for the bound)."""
    from collections import defaultdict

    s = summarize(gpt2_a100)
    ops = gpt2_a100.ops
    assert s["ops"] == len(ops)
    assert s["device_time_s"] == pytest.approx(sum(r.duration_s for r in ops), rel=1e-9)
    assert s["flops"] == pytest.approx(sum(r.flops for r in ops), rel=1e-12)
    for lvl, b in s["bytes_per_level"].items():
        assert b == pytest.approx(sum(r.bytes.get(lvl, 0.0) for r in ops), rel=1e-9)
    held = defaultdict(float)
    for r in ops:
        for k, v in r.resource_times().items():
            held[k] += v
    assert s["bound"] == max(held.items(), key=lambda kv: (kv[1], kv[0]))[0]


def test_memory_timeline_covers_every_replica_with_its_stage_s_placement():
    """Pipeline 2 x data 2 training on the toy node: devices 0-1 are replica 0's stages, 2-3 replica 1's.
    Each device's timeline is its own stage's (device 3 runs stage 1 like device 1), one per device."""
    from sim.config import load_hardware
    from sim.report.memory import memory_timeline

    wl, _ = load(DATA / "toy-gpt.yaml", scenario__phase="train", scenario__new_tokens=0, model__layers=4,
                 scenario__batch=4, parallelism__pipeline=2, parallelism__data=2, parallelism__microbatches=2)
    result = run(wl, load_hardware(DATA / "toy-node.yaml"))
    tracks = memory_timeline(result)
    by_device = {d: [t for t in tracks if t["device"] == d] for d in range(4)}
    assert all(by_device.values())
    strip = [[{k: v for k, v in t.items() if k != "device"} for t in by_device[d]] for d in range(4)]
    assert strip[0] == strip[2] and strip[1] == strip[3] and strip[0] != strip[1]


def test_memory_timeline_rises_and_falls_and_peaks_at_the_footprint():
    """Weights and the KV cache are held all run; activations rise through each pass and fall back to
    nothing; the timeline's peak is the footprint's (weights + KV cache + peak live activations), the
    summary's `memory.<level>` gives it by kind, and the trace carries it as counter tracks."""
    from sim.report import summarize, to_trace
    from sim.report.memory import memory_timeline

    wl, hw = load(DATA / "toy-gpt.yaml")
    result = run(wl, hw)
    fp = result.placement.footprint
    (track,) = [t for t in memory_timeline(result) if "activation" in t["points"][-1][1]]
    totals = [sum(kinds.values()) for _, kinds in track["points"]]
    home = result.placement.home
    # what the level holds: whole kinds, and the weights or KV caches placed there ahead of their home
    at_level = result.placement.held()[track["level"]]
    assert max(totals) == pytest.approx(sum(at_level.values()))
    assert track["points"][-1][1]["activation"] == pytest.approx(0.0, abs=1e-9)
    times = [t for t, _ in track["points"]]
    assert times == sorted(times) and times[-1] <= summarize(result)["total_s"]
    s = summarize(result)
    level = s["memory"][result.placement.home["activation"]]
    assert level["activations"] == fp.activations
    assert level["peak_bytes"] == pytest.approx(sum(at_level.values()))
    assert s["peak_bytes"] == s["memory"][home["weight"]]["peak_bytes"]
    counters = [e for e in to_trace(result)["traceEvents"] if e["ph"] == "C"]
    assert counters and max(e["args"].get("activations", 0.0) for e in counters) == pytest.approx(fp.activations)


def test_outputs_are_checked_before_the_run_and_written_all_or_none(tmp_path):
    """A directory, a path under a file or one path named twice is one line and exit 2 before any work;
    a set of outputs one of which cannot be written leaves none of them (and no temporary file)."""
    import json

    from sim.errors import ConfigError
    from sim.report.export import write_outputs

    wl = str(DATA / "toy-gpt.yaml")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    twice = ("--json", str(tmp_path / "x.json"), "--trace", str(tmp_path / "x.json"))
    for args, says in ((("--json", str(tmp_path)), "is a directory"),
                       (("--csv", str(blocker / "ops.csv")), "is not a folder"), (twice, "also named by")):
        r = cli("run", wl, *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
        assert "memwall" not in r.stdout  # refused before the run and its report
    good = tmp_path / "good.json"
    with pytest.raises(ConfigError, match="cannot write"):
        write_outputs({good: "{}", blocker / "sub" / "bad.csv": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    r = cli("run", wl, "--json", "-")  # standard output: the JSON alone, no report
    assert r.returncode == 0 and json.loads(r.stdout)["summary"]["total_s"] > 0
    if Path("/dev/full").exists():  # a write that fails after the run: one line naming the option, no report
        r = cli("run", wl, "--json", "/dev/full")
        assert r.returncode == 2 and r.stderr.startswith("error: --json '/dev/full': cannot write"), r.stderr
        assert "memwall" not in r.stdout


def test_a_per_op_output_past_its_limit_is_one_line_and_nothing_written(tmp_path, monkeypatch, capsys):
    """A per-op file of millions of records took tens of GB to write (review, 2026-12-05): past the limit
    it is refused with one line naming the option, and nothing is written."""
    import sim.cli

    monkeypatch.setattr(sim.cli, "MAX_OP_RECORDS", 10)
    out = tmp_path / "ops.json"
    assert sim.cli.main(["run", str(DATA / "toy-gpt.yaml"), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --json: 60 op records") and err.count("\n") == 1, err
    assert not out.exists()


def test_a_run_that_spills_to_host_memory_says_so():
    """A class placed in host memory streams over PCIe, where a real device would run out of memory: the
    run goes on and says so in one warning line (it used to be silent, review 2026-12-05)."""
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--set", "device.memory.dram.capacity=64 KiB",
            "--set", "host={link: {bandwidth: 8 GB/s, latency: 1 us}, memory: {capacity: 1 TiB, "
            "bandwidth: 100 GB/s, latency: 100 ns}}")
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "placed in host memory" in warnings[0] and "(8 GB/s)" in warnings[0]
    assert "warning" not in cli("run", str(DATA / "toy-gpt.yaml")).stderr


def test_list_names_every_shipped_input_with_a_line_about_it():
    r = cli("list")
    assert r.returncode == 0
    for folder in ("hardware_models", "workloads", "runtimes", "sweeps"):
        for path in (ROOT / folder).glob("*.yaml"):
            if not path.name.startswith("host"):
                line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith(path.name))
                assert len(line.split(path.name, 1)[1].strip()) > 5, line


def test_schema_describes_the_input_files_and_accepts_quantities_with_units(tmp_path):
    """The JSON Schema of each input family, from the validating models: a quantity may be a number or a
    string with its unit; unknown keys are refused (additionalProperties false)."""
    import json

    r = cli("schema", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    hw = json.loads((tmp_path / "hardware.schema.json").read_text())
    level = hw["$defs"]["MemoryLevel"]
    assert {"type": "string"} in level["properties"]["bandwidth"]["anyOf"] and level["additionalProperties"] is False
    runtime = json.loads((tmp_path / "runtime.schema.json").read_text())
    assert "platforms" in runtime["required"]
    assert "scenario" in json.loads((tmp_path / "workload.schema.json").read_text())["properties"]


def test_compare_runs_a_workload_on_each_machine_side_by_side_with_ratios(tmp_path):
    """`compare` prints each machine's end-to-end figures and each over the first's (2x the DRAM bandwidth
    of the toy machine: a decode-bound run takes less time, ratio < 1); a bad machine file is refused
    before any run."""
    fast = tmp_path / "fast.yaml"
    fast.write_text((DATA / "toy-hw.yaml").read_text().replace("bandwidth: 10 GB/s", "bandwidth: 20 GB/s"))
    assert "bandwidth: 20 GB/s" in fast.read_text()
    r = cli("compare", str(DATA / "toy-gpt.yaml"), str(DATA / "toy-hw.yaml"), str(fast))
    assert r.returncode == 0, r.stderr
    total = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("total time"))
    assert total.split()[-1].endswith("x") and float(total.split()[-1][:-1]) < 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    r = cli("compare", str(DATA / "toy-gpt.yaml"), str(DATA / "toy-hw.yaml"), str(bad))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bad.yaml" in r.stderr


def test_compare_puts_each_machines_own_figures_in_its_cells():
    """A figure whose label carries a run's own numbers (its dispatch cost, the level its bytes are
    counted at) is labelled by what the runs share, each cell says its own, and no ratio is given for
    bytes counted at different levels (the first machine's label stood for all, review 2026-12-05)."""
    r = cli("compare", str(ROOT / "workloads/gpt2.yaml"), str(ROOT / "hardware_models/a100-sxm4-80gb.yaml"),
            str(ROOT / "hardware_models/sram-accel.yaml"), "--set", "scenario.new_tokens=2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    flops = next(ln for ln in lines if ln.strip().startswith("FLOPs / bytes"))
    assert "(hbm)" in flops and "(sram)" in flops and not flops.rstrip().endswith("x")
    dispatch = next(ln for ln in lines if ln.strip().startswith("host dispatch"))
    assert "x 2.000 us)" in dispatch and "x 500.0 ns)" in dispatch


def test_roofline_points_are_each_class_and_phase_intensity_and_rate():
    """A point is a class's ops in one phase: FLOPs over bytes at the level, FLOPs over their time; ops
    without FLOPs (copies) or bytes there are left out."""
    from sim.report.roofline import points

    ops = [{"op_class": "gemm", "phase": "prefill", "flops": 8e9, "bytes": {"hbm": 1e7}, "duration_s": 1e-3},
           {"op_class": "gemm", "phase": "prefill", "flops": 2e9, "bytes": {"hbm": 0.0}, "duration_s": 1e-3},
           {"op_class": "gemv", "phase": "decode", "flops": 1e6, "bytes": {"hbm": 5e5}, "duration_s": 2e-3},
           {"op_class": "copy", "phase": "decode", "flops": 0.0, "bytes": {"hbm": 1e6}, "duration_s": 1e-3}]
    got = {(p["class"], p["phase"]): p for p in points(ops, "hbm")}
    assert set(got) == {("GEMM", "prefill"), ("GEMV", "decode")}
    assert got["GEMM", "prefill"]["intensity"] == pytest.approx(1e3) and got["GEMM", "prefill"]["flops_per_s"] == 5e12
    assert got["GEMV", "decode"]["intensity"] == pytest.approx(2.0) and got["GEMV", "decode"]["share"] == 0.4


def test_roofline_from_a_run_and_from_its_saved_json(tmp_path):
    png, saved, again = tmp_path / "r.png", tmp_path / "run.json", tmp_path / "again.png"
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--roofline", str(png), "--json", str(saved))
    assert r.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r.stderr
    r = cli("plot", str(saved), "--roofline", "--out", str(again))
    assert r.returncode == 0 and again.read_bytes()[:4] == b"\x89PNG"
    r = cli("plot", str(DATA / "toy-gpt.yaml"), "--roofline", "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "not a run's --json" in r.stderr and not (tmp_path / "x.png").exists()


def test_a_narrow_terminal_folds_the_report_and_cuts_no_figure(toy):
    """On a terminal of 80 columns the tables wrap and fold; no figure ends in an ellipsis."""
    import io

    from rich.console import Console

    from sim.pipeline import run
    from sim.report import render

    buf = io.StringIO()
    render(run(*toy), console=Console(file=buf, width=80, highlight=False))
    text = buf.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "total time" in text


def test_the_report_says_which_settings_it_ran_with(tmp_path):
    """A title from the file is not taken for its unchanged settings: the overrides are printed under it
    and kept in the JSON's context."""
    import json

    out = tmp_path / "run.json"
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--set", "scenario.batch=2", "--json", str(out))
    assert r.returncode == 0 and "with --set: scenario.batch=2" in r.stdout.splitlines()[1]
    assert json.loads(out.read_text())["context"]["overrides"] == ["scenario.batch=2"]


def test_a_many_device_report_says_which_figures_are_wall_clock_and_which_summed():
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--hardware", str(DATA / "toy-node.yaml"),
            "--set", "parallelism.tensor=2")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "times are wall-clock; FLOPs, bytes, ops and communication are summed over the 2 devices" in text
    assert "Memory footprint vs capacity (per device: the fullest)" in text
    one = cli("run", str(DATA / "toy-gpt.yaml"))
    assert "wall-clock" not in one.stdout and "(per device" not in one.stdout


def test_json_output_is_json_even_where_a_figure_has_no_finite_value(toy, monkeypatch):
    """JSON has no Infinity or NaN: such a figure is written null."""
    import json

    from sim.pipeline import run
    from sim.report import export

    result = run(*toy)
    real = export.summarize
    monkeypatch.setattr(export, "summarize", lambda r: {**real(r), "mfu": float("inf"), "hfu": float("nan")})
    doc = json.loads(export.to_json(result), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert doc["summary"]["mfu"] is None and doc["summary"]["hfu"] is None and doc["summary"]["total_s"] > 0


def test_outputs_never_replace_an_input_a_device_or_take_a_private_mode(tmp_path):
    """An output naming one of the command's inputs is refused before the run; an output that is a device
    (/dev/null) is written into, not replaced by a file; a new output gets the mode a new file gets
    (mkstemp's 0600 would hide it); a name the file system cannot take is one line."""
    import os
    import stat

    wl = tmp_path / "wl.yaml"
    wl.write_text((DATA / "toy-gpt.yaml").read_text().replace("hardware: toy-hw.yaml", f"hardware: {DATA}/toy-hw.yaml"))
    before = wl.read_text()
    r = cli("run", str(wl), "--json", str(wl))
    assert r.returncode == 2 and "is an input of this command" in r.stderr and wl.read_text() == before
    r = cli("run", str(wl), "--json", "/dev/null")
    assert r.returncode == 0 and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    out = tmp_path / "run.csv"
    old = os.umask(0o022)
    try:
        assert cli("run", str(wl), "--csv", str(out)).returncode == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    r = cli("run", str(wl), "--json", str(tmp_path / ("x" * 300 + ".json")))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_a_failed_set_of_outputs_leaves_no_folder_it_made(tmp_path):
    from sim.errors import ConfigError
    from sim.report.export import write_outputs

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError):
        write_outputs({tmp_path / "n1" / "n2" / "a.json": "{}", blocker / "b.csv": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
