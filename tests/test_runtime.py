"""Runtimes, the third input family: the software's costs applied onto a hardware file's, by file, by a
workload's default and by `--set runtime.*`; bad runtime input is one line naming the runtime file."""

from pathlib import Path

import pytest

from conftest import DATA, ROOT, cli, load
from sim.config import load_hardware
from sim.errors import ConfigError
from sim.pipeline import run
from sim.report import summarize

TOY = DATA / "toy-hw.yaml"
RUNTIMES = sorted((ROOT / "runtimes").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "rt.yaml") -> Path:
    path = tmp_path / name
    path.write_text("name: test runtime\nsource: a test\n" + text)
    return path


@pytest.mark.parametrize("path", RUNTIMES, ids=lambda p: p.name)
def test_shipped_runtimes_load_onto_every_kind_of_hardware_and_cite_a_source(path):
    import yaml

    assert len(yaml.safe_load(path.read_text())["source"]) > 80
    for hw_file in ("a100-sxm4-80gb.yaml", "h200-sxm.yaml", "xeon-gold-6242.yaml"):
        assert load_hardware(ROOT / "hardware_models" / hw_file, runtime=path).runtime


def test_a_runtime_replaces_the_software_figures_and_leaves_the_rest(tmp_path):
    """Its dispatch and mode replace the hardware's; a kernel's cost merges field by field with what the
    hardware file says of that kernel; what it does not say stays the hardware's; a collective cost needs
    links (ignored on one device, applied on a node)."""
    rt = write(tmp_path, "dispatch_overhead: 5 us\ndispatch_mode: sync\ncollective_overhead: 30 us\n"
                         "kernels: {gelu: {fixed: 2 us}}\n")
    own = tmp_path / "hw.yaml"  # a hardware file whose GELU has a dispatch cost of its own
    own.write_text(TOY.read_text().replace("  dispatch_overhead: 1 us", "  dispatch_overhead: 1 us\n"
                                           "  kernels: {gelu: {dispatch: 9 us}}"))
    base, hw = load_hardware(own), load_hardware(own, runtime=rt)
    assert (hw.device.dispatch_overhead, hw.device.dispatch_mode) == (pytest.approx(5e-6), "sync")
    assert hw.device.kernels["gelu"].fixed == pytest.approx(2e-6)
    assert hw.device.kernels["gelu"].dispatch == pytest.approx(9e-6)  # the hardware file's, kept
    assert hw.device.compute == base.device.compute and hw.device.memory == base.device.memory
    assert hw.interconnect is None and hw.runtime == "test runtime"
    node = load_hardware(DATA / "toy-node.yaml", runtime=rt)
    assert node.interconnect.collective_overhead == pytest.approx(30e-6)


def test_captured_graphs_dispatch_nothing_from_the_host(tmp_path):
    """`graphs: true`: no op pays host dispatch, a kernel with its own dispatch cost included; a toy decode
    paced by a 1 us host per op is then paced by the device."""
    rt = write(tmp_path, "graphs: true\n")
    own = tmp_path / "hw.yaml"  # a hardware file whose GELU has a dispatch cost of its own
    own.write_text(TOY.read_text().replace("  dispatch_overhead: 1 us", "  dispatch_overhead: 1 us\n"
                                           "  kernels: {gelu: {dispatch: 9 us}}"))
    assert load_hardware(own).device.kernels["gelu"].dispatch == pytest.approx(9e-6)
    hw = load_hardware(own, runtime=rt)
    assert hw.device.dispatch_overhead == 0 and hw.device.kernels["gelu"].dispatch == 0
    slow = tmp_path / "slow-host.yaml"
    slow.write_text(TOY.read_text().replace("  dispatch_overhead: 1 us", "  dispatch_overhead: 1 ms"))
    wl, _ = load(DATA / "toy-gpt.yaml")
    paced = summarize(run(wl, load_hardware(slow)))
    graphs = summarize(run(wl, load_hardware(slow, runtime=rt)))
    assert paced["paced_by"] == "host" and graphs["paced_by"] == "device"
    assert graphs["total_s"] < 0.1 * paced["total_s"]


def test_set_runtime_keys_override_the_runtime_file_or_make_one(tmp_path):
    rt = write(tmp_path, "dispatch_overhead: 5 us\n")
    assert load_hardware(TOY, [("runtime.dispatch_overhead", "8 us")], runtime=rt).device.dispatch_overhead == 8e-6
    assert load_hardware(TOY, [("runtime.dispatch_overhead", "3 us")]).device.dispatch_overhead == 3e-6
    # a hardware --set still has the last word
    hw = load_hardware(TOY, [("device.dispatch_overhead", "4 us")], runtime=rt)
    assert hw.device.dispatch_overhead == 4e-6


def test_bad_runtime_input_is_one_line_naming_the_runtime_file_and_key(tmp_path):
    bad = write(tmp_path, "dispatch_overhead: 5 parsecs\n", "bad.yaml")
    with pytest.raises(ConfigError, match="bad.yaml: dispatch_overhead"):
        load_hardware(TOY, runtime=bad)
    typo = write(tmp_path, "dispach_overhead: 5 us\n", "typo.yaml")
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--runtime", str(typo))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "typo.yaml: dispach_overhead" in r.stderr
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--runtime", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml" in r.stderr and "Traceback" not in r.stderr
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\nsource: x\n")
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--runtime", str(latin))
    assert r.returncode == 2 and r.stderr.strip().endswith("latin.yaml: not UTF-8 text (byte 9)")


def test_a_workload_names_its_default_runtime_and_runtime_replaces_it(tmp_path):
    """The workload's `runtime:` (relative to it) applies unless `--runtime` names another; the report
    names the runtime it ran."""
    write(tmp_path, "dispatch_overhead: 1 ms\n", "slow.yaml")
    fast = write(tmp_path, "graphs: true\n", "fast.yaml")
    text = (DATA / "toy-gpt.yaml").read_text().replace("hardware: toy-hw.yaml", f"hardware: {TOY}\nruntime: slow.yaml")
    wl = tmp_path / "wl.yaml"
    wl.write_text(text)
    default = cli("run", str(wl))
    replaced = cli("run", str(wl), "--runtime", str(fast))
    assert default.returncode == replaced.returncode == 0, default.stderr + replaced.stderr
    assert "runtime: test runtime" in default.stdout and "host dispatch" in default.stdout
    assert "paced by                " in replaced.stdout and "host dispatch (a faster" not in replaced.stdout
