"""Sweeps: axis expansion, streaming tables, resume, failures, determinism, Dask, plots."""

import csv
import shutil
from pathlib import Path

import pytest

from conftest import DATA, ROOT, cli
from sim.errors import ConfigError
from sim.sweep import load_sweep, run_sweep
from sim.sweep.spec import point_id, year_overrides

SWEEP = DATA / "toy-sweep.yaml"


def rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_grid_and_log_range_expand():
    s = load_sweep(SWEEP)
    assert len(s.points) == 3 * 2
    bws = sorted({p.values["device.memory.dram.bandwidth"] for p in s.points})
    assert bws == ["10 GB/s", "20 GB/s", "5 GB/s"]
    assert len({p.id for p in s.points}) == 6


def test_random_samples_are_seeded(tmp_path):
    text = SWEEP.read_text().replace('{log: ["5 GB/s", "20 GB/s"], points: 3}', '{loguniform: ["5 GB/s", "20 GB/s"]}')
    (tmp_path / "s.yaml").write_text(text + "samples: 7\nseed: 3\n")
    shutil.copy(DATA / "toy-gpt.yaml", tmp_path)
    shutil.copy(DATA / "toy-hw.yaml", tmp_path)
    a, b = load_sweep(tmp_path / "s.yaml"), load_sweep(tmp_path / "s.yaml")
    assert len(a.points) == 7 and [p.values for p in a.points] == [p.values for p in b.points]
    for p in a.points:
        value = float(p.values["device.memory.dram.bandwidth"].split()[0])
        assert 5 <= value <= 20


def test_year_scales_by_trend_rates():
    import yaml

    hw = yaml.safe_load((ROOT / "hardware_models/a100-sxm4-80gb.yaml").read_text())
    o = dict(year_overrides(hw, 2024, 2020))  # two 2-year periods
    assert o["device.compute.peak.fp16"] == pytest.approx(312e12 * 9)
    assert o["device.memory.hbm.bandwidth"] == pytest.approx(2.039e12 * 1.6**2)
    assert o["interconnect.link.bandwidth"] == pytest.approx(300e9 * 1.4**2)
    assert "device.memory.l2.bandwidth" not in o  # caches are not DRAM


def test_sweep_writes_one_row_per_point_and_resumes(tmp_path):
    s = load_sweep(SWEEP)
    csv_path, parquet_path, n = run_sweep(s, tmp_path, workers=1)
    assert n == 6 and parquet_path.exists()
    table = rows(csv_path)
    assert [r["point_id"] for r in table] == [p.id for p in s.points]
    assert all(r["status"] == "ok" and float(r["total_s"]) > 0 for r in table)
    # more DRAM bandwidth never slows the same batch down
    by = {(r["scenario.batch"], r["device.memory.dram.bandwidth"]): float(r["total_s"]) for r in table}
    assert by[("1", "20 GB/s")] <= by[("1", "10 GB/s")] <= by[("1", "5 GB/s")]
    first = csv_path.read_bytes()
    # a kill mid-write leaves a partial row: it is dropped and recomputed, nothing is duplicated
    lines = first.decode().splitlines(keepends=True)
    csv_path.write_text("".join(lines[:3]) + lines[3][:20])
    _, _, again = run_sweep(s, tmp_path, workers=1)
    assert again == 4
    assert csv_path.read_bytes() == first  # same table, byte for byte, in point order


def test_failed_point_records_its_error_and_the_sweep_goes_on(tmp_path):
    text = SWEEP.read_text().replace("scenario.batch: [1, 2]", "scenario.batch: [1, 0]")
    (tmp_path / "s.yaml").write_text(text)
    shutil.copy(DATA / "toy-gpt.yaml", tmp_path)
    shutil.copy(DATA / "toy-hw.yaml", tmp_path)
    csv_path, _, n = run_sweep(load_sweep(tmp_path / "s.yaml"), tmp_path / "out", workers=1)
    table = rows(csv_path)
    assert n == 6
    bad = [r for r in table if r["status"] == "error"]
    assert len(bad) == 3 and all("scenario.batch" in r["error"] for r in bad)
    assert sum(r["status"] == "ok" for r in table) == 3


def test_a_point_whose_outer_level_outruns_the_inner_one_runs_and_says_so(tmp_path):
    """The toy's SRAM serves 100 GB/s: a DRAM axis reaching 200 GB/s makes machines no hierarchy builds.
    Those points still run; their `warning` says which level, and the command prints one line for all."""
    text = SWEEP.read_text().replace('{log: ["5 GB/s", "20 GB/s"], points: 3}', '["20 GB/s", "200 GB/s"]')
    (tmp_path / "s.yaml").write_text(text)
    shutil.copy(DATA / "toy-gpt.yaml", tmp_path)
    shutil.copy(DATA / "toy-hw.yaml", tmp_path)
    res = cli("sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--workers", "1")
    assert res.returncode == 0, res.stderr
    table = rows(tmp_path / "out" / "toy-sweep.csv")
    assert all(r["status"] == "ok" for r in table)
    odd = [r for r in table if r["warning"]]
    assert {r["device.memory.dram.bandwidth"] for r in odd} == {"200 GB/s"} and len(odd) == 2
    assert "device.memory.dram: 200 GB/s is faster than the level inside it, sram" in odd[0]["warning"]
    assert [line for line in res.stderr.splitlines() if line.startswith("warning:")] == [
        line for line in res.stderr.splitlines() if "2 points describe a memory level faster" in line]


@pytest.mark.parametrize("section,key", [("axes", "scenario.batchh"), ("set", "device.compute.peakk"),
                                         ("axes", "runtime.dispatch_overheed")])
def test_a_misspelled_key_is_refused_before_any_point_runs(tmp_path, section, key):
    """A key no input has fails every point alike: one line naming the sweep file's key, exit 2, and no
    table (it used to run every point and write a table of errors)."""
    shutil.copy(DATA / "toy-gpt.yaml", tmp_path)
    shutil.copy(DATA / "toy-hw.yaml", tmp_path)
    axes = "{%s: [1, 2]}" % (key if section == "axes" else "scenario.batch")
    extra = f"set: {{{key}: 1}}\n" if section == "set" else ""
    (tmp_path / "s.yaml").write_text(f"name: t\nworkload: toy-gpt.yaml\n{extra}axes: {axes}\n")
    res = cli("sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--workers", "1")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert f"s.yaml: {section}.{key}: unknown key" in line
    assert not (tmp_path / "out").exists()


def test_a_typo_inside_one_input_file_fails_only_its_points(tmp_path):
    """An unknown key the sweep does not set (a typo in one of its hardware files) is that file's points'
    error, not a refusal of the sweep; a `workload.`-prefixed misspelling is still the sweep's own."""
    shutil.copy(DATA / "toy-gpt.yaml", tmp_path)
    shutil.copy(DATA / "toy-hw.yaml", tmp_path)
    (tmp_path / "bad-hw.yaml").write_text((DATA / "toy-hw.yaml").read_text().replace("  dispatch_overhead",
                                                                                      "  dispatch_overheed"))
    (tmp_path / "s.yaml").write_text("name: t\nworkload: toy-gpt.yaml\naxes: {hardware_file: [toy-hw.yaml, "
                                     "bad-hw.yaml], scenario.batch: [1, 2]}\n")
    res = cli("sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--workers", "1")
    assert res.returncode == 0, res.stderr
    table = rows(tmp_path / "out" / "t.csv")
    assert [r["status"] for r in table].count("error") == 2
    assert all("dispatch_overheed" in r["error"] for r in table if r["status"] == "error")
    (tmp_path / "p.yaml").write_text("name: p\nworkload: toy-gpt.yaml\naxes: {workload.scenario.batchh: [1, 2]}\n")
    res = cli("sweep", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "out2"), "--workers", "1")
    assert res.returncode == 2 and "p.yaml: axes.workload.scenario.batchh: unknown key" in res.stderr, res.stderr


def test_parallel_and_dask_give_the_same_table(tmp_path):
    from distributed import LocalCluster

    s = load_sweep(SWEEP)
    serial, _, _ = run_sweep(s, tmp_path / "serial", workers=1)
    local, _, _ = run_sweep(s, tmp_path / "local", workers=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dask, _, _ = run_sweep(s, tmp_path / "dask", scheduler=cluster.scheduler_address)
    assert serial.read_bytes() == local.read_bytes() == dask.read_bytes()


def test_bad_sweep_file_is_a_config_error(tmp_path):
    (tmp_path / "s.yaml").write_text("name: x\nworkload: a.yaml\naxes: {scenario.batch: {log: [1]}}\n")
    with pytest.raises(ConfigError, match="axes.scenario.batch"):
        load_sweep(tmp_path / "s.yaml")
    r = cli("sweep", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "nope.yaml: no such file" in r.stderr


def test_plots_from_a_table(tmp_path):
    csv_path, _, _ = run_sweep(load_sweep(SWEEP), tmp_path, workers=1)
    for args in (["--heatmap", "device.memory.dram.bandwidth", "scenario.batch", "tpot_s"],
                 ["--line", "device.memory.dram.bandwidth", "tpot_s", "--hue", "scenario.batch"],
                 ["--pareto", "total_s", "bytes_at_balance_level"]):
        out = tmp_path / f"{args[0][2:]}.png"
        r = cli("plot", str(csv_path), *args, "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert out.read_bytes()[:4] == b"\x89PNG"


def test_pareto_front():
    import pandas as pd

    from sim.sweep.plots import pareto_front

    df = pd.DataFrame({"x": [1, 2, 3, 2], "y": [3, 1, 0.5, 2]})
    assert sorted(pareto_front(df, "x", "y").index) == [0, 1, 2]


def test_a_sweeps_files_stay_inside_out_and_its_points_do_not_depend_on_the_checkouts_path(tmp_path):
    """`name` names files inside --out only (a path is one line, exit 2); the same sweep in two copies
    of a checkout has the same point ids, so a table resumes from either."""
    for bad in ("/tmp/x/pwn", "../up", "a/b", ".hidden"):
        text = SWEEP.read_text().replace("name: toy-sweep", f"name: {bad!r}")
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match="bad.yaml: name: expected a plain file name"):
            load_sweep(tmp_path / "bad.yaml")
    ids = []
    for copy in ("one", "two/deeper"):
        folder = tmp_path / copy
        folder.mkdir(parents=True)
        for f in ("toy-sweep.yaml", "toy-gpt.yaml", "toy-hw.yaml"):
            shutil.copy(DATA / f, folder)
        ids.append([p.id for p in load_sweep(folder / "toy-sweep.yaml").points])
    assert ids[0] == ids[1]


def test_two_sweeps_never_write_one_table_at_once(tmp_path):
    """While one sweep holds the table's lock, another on the same --out refuses in one line (it lost
    rows by interleaving before); the lock goes with the first, and no temporary file is left behind."""
    from sim.sweep.run import _locked

    sweep = load_sweep(SWEEP)
    with _locked(tmp_path, sweep.name), pytest.raises(ConfigError, match="another sweep is writing this table"):
        run_sweep(sweep, tmp_path, workers=1)
    csv_path, _, count = run_sweep(sweep, tmp_path, workers=1)
    assert count == len(sweep.points) and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("change,key", [
    (("set: {scenario.new_tokens: 2}", "set: [1]"), "set"),
    (("workload: toy-gpt.yaml", "workloads: 5"), "workloads"),
    (("workload: toy-gpt.yaml", "workloads: toy-gpt.yaml"), "workloads"),
    (("workload: toy-gpt.yaml", "workload: toy-gpt.yaml\nhardware: [x]"), "hardware"),
    (("workload: toy-gpt.yaml", "workload: toy-gpt.yaml\nruntime: {a: 1}"), "runtime"),
    (("scenario.batch: [1, 2]", "scenario.batch: [1, 2]\n  runtime_file: [1]"), "axes.runtime_file"),
    (("scenario.batch: [1, 2]", "scenario.batch: [1, 2]\n  hardware_file: {linear: [1, 2], points: 2}"),
     "axes.hardware_file"),
    (("points: 3}", "points: abc}"), "axes.device.memory.dram.bandwidth"),
    (("points: 3}", "points: 1000000000}"), "axes.device.memory.dram.bandwidth"),
    (("scenario.batch: [1, 2]", "scenario.batch: [1, 1]"), "axes.scenario.batch"),
    (('{log: ["5 GB/s", "20 GB/s"], points: 3}', "{loguniform: [-1, 5]}"), "axes.device.memory.dram.bandwidth"),
    (("name: toy-sweep", "name: toy-sweep\nseed: {a: 1}"), "seed"),
])
def test_a_sweep_file_of_the_wrong_shape_is_one_line_naming_the_key(tmp_path, change, key):
    text = SWEEP.read_text()
    assert change[0] in text
    text = text.replace(change[0], change[1])
    (tmp_path / "s.yaml").write_text(text + ("samples: 3\n" if "loguniform" in text or "seed" in text else ""))
    for f in ("toy-gpt.yaml", "toy-hw.yaml"):
        shutil.copy(DATA / f, tmp_path)
    r = cli("sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--workers", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"s.yaml: {key}:" in r.stderr, r.stderr


def test_a_sweep_whose_every_point_failed_exits_2(tmp_path):
    text = SWEEP.read_text().replace("scenario.batch: [1, 2]", "scenario.batch: [3, 5]")  # 3 and 5 heads don't divide
    (tmp_path / "s.yaml").write_text(text.replace("set: {scenario.new_tokens: 2}",
                                                  "set: {scenario.new_tokens: 2, parallelism.tensor: 3}"))
    for f in ("toy-gpt.yaml", "toy-hw.yaml"):
        shutil.copy(DATA / f, tmp_path)
    r = cli("sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--workers", "1")
    assert r.returncode == 2 and "every point computed now failed" in r.stderr
    assert (tmp_path / "out" / "toy-sweep.csv").exists()  # the table, with its errors, is still written


def test_plot_of_a_file_that_is_not_a_sweep_table_is_one_line(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    (tmp_path / "junk.parquet").write_bytes(b"\x00not parquet\xff" * 8)
    for name, says in (("other.csv", "not a sweep table"), ("junk.parquet", "not a readable sweep table")):
        r = cli("plot", str(tmp_path / name), "--pareto", "a", "b", "--out", str(tmp_path / "p.png"))
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert not (tmp_path / "p.png").exists()


def test_an_out_that_cannot_take_the_table_is_one_line(tmp_path):
    """--out naming a file, or a folder under a file: one line, exit 2, not click's usage block nor a
    traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in (blocker, blocker / "sub"):
        r = cli("sweep", str(SWEEP), "--out", str(out), "--workers", "1")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def test_a_line_over_one_axis_holds_the_others_and_says_so(tmp_path):
    """Over bandwidth in a bandwidth x batch table, a line without a hue keeps the first batch's points
    (it would zig-zag between batches) and its title says it; labels carry units from the registry."""
    import pandas as pd

    from sim.sweep import plots

    csv_path, _, _ = run_sweep(load_sweep(SWEEP), tmp_path, workers=1)
    df = pd.read_csv(csv_path)
    held, text = plots._hold(df, ["device.memory.dram.bandwidth", "workload"])
    assert set(held["scenario.batch"]) == {1} and len(held) == 3 and text == "held: scenario.batch = 1"
    assert plots._label("tpot_s") == "tpot_s [s]" and plots._label("device.memory.dram.bandwidth",
                                                                     df["device.memory.dram.bandwidth"]).endswith("[GB/s]")


def test_aliases_that_expand_into_millions_of_values_are_one_line(tmp_path):
    """A "billion laughs" in a sweep's `set` (aliases of aliases) is refused before anything expands it."""
    laughs = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        laughs.append(f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]")
    text = SWEEP.read_text().replace("set: {scenario.new_tokens: 2}", "set:\n  " + "\n  ".join(laughs))
    (tmp_path / "laughs.yaml").write_text(text)
    with pytest.raises(ConfigError, match="more than 200,000 values once its aliases are expanded"):
        load_sweep(tmp_path / "laughs.yaml")


def test_a_point_a_range_rounds_twice_runs_once(tmp_path):
    """A linear range of integers rounded onto the same values (1, 1, 2, 2, 2) is two points, not five."""
    text = SWEEP.read_text().replace("scenario.batch: [1, 2]", "scenario.batch: {linear: [1, 2], points: 5}")
    (tmp_path / "s.yaml").write_text(text)
    for f in ("toy-gpt.yaml", "toy-hw.yaml"):
        shutil.copy(DATA / f, tmp_path)
    sweep = load_sweep(tmp_path / "s.yaml")
    assert len(sweep.points) == 3 * 2 and len({p.id for p in sweep.points}) == 6


def test_a_folder_in_the_way_of_the_table_is_refused_before_any_point_runs(tmp_path):
    (tmp_path / "toy-sweep.parquet").mkdir()
    with pytest.raises(ConfigError, match="toy-sweep.parquet: is in the way"):
        run_sweep(load_sweep(SWEEP), tmp_path, workers=1)
    assert not (tmp_path / "toy-sweep.csv").exists()


def test_a_runtime_file_axis_runs_each_point_under_its_runtime(tmp_path):
    """sweeps/runtimes.yaml: each point runs under its runtime file (eager PyTorch's host dispatch is the
    slowest, the fused serving runtime the fastest, at both batches); the runtime is part of a point's
    identity, and a sweep that names none keeps the ids it had."""
    s = load_sweep(ROOT / "sweeps/runtimes.yaml")
    assert len(s.points) == 8 and len({p.id for p in s.points}) == 8
    assert {Path(p.runtime).name for p in s.points} == {"eager-pytorch.yaml", "compiled.yaml", "cuda-graphs.yaml",
                                                        "serving.yaml"}
    table = rows(run_sweep(s, tmp_path, workers=1)[0])
    for batch in ("1", "16"):
        t = {Path(r["runtime_file"]).stem: float(r["total_s"]) for r in table if r["scenario.batch"] == batch}
        assert t["eager-pytorch"] > t["compiled"] >= t["cuda-graphs"] > t["serving"]
    plain = load_sweep(SWEEP)
    assert plain.points[0].id == "f6f35b01816fcbbd"  # as before runtimes could be swept: old tables resume
    assert all(p.runtime is None and p.id == point_id(p.workload, p.hardware, p.overrides, SWEEP.parent.resolve())
               for p in plain.points)


def test_a_sweeps_runtime_applies_to_every_point_and_a_missing_one_is_each_points_error(tmp_path):
    """A top-level `runtime` runs every point under it (here the eager runtime's host dispatch makes
    the toy slower than without one); a runtime file that does not exist is each point's error, and a
    sweep whose every point failed exits 2."""
    for f in ("toy-gpt.yaml", "toy-hw.yaml"):
        shutil.copy(DATA / f, tmp_path)
    runtime = tmp_path / "slow.yaml"
    runtime.write_text("name: slow\nsource: a test\nplatforms:\n  accelerator: {dispatch_overhead: 50 us, "
                       "dispatch_mode: sync}\n")
    base = SWEEP.read_text()
    (tmp_path / "plain.yaml").write_text(base)
    (tmp_path / "slow-sweep.yaml").write_text(base.replace("name: toy-sweep", "name: slow\nruntime: slow.yaml"))
    plain = rows(run_sweep(load_sweep(tmp_path / "plain.yaml"), tmp_path / "a", workers=1)[0])
    slow = rows(run_sweep(load_sweep(tmp_path / "slow-sweep.yaml"), tmp_path / "b", workers=1)[0])
    assert all(float(s["total_s"]) > float(p["total_s"]) for p, s in zip(plain, slow, strict=True))
    (tmp_path / "gone.yaml").write_text(base.replace("name: toy-sweep", "name: gone\nruntime: nowhere.yaml"))
    r = cli("sweep", str(tmp_path / "gone.yaml"), "--out", str(tmp_path / "c"), "--workers", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert all("nowhere.yaml" in row["error"] for row in rows(tmp_path / "c" / "gone.csv"))
