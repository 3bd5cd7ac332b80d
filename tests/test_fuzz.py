"""Bad input, generated: shipped input files mutated at random (a line dropped, doubled or cut; a value
replaced by a hostile one; bytes that are not UTF-8) are either loaded or refused with one ConfigError
line that names the file — never another exception, and within a time bound. Derandomised, so that CI
sees the same examples every run; the CLI itself is exercised on a few of them (exit 0 or 2, one line)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, cli
from sim.config import load_run
from sim.errors import ConfigError

FILES = {"workload": ROOT / "workloads/gpt2.yaml", "hardware": ROOT / "hardware_models/h100-sxm.yaml",
         "runtime": ROOT / "runtimes/compiled.yaml"}

#: values a careless or hostile user writes where a figure belongs
HOSTILE = st.sampled_from([
    "", "~", "-1", "0", "1e400", ".inf", "-.inf", ".nan", "1e308", "9" * 5000, "[" * 60 + "]" * 60, "{a: 1}",
    "[1, 2]", "'12 parsecs'", "'5 GB/s'", "'5 us'", "true", "*undefined", "&a 1", "!!python/object:os.system x",
    "'" + "x" * 500 + "'", "3.5", "1000000000000", "'\\u0000'",
])


@st.composite
def mutated(draw) -> tuple[str, str]:
    """(which file, its mutated text)."""
    which = draw(st.sampled_from(sorted(FILES)))
    lines = FILES[which].read_text().splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["drop", "double", "value", "cut", "indent"]))
        if kind == "drop":
            del lines[i]
        elif kind == "double":
            lines.insert(i, lines[i])
        elif kind == "cut":
            lines[i] = lines[i][: draw(st.integers(0, max(0, len(lines[i]) - 1)))]
        elif kind == "indent":
            lines[i] = " " * draw(st.integers(1, 3)) + lines[i]
        elif ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {draw(HOSTILE)}"
        if not lines:
            lines = ["x: 1"]
    return which, "\n".join(lines) + "\n"


def _load(tmp: Path, which: str, text: str | bytes) -> None:
    paths = {name: tmp / f"{name}.yaml" for name in FILES}
    for name, path in paths.items():
        data = text if name == which else FILES[name].read_text()
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    wl = paths["workload"].read_bytes()
    if which != "workload":  # the shipped workload, pointed at the copies beside it
        wl = wl.replace(b"../hardware_models/h100-sxm.yaml", b"hardware.yaml")
    paths["workload"].write_bytes(wl.replace(b"../hardware_models/a100-sxm4-80gb.yaml", b"hardware.yaml")
                                  .replace(b"../runtimes/compiled.yaml", b"runtime.yaml"))
    load_run(paths["workload"], [], paths["hardware"], paths["runtime"])


FIXTURE = [HealthCheck.function_scoped_fixture]  # tmp_path is rewritten whole by every example


@settings(max_examples=150, derandomize=True, deadline=2000, suppress_health_check=FIXTURE)
@given(case=mutated())
def test_a_mutated_input_loads_or_is_one_line_naming_its_file(tmp_path, case):
    which, text = case
    try:
        _load(tmp_path, which, text)
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message and len(message) < 600, message
        assert f"{which}.yaml" in message or "--set" in message, message


@settings(max_examples=25, derandomize=True, deadline=2000, suppress_health_check=FIXTURE)
@given(junk=st.binary(min_size=1, max_size=200), which=st.sampled_from(sorted(FILES)))
def test_arbitrary_bytes_load_or_are_one_line(tmp_path, junk, which):
    try:
        _load(tmp_path, which, junk)
    except ConfigError as e:
        assert "\n" not in str(e) and f"{which}.yaml" in str(e)


def test_the_cli_on_mutated_inputs_exits_0_or_2_with_one_line(tmp_path):
    """A handful through the command line: exit 0, or exit 2 with one line on stderr and no traceback."""
    examples = [("hardware", FILES["hardware"].read_text().replace("bandwidth: 3.35 TB/s", "bandwidth: 1e400")),
                ("runtime", FILES["runtime"].read_text().replace("launch: 6.6 us", "launch: [[[1]]]")),
                ("workload", FILES["workload"].read_text().replace("  layers: 12", "  layers: 12\n  layers: 12")),
                ("runtime", FILES["runtime"].read_text() + "platforms: 5\n")]
    for which, text in examples:
        with contextlib.suppress(ConfigError):  # the files are written either way
            _load(tmp_path, which, text)
        r = cli("run", str(tmp_path / "workload.yaml"), "--hardware", str(tmp_path / "hardware.yaml"),
                "--runtime", str(tmp_path / "runtime.yaml"), "--set", "scenario.new_tokens=2")
        assert r.returncode in (0, 2) and "Traceback" not in r.stderr, r.stderr[-500:]
        assert r.returncode == 0 or r.stderr.count("\n") == 1, r.stderr
