"""Runtimes, the third input family: the software's costs, per platform, applied onto a hardware file's,
by file, by a workload's default and by `--set runtime.*`; bad runtime input is one line naming the
runtime file."""

from pathlib import Path

import pytest

from conftest import DATA, ROOT, cli, load
from sim.config import load_hardware, load_run
from sim.errors import ConfigError
from sim.pipeline import run
from sim.report import summarize

TOY = DATA / "toy-hw.yaml"
RUNTIMES = sorted(p for p in (ROOT / "runtimes").glob("*.yaml") if not p.name.startswith("host"))  # shipped


def write(tmp_path: Path, text: str, name: str = "rt.yaml", platform: str = "accelerator") -> Path:
    """A runtime file with one platform's section (the toy machines' platform): `text`, indented."""
    path = tmp_path / name
    body = "".join(f"    {line}\n" for line in text.splitlines())
    path.write_text(f"name: test runtime\nsource: a test\nplatforms:\n  {platform}:\n{body}")
    return path


HARDWARE = sorted(p for p in (ROOT / "hardware_models").glob("*.yaml") if not p.name.startswith("host"))


@pytest.mark.parametrize("path", RUNTIMES, ids=lambda p: p.name)
def test_shipped_runtimes_load_onto_the_hardware_of_their_platforms_and_cite_a_source(path):
    import yaml

    assert len(yaml.safe_load(path.read_text())["source"]) > 80
    platforms = set(yaml.safe_load(path.read_text())["platforms"])
    for hw_file in HARDWARE:
        if load_hardware(hw_file).device.platform in platforms:
            assert load_hardware(hw_file, runtime=path).runtime
        else:
            with pytest.raises(ConfigError, match="platforms: no '"):
                load_hardware(hw_file, runtime=path)


@pytest.mark.parametrize("hw_file", HARDWARE, ids=lambda p: p.name)
def test_shipped_hardware_files_hold_no_software_figures_and_every_workload_runs_on_them(hw_file):
    """Hardware files keep only hardware; each shipped workload's default runtime covers each one's platform."""
    dev = load_hardware(hw_file).device
    assert (dev.dispatch_overhead, dev.launch_overhead, dev.step_overhead, dev.compute.matmul_overhead) == (0, 0, 0, 0)
    links = load_hardware(hw_file).interconnect
    assert dev.kernels == {} and dev.dispatch_mode == "async" and dev.threads is None  # the defaults: no software
    assert links is None or (links.collective_overhead == 0 and list(links.library.protocols) == ["simple"])
    for workload in sorted((ROOT / "workloads").glob("*.yaml")):
        wl, hw, _ = load_run(workload, hardware=hw_file)
        assert wl.runtime and hw.runtime


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
    with pytest.raises(ConfigError, match="bad.yaml: platforms.accelerator.dispatch_overhead: unknown unit"):
        load_hardware(TOY, runtime=bad)
    typo = write(tmp_path, "dispach_overhead: 5 us\n", "typo.yaml")
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--runtime", str(typo))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "typo.yaml: platforms.accelerator.dispach_overhead: unknown key" in r.stderr
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


def test_each_platform_gets_its_own_section_and_a_missing_one_is_one_line(tmp_path):
    """One runtime, two platforms: a CPU and a GPU each take their section's figures; a platform the
    runtime does not name is refused naming the runtime, the hardware and what it has."""
    rt = tmp_path / "two.yaml"
    rt.write_text("name: two\nsource: a test\nplatforms:\n  cuda: {dispatch_overhead: 7 us}\n"
                  "  cpu: {dispatch_overhead: 3 us, dispatch_mode: sync}\n")
    gpu = load_hardware(ROOT / "hardware_models/h100-sxm.yaml", runtime=rt).device
    cpu = load_hardware(ROOT / "hardware_models/xeon-gold-6242.yaml", runtime=rt).device
    assert (gpu.dispatch_overhead, gpu.dispatch_mode) == (pytest.approx(7e-6), "async")
    assert (cpu.dispatch_overhead, cpu.dispatch_mode) == (pytest.approx(3e-6), "sync")
    # --set device.platform picks the section too
    assert load_hardware(TOY, [("device.platform", "cpu")], runtime=rt).device.dispatch_overhead == pytest.approx(3e-6)
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--runtime", str(rt))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "two.yaml: platforms: no 'accelerator' section" in r.stderr and "(it has cuda, cpu)" in r.stderr


def test_a_runtime_extends_another_on_the_platforms_it_names(tmp_path):
    """`extends` starts from the parent's figures, key by key and kernel field by field, on the child's
    platforms only; a cycle is one line."""
    (tmp_path / "base.yaml").write_text(
        "name: base\nsource: a test\nplatforms:\n  accelerator: {dispatch_overhead: 2 us, launch_overhead: 1 us,"
        " kernels: {gelu: {fixed: 3 us, dispatch: 4 us}}}\n  cpu: {dispatch_overhead: 9 us}\n")
    child = write(tmp_path, "extends: base.yaml", "child.yaml")
    child.write_text("name: child\nsource: a test\nextends: base.yaml\nplatforms:\n"
                     "  accelerator: {dispatch_overhead: 5 us, kernels: {gelu: {fixed: 1 us}}}\n")
    dev = load_hardware(TOY, runtime=child).device
    assert (dev.dispatch_overhead, dev.launch_overhead) == (pytest.approx(5e-6), pytest.approx(1e-6))
    assert (dev.kernels["gelu"].fixed, dev.kernels["gelu"].dispatch) == (pytest.approx(1e-6), pytest.approx(4e-6))
    with pytest.raises(ConfigError, match="child.yaml: platforms: no 'cpu' section"):
        load_hardware(TOY, [("device.platform", "cpu")], runtime=child)
    # what a runtime fuses is one model: a child's own `fuse` replaces its parent's whole
    (tmp_path / "fused.yaml").write_text("name: f\nsource: x\nextends: base.yaml\nplatforms:\n"
                                         "  accelerator: {fuse: {gelu: producer, add: consumer}}\n")
    (tmp_path / "less.yaml").write_text("name: l\nsource: x\nextends: fused.yaml\nplatforms:\n"
                                        "  accelerator: {fuse: {add: consumer}}\n")
    assert load_hardware(TOY, runtime=tmp_path / "fused.yaml").device.fuse == {"gelu": "producer", "add": "consumer"}
    assert load_hardware(TOY, runtime=tmp_path / "less.yaml").device.fuse == {"add": "consumer"}
    (tmp_path / "a.yaml").write_text("name: a\nsource: x\nextends: b.yaml\nplatforms: {accelerator: {}}\n")
    (tmp_path / "b.yaml").write_text("name: b\nsource: x\nextends: a.yaml\nplatforms: {accelerator: {}}\n")
    with pytest.raises(ConfigError, match="extends: a.yaml extends this file again"):
        load_hardware(TOY, runtime=tmp_path / "a.yaml")


def test_shipped_runtimes_order_the_software_costs_of_a_small_decode():
    """GPT-2 decode, batch 1, on the H200 model: eager PyTorch (host-paced) is slower than the compiled
    runtime, which is no faster than the same kernels replayed from CUDA graphs (on the H200 the device's
    launches outlast a compiled host's 2 us per kernel, so the two are equal)."""
    times = {}
    for name in ("eager-pytorch", "compiled", "cuda-graphs"):
        wl, hw, _ = load_run(ROOT / "workloads/gpt2.yaml", [("scenario.new_tokens", 4)],
                             ROOT / "hardware_models/h200-sxm.yaml", ROOT / f"runtimes/{name}.yaml")
        times[name] = summarize(run(wl, hw))["tpot_s"]
    assert times["eager-pytorch"] > 1.3 * times["compiled"] and times["compiled"] >= times["cuda-graphs"]


def test_a_fused_serving_runtime_drops_the_launches_of_what_it_fuses():
    """Under runtimes/serving.yaml, RoPE, the residual adds and GELU run inside a neighbouring kernel;
    every other kernel keeps the CUDA-graph runtime's costs, and a Llama decode step is faster by the
    launches and fixed times it drops (and the few KB it keeps on chip), no more."""
    h200 = ROOT / "hardware_models/h200-sxm.yaml"
    graphs = load_hardware(h200, runtime=ROOT / "runtimes/cuda-graphs.yaml").device
    serving = load_hardware(h200, runtime=ROOT / "runtimes/serving.yaml").device
    assert serving.fuse == {"rope": "consumer", "add": "consumer", "gelu": "producer"} and not graphs.fuse
    assert serving.launch_for("rmsnorm") == graphs.launch_for("rmsnorm") and serving.dispatch_overhead == 0
    sets = [("model.layers", 2), ("scenario.new_tokens", 4)]
    results = {}
    for name in ("cuda-graphs", "serving"):
        wl, hw, _ = load_run(ROOT / "workloads/llama2-7b.yaml", sets, h200, ROOT / f"runtimes/{name}.yaml")
        results[name] = run(wl, hw)
    saved = summarize(results["cuda-graphs"])["total_s"] - summarize(results["serving"])["total_s"]
    fused_away = [r for r in results["cuda-graphs"].ops
                  if r.name.rsplit(".", 1)[1] in ("rope", "residual", "residual2")]
    per_op = {"rope": graphs.fixed_for("rope", False), "residual": graphs.fixed_for("add", False),
              "residual2": graphs.fixed_for("add", False)}
    dropped = sum(graphs.launch_overhead + per_op[r.name.rsplit(".", 1)[1]] for r in fused_away)
    # at least the launches and fixed times; at most the whole time those ops took (their memory round trips)
    assert len(fused_away) == 3 * 2 * 5 and dropped <= saved + 1e-12 <= sum(r.end_s - r.start_s for r in fused_away)


def test_set_runtime_keys_never_make_a_platform_the_runtime_lacks_nor_change_what_it_extends():
    """`--set runtime.<key>` changes the chosen platform's section; on hardware of a platform the runtime
    has no section for it is the same one-line refusal as without it; `runtime.extends` cannot be set."""
    xeon, graphs = ROOT / "hardware_models/xeon-gold-6242.yaml", ROOT / "runtimes/cuda-graphs.yaml"
    with pytest.raises(ConfigError, match="no 'cpu' section"):
        load_hardware(xeon, [("runtime.dispatch_overhead", "1 us")], graphs)
    with pytest.raises(ConfigError, match="runtime.extends: cannot be set"):
        load_hardware(ROOT / "hardware_models/h100-sxm.yaml", [("runtime.extends", "eager-pytorch.yaml")], graphs)


def test_a_child_runtime_replaces_its_parents_collective_library_whole(tmp_path):
    """A collective library is one model: a child naming its own protocols drops the parent's."""
    base = ROOT / "runtimes/compiled.yaml"
    child = tmp_path / "one-protocol.yaml"
    child.write_text(f"name: child\nsource: a test\nextends: {base}\nplatforms:\n  cuda:\n"
                     "    collectives: {protocols: {Simple: {launch: 1 us}}}\n")
    lib = load_hardware(ROOT / "hardware_models/h100-sxm.yaml", runtime=child).interconnect.library
    assert list(lib.protocols) == ["Simple"] and lib.in_switch is None
    assert lib.protocols["Simple"].launch == pytest.approx(1e-6)


def test_a_runtime_reserves_device_memory_outside_the_graph(tmp_path):
    """`memory_reserved` (a CUDA context, workspaces, communication buffers) takes room from the device's
    DRAM: tensors have that much less, the DRAM's peak counts it as `runtime`, the report shows it; more
    than the DRAM holds is one line."""
    from sim.mapping.placement import level_capacity

    base = load_hardware(TOY)
    hw = load_hardware(TOY, [("runtime.memory_reserved", "512 MiB")])
    assert level_capacity(base, "dram") - level_capacity(hw, "dram") == 512 * 2**20
    wl, _ = load(DATA / "toy-gpt.yaml")
    s = summarize(run(wl, hw))
    assert s["memory"]["dram"]["runtime"] == 512 * 2**20
    assert s["memory"]["dram"]["peak_bytes"] == pytest.approx(512 * 2**20 + s["memory"]["dram"]["weights"])
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--set", "runtime.memory_reserved=512 MiB")
    assert r.returncode == 0 and "reserved by the runtime" in r.stdout
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--set", "runtime.memory_reserved=2 GiB")
    assert r.returncode == 2 and "memory_reserved: the runtime's reserved memory needs a DRAM level larger" in r.stderr


def test_the_compiled_runtimes_nvls_figures_are_the_fit_to_their_published_curve():
    """runtimes/compiled.yaml's in-switch step, bandwidth share and chunk overhead are what
    bench/nccl_fit.py fits to the published H200 nccl-tests curve (sim/data/nccl-fit.yaml), as printed;
    the fit reproduces that curve's in-switch rows within 15% (the model has no more freedom than these
    three figures and NCCL's chunk rule)."""
    from sim.validate.nccl import fit_in_switch, fitted_errors

    fit = fit_in_switch("h200-nvls-stas00")
    shipped = load_hardware(ROOT / "hardware_models/h200-sxm.yaml",
                            runtime=ROOT / "runtimes/compiled.yaml").interconnect.library.in_switch
    assert shipped.step == pytest.approx(round(fit.step * 1e6, 1) * 1e-6)
    assert shipped.bandwidth == pytest.approx(round(fit.bandwidth, 3))
    assert shipped.chunk_overhead == pytest.approx(round(fit.chunk_overhead * 1e9, 1) * 1e-9)
    rows = [(s, t, p) for s, t, p in fitted_errors(fit) if s >= 2**21]
    assert len(rows) == fit.rows and all(abs(p / t - 1) < 0.15 for _, t, p in rows)


def test_threads_make_the_device_that_many_of_its_units():
    """A CPU framework's `threads` (torch.set_num_threads): the device is then that many units, its peaks,
    kernel rates and levels' bandwidth scaled in proportion (no level then looks faster than the one inside
    it: no warning); a compute-bound op takes units / threads times as long; more threads than units, a
    boolean, or a malformed figure under them, is one line naming the key."""
    xeon = ROOT / "hardware_models" / "xeon-gold-6242.yaml"
    rt = ROOT / "runtimes" / "eager-pytorch.yaml"
    full, four = load_hardware(xeon, runtime=rt), load_hardware(xeon, [("runtime.threads", 4)], runtime=rt)
    assert (full.device.compute.units, four.device.compute.units, four.device.threads) == (16, 4, 4)
    assert four.device.compute.peak["fp32"] == pytest.approx(full.device.compute.peak["fp32"] / 4)
    assert four.device.compute.vector == pytest.approx(full.device.compute.vector / 4)
    for name, level in full.device.memory.items():  # each level's bandwidth shared out; capacities as written
        assert four.device.memory[name].bandwidth == pytest.approx(level.bandwidth / 4)
        assert four.device.memory[name].capacity == level.capacity  # per unit: 4 units hold a quarter
    assert load_hardware(xeon, [("runtime.threads", 16)], runtime=rt).device.compute == full.device.compute
    toy_rt = [("runtime.threads", 1)]  # the toy machine's one unit: nothing to scale
    assert load_hardware(TOY, toy_rt).device.compute == load_hardware(TOY).device.compute
    # a 256-cube fp32 GEMM (cache-resident; no software costs): compute-bound, 4x as long on 4 threads
    from sim.validate.cases import predict_matmul
    assert predict_matmul(load_hardware(xeon, [("device.threads", 4)]), 256, 256, 256, "fp32") == pytest.approx(
        4 * predict_matmul(load_hardware(xeon), 256, 256, 256, "fp32"), rel=0.01)  # (less the fixed latency)
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--hardware", str(xeon), "--runtime", str(rt),
            "--set", "runtime.threads=32")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "device.threads: at most the device's 16 compute units (got 32)" in r.stderr
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--hardware", str(xeon), "--runtime", str(rt),
            "--set", "runtime.threads=4", "--set", "device.compute.vector=fast")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "device.compute.vector" in r.stderr
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--hardware", str(xeon), "--runtime", str(rt),
            "--set", "runtime.threads=1")
    assert r.returncode == 0 and "; 1 thread" in r.stdout and r.stderr == ""
    r = cli("run", str(DATA / "toy-gpt.yaml"), "--hardware", str(xeon), "--set", "device.threads=true")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "device.threads" in r.stderr
