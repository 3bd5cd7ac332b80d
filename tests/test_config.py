"""Config loading and the one-line, exit-code-2 contract for bad input."""

from pathlib import Path

import pytest

from conftest import DATA, ROOT, cli, load
from sim.errors import ConfigError

WORKLOADS = sorted((ROOT / "workloads").glob("*.yaml"))
HARDWARE = sorted((ROOT / "hardware_models").glob("*.yaml"))


@pytest.mark.parametrize("path", HARDWARE, ids=lambda p: p.name)
def test_shipped_hardware_loads_and_cites_a_source(path):
    from sim.config import load_hardware

    hw = load_hardware(path)
    assert len(hw.source) > 40
    assert hw.device.compute.peak
    assert hw.oddities() == []  # every level slower than the one inside it


def test_a_level_faster_than_the_one_inside_it_is_a_one_line_warning_and_the_run_goes_on():
    """HBM at 10 TB/s behind a 5.5 TB/s L2 is valid YAML but no real hierarchy: `run` says so in one line
    on stderr and still simulates (exit 0)."""
    r = cli("run", str(ROOT / "workloads/gpt2.yaml"), "--set", "device.memory.hbm.bandwidth=10 TB/s",
            "--set", "scenario.new_tokens=2")
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "device.memory.hbm: 10 TB/s is faster than the level inside it, l2" in warnings[0]
    assert "End to end" in r.stdout


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_shipped_workloads_load(path):
    wl, hw = load(path)
    assert wl.model.layers > 0 and hw.name


def test_set_overrides_workload_and_hardware():
    wl, hw = load(DATA / "toy-gpt.yaml", scenario__batch=4, scenario__precision__weights="int8",
                  device__memory__dram__bandwidth="20 GB/s")
    assert wl.scenario.batch == 4
    assert wl.scenario.precision.weights == "int8"
    assert hw.device.memory["dram"].bandwidth == 20e9


@pytest.mark.parametrize("setting,says", [
    ("device.memory.dram.bandwidth=3 GB", "device.memory.dram.bandwidth: '3 GB' is a bytes value, expected "
     "bytes/s (e.g. '2.039 TB/s') (from --set device.memory.dram.bandwidth)"),
    ("runtime.threads=99", "device.threads: at most the device's 1 compute units (got 99) (from --set "
     "runtime.threads)"),
    ("device.memory.dramx.bandwidth=3 GB/s", "device.memory.dramx.bandwidth: no memory level 'dramx' (levels: "),
])
def test_a_bad_figure_from_set_is_blamed_on_the_set(setting, says):
    """A figure a --set gave is named as the --set's, not as the hardware file's own; a misspelled level
    is named as such (it used to say the new level's capacity was missing)."""
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--set", setting)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert "/../" not in r.stderr


def _hf_workload(tmp_path, config: dict):
    import json

    (tmp_path / "config.json").write_text(json.dumps(config))
    text = (DATA / "toy-gpt.yaml").read_text().replace("hardware: toy-hw.yaml", f"hardware: {DATA / 'toy-hw.yaml'}")
    model_start, scen = text.index("model:"), text.index("scenario:")
    (tmp_path / "w.yaml").write_text(text[:model_start] + "model:\n  hf_config: config.json\n" + text[scen:])
    return tmp_path / "w.yaml"


LLAMA_SMALL = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256,
               "max_position_embeddings": 128, "hidden_act": "silu"}


def test_hf_config_ties_the_head_where_the_config_says_so(tmp_path):
    """Llama-3.2 1B ties its LM head to the embedding (`tie_word_embeddings: true`); it was read past, and
    the model held a head of its own: the vocab x hidden table counted twice."""
    from sim.graph import build_graph
    from sim.mapping import place

    weights = {}
    for tie in (False, True):
        wl, hw = load(_hf_workload(tmp_path, {**LLAMA_SMALL, "tie_word_embeddings": tie}))
        assert wl.model.tied is tie
        weights[tie] = place(build_graph(wl), hw).footprint.weights
    assert weights[False] - weights[True] == 256 * 64 * 2  # one vocab x hidden table less (fp16 in the toy)


@pytest.mark.parametrize("extra,key", [({"num_local_experts": 8}, "num_local_experts"),
                                       ({"head_dim": 32}, "head_dim")])
def test_hf_config_refuses_what_is_not_modelled(tmp_path, extra, key):
    r = cli("run", str(_hf_workload(tmp_path, {**LLAMA_SMALL, **extra})))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"config.json: {key}: " in r.stderr, r.stderr


def test_hf_config_maps_llama_with_gqa(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,'
        ' "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 32000,'
        ' "max_position_embeddings": 4096, "hidden_act": "silu"}')
    text = (DATA / "toy-gpt.yaml").read_text().replace("hardware: toy-hw.yaml", f"hardware: {DATA / 'toy-hw.yaml'}")
    model_start, scen = text.index("model:"), text.index("scenario:")
    (tmp_path / "w.yaml").write_text(text[:model_start] + "model:\n  hf_config: config.json\n" + text[scen:])
    wl, _ = load(tmp_path / "w.yaml")
    assert (wl.model.family, wl.model.layers, wl.model.n_kv_heads, wl.model.norm) == ("llama", 80, 8, "rmsnorm")


def _broken(tmp_path: Path, old: str, new: str, name: str = "toy-gpt.yaml") -> Path:
    text = (DATA / name).read_text()
    assert old in text
    target = tmp_path / name
    target.write_text(text.replace(old, new))
    if name == "toy-gpt.yaml":
        (tmp_path / "toy-hw.yaml").write_text((DATA / "toy-hw.yaml").read_text())
    return target


BAD_WORKLOADS = [
    ("phase: generate", "phase: [generate", "malformed YAML"),
    ("  layers: 1", "  layerz: 1", "model.layerz: unknown key"),
    ("  layers: 1\n", "", "model.layers: missing key"),
    ("  heads: 4", "  heads: 5", "model.heads: heads (5) must divide hidden (64)"),
    ("  batch: 2", "  batch: -2", "scenario.batch"),
    ("  batch: 2", "  batch: two", "scenario.batch"),
    ("  prompt_tokens: 8", "  prompt_tokens: 80", "scenario.prompt_tokens: prompt_tokens + new_tokens = 83"),
    ("weights: fp16", "weights: fp12", "scenario.precision.weights"),
    ("weights: fp16", "weights: fp16, group_size: 32", "scenario.precision.group_size: quantization groups need"),
    ("  batch: 2", "  batch: 2\n  attention: flash", "scenario.attention"),
    ("weights: fp16", "weights: int4, group_size: 0", "scenario.precision.group_size"),
    ("  family: gpt", "  family: bert", "scenario.phase: a bert model cannot run phase 'generate'"),
]


@pytest.mark.parametrize("old,new,needle", BAD_WORKLOADS, ids=[b[2][:30] for b in BAD_WORKLOADS])
def test_bad_workload_is_one_line_exit_2(tmp_path, old, new, needle):
    path = _broken(tmp_path, old, new)
    r = cli("run", str(path))
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert str(path) in lines[0] and needle in lines[0], lines[0]


BAD_HARDWARE = [
    ("bandwidth: 10 GB/s", "bandwidth: 10 GHz", "device.memory.dram.bandwidth: '10 GHz' is a Hz value"),
    ("capacity: 1 GiB", "capacity: -1 GiB", "device.memory.dram.capacity"),
    ("dispatch_overhead: 1 us", "dispatch_overhead: 1 lightyear", "device.dispatch_overhead: unknown unit"),
    ("    vector: 0.1 TFLOP/s\n", "", "device.compute.vector: missing key"),
    ("kind: scratchpad}\n    dram: {capacity: 1 GiB, bandwidth: 10 GB/s, latency: 100 ns, scope: shared, kind: dram",
     "kind: cache}\n    dram: {capacity: 1 GiB, bandwidth: 10 GB/s, latency: 100 ns, scope: shared, kind: cache",
     "device: no memory level of kind"),
    ("    units: 1", "    unit: 1", "did you mean 'units'?"),
    ("scope: shared, kind: dram}", "scope: shared, kind: dram, efficiency_by_size: {1 KiB: 1.5}}",
     "device.memory.dram.efficiency_by_size: efficiencies are fractions in (0, 1]"),
    ("scope: shared, kind: dram}", "scope: shared, kind: dram, efficiency_by_size: {1 lightyear: 0.5}}",
     "device.memory.dram.efficiency_by_size"),
    ("scope: shared, kind: dram}", "scope: shared, kind: dram, efficiency_by_run: {4 KiB: 0}}",
     "device.memory.dram.efficiency_by_run: efficiencies are fractions in (0, 1]"),
    ("dispatch_overhead: 1 us", "dispatch_overhead: 1 us\n  step_overhead: -3 us", "device.step_overhead"),
    ("dispatch_overhead: 1 us", "dispatch_overhead: 1 us\n  step_overhead: 3 GB", "device.step_overhead"),
    ("dispatch_overhead: 1 us", "dispatch_overhead: 1 us\n  kernels: {gleu: {dispatch: 3 us}}", "device.kernels"),
    ("dispatch_overhead: 1 us", "dispatch_overhead: 1 us\n  kernels: {gelu: {dispatch: -3 us}}",
     "device.kernels.gelu.dispatch"),
    ("dispatch_overhead: 1 us", "dispatch_overhead: 1 us\n  kernels: {gelu: {vector: 3 GB/s}}",
     "device.kernels.gelu.vector"),
    ("    vector: 0.1 TFLOP/s\n", "    vector: 0.1 TFLOP/s\n    matrix_efficiency_by_depth: {64: 1.5}\n",
     "device.compute.matrix_efficiency_by_depth: efficiencies are fractions in (0, 1]"),
]


@pytest.mark.parametrize("old,new,needle", BAD_HARDWARE, ids=[b[2][:30] for b in BAD_HARDWARE])
def test_bad_hardware_is_one_line_exit_2(tmp_path, old, new, needle):
    hw = _broken(tmp_path, old, new, "toy-hw.yaml")
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--hardware", str(hw))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert str(hw) in r.stderr and needle in r.stderr, r.stderr


def test_model_that_does_not_fit_names_memory(tmp_path):
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--set", "device.memory.dram.capacity=100 KiB",
            "--set", "device.memory.sram.capacity=1 KiB")
    assert r.returncode == 2
    assert "device.memory: workload does not fit: weights need" in r.stderr


def test_bad_set_and_missing_file(tmp_path):
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--set", "nonsense.key=1")
    assert r.returncode == 2 and "--set: nonsense.key: unknown key 'nonsense'" in r.stderr
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--set", "scenario.batch")
    assert r.returncode == 2 and "expected KEY.PATH=VALUE" in r.stderr
    r = cli("run", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "nope.yaml: no such file" in r.stderr


def test_bad_input_writes_nothing(tmp_path):
    out = tmp_path / "out.json"
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--set", "scenario.batch=0", "--json", str(out))
    assert r.returncode == 2 and not out.exists()


def test_config_error_message_shape():
    assert str(ConfigError("bad", "f.yaml", "a.b")) == "f.yaml: a.b: bad"


def test_a_key_written_twice_is_one_line_naming_the_file_and_line(tmp_path):
    """YAML would keep the second silently; every input file refuses it (a hardware file, a runtime, a
    workload), while a key brought in by a `<<: *anchor` merge may still be overridden."""
    from sim.config import load_hardware

    hw = tmp_path / "hw.yaml"
    hw.write_text((DATA / "toy-hw.yaml").read_text() + "devices: 2\n")
    with pytest.raises(ConfigError, match=r"hw.yaml: line \d+, column 1: malformed YAML: duplicate key 'devices'"):
        load_hardware(hw)
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--hardware", str(hw))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "duplicate key 'devices'" in r.stderr
    from sim.config.loader import read_yaml

    over = tmp_path / "over.yaml"
    over.write_text("a: &a {x: 1, y: 2}\nb: {<<: *a, y: 3}\n")
    assert read_yaml(over)["b"] == {"x": 1, "y": 3}


@pytest.mark.parametrize("setting,says", [
    ("model.layers=1000000000000", "model.layers: Input should be less than or equal to 1000000000"),
    ("model.layers=100000000", "model.layers: about 1.3e+11 ops to simulate"),
    ("scenario.new_tokens=1000000000", "scenario.new_tokens: about"),
    ("device.memory.hbm.bandwidth=1e400 GB/s", "device.memory.hbm.bandwidth: '1e400 GB/s' is beyond any machine"),
    ("device.memory.hbm.bandwidth=.inf", "device.memory.hbm.bandwidth: inf is beyond any machine"),
    ("device.memory.hbm.capacity=1e308", "device.memory.hbm.capacity: '1e308' is beyond any machine"),
    ("name=" + "[" * 900 + "1" + "]" * 900, "--set: name: nested deeper than 32 levels"),
    ("hardware=/dev/zero", "/dev/zero: not a regular file"),
])
def test_input_beyond_reason_is_one_line_and_exit_2_before_any_work(setting, says):
    """Absurd sizes, infinities, work no run could finish, nesting that would exhaust the stack and a
    read that never ends: each is refused in one line naming the file (or --set) and the key."""
    r = cli("run", str(ROOT / "workloads/gpt2.yaml"), "--set", setting)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr[:300]


def test_files_too_deep_or_with_numbers_too_long_are_one_line(tmp_path):
    deep, big = tmp_path / "deep.yaml", tmp_path / "big.yaml"
    deep.write_text("a: " + "[" * 900 + "1" + "]" * 900 + "\n")
    big.write_text("name: x\nsource: y\ndevices: " + "9" * 5000 + "\n")
    for path, says in ((deep, "nested deeper than 32 levels"), (big, "a number of more than 4,300 digits")):
        r = cli("run", str(DATA / "toy-gpt.yaml"), "--hardware", str(path))
        assert r.returncode == 2 and r.stderr.strip().endswith(f"{path.name}: {says}"), r.stderr[:300]


@pytest.mark.parametrize("edit,says", [
    (lambda c: c.update(model_type=["llama"]), "config.json: model_type: unsupported model_type ['llama']"),
    (lambda c: c.update(hidden_act={"a": 1}), "config.json: hidden_act: unsupported activation {'a': 1}"),
    (lambda c: c.update(num_hidden_layers="40"), "config.json: num_hidden_layers: expected a whole number"),
    (lambda c: c.update(hidden_size=10**400), "config.json: hidden_size: expected a whole number"),
])
def test_a_bad_config_json_names_itself_and_its_own_key(tmp_path, edit, says):
    import json

    hf = json.loads((ROOT / "workloads/hf/llama-2-13b-config.json").read_text())
    edit(hf)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    text = (ROOT / "workloads/llama2-13b-int4.yaml").read_text().replace("hf/llama-2-13b-config.json", "config.json")
    wl = tmp_path / "wl.yaml"
    wl.write_text(text.replace("../hardware_models/", str(ROOT / "hardware_models") + "/").replace(
        "../runtimes/", str(ROOT / "runtimes") + "/"))
    r = cli("run", str(wl))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr


@pytest.mark.parametrize("setting,says", [
    ("device.memory.dram.bandwidth=5e-324", "is below any machine"),
    ("devices=1000000", "1,000,000 devices: beyond reason"),
])
def test_machines_below_or_beyond_any_are_one_line(setting, says):
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--hardware", str(DATA / "toy-node.yaml"), "--set", setting)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
