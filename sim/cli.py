"""`python -m sim run WORKLOAD [--hardware HW] [--set k=v ...] [--json F] [--csv F] [--trace F] [--exact]`.

Bad input of any kind ends in one line on stderr naming file, key and problem, and exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from sim.config.units import short
from sim.errors import ConfigError

EXIT_BAD_INPUT = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="memwall")
def cli() -> None:
    """memwall: a discrete-event simulator of the memory wall for Transformer workloads."""


#: the most op records a per-op output (--json, --csv, --trace) holds: ~0.5 GB on disk, ~6 GB to write
MAX_OP_RECORDS = 500_000


@cli.command()
@click.argument("workload", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--hardware", "hardware", type=click.Path(dir_okay=False, path_type=Path),
              help="Hardware YAML (default: the workload's `hardware:`).")
@click.option("--runtime", "runtime", type=click.Path(dir_okay=False, path_type=Path),
              help="Runtime YAML (runtimes/: what the software adds per op and step; default: the workload's "
                   "`runtime:`, else none: the hardware file's own software figures, if any).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override any workload, hardware or runtime key, e.g. scenario.batch=8, "
                   "device.memory.hbm.bandwidth='4 TB/s' or runtime.dispatch_overhead='5 us'.")
@click.option("--json", "json_out", type=click.Path(path_type=Path),
              help="Write summary + op records ('-': to standard output, instead of the report).")
@click.option("--csv", "csv_out", type=click.Path(path_type=Path), help="Write one row per op ('-': to stdout).")
@click.option("--trace", "trace_out", type=click.Path(path_type=Path),
              help="Write a Chrome/Perfetto trace ('-': to stdout).")
@click.option("--roofline", "roofline_out", type=click.Path(path_type=Path),
              help="Write a roofline plot (PNG): the ops per class and phase on the machine's roofs.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=0),
              help="Operators listed in the top table (0: no table).")
@click.option("--exact", is_flag=True,
              help="Plan and simulate every op of every device on its own, reusing nothing (slow; the "
                   "reference the default fast path is tested against).")
def run(workload: Path, hardware: Path | None, runtime: Path | None, overrides: tuple[str, ...],
        json_out: Path | None, csv_out: Path | None, trace_out: Path | None, roofline_out: Path | None, top: int,
        exact: bool) -> None:
    """Simulate WORKLOAD and print where the time goes."""
    from sim.config import load_run, parse_overrides
    from sim.config.loader import runtime_of
    from sim.pipeline import run as run_pipeline
    from sim.report import render
    from sim.report.export import RENDER, STDOUT, check_outputs, write_outputs
    from sim.report.memory import spills

    outputs = {"--json": json_out, "--csv": csv_out, "--trace": trace_out, "--roofline": roofline_out}
    to_stdout = [option for option, path in outputs.items() if path == STDOUT]
    if "--roofline" in to_stdout:
        raise ConfigError("a plot cannot go to standard output: name a .png file", "--roofline")
    if len(to_stdout) > 1:
        raise ConfigError("only one output can go to standard output", " and ".join(to_stdout))
    sets = parse_overrides(list(overrides))
    wl, hw, hw_path = load_run(workload, sets, hardware, runtime)
    check_outputs(outputs, (workload, hw_path, runtime or runtime_of(workload, wl)))  # before the work
    for odd in hw.oddities():
        click.echo(f"warning: {hw_path}: {odd}", err=True)
    with _working(f"simulating {wl.name} on {hw.name}"):
        result = run_pipeline(wl, hw, str(hw_path), str(workload), exact=exact)
    result.overrides = list(overrides)
    for spill in spills(result):
        click.echo(f"warning: {spill}", err=True)
    per_op = [option for option in ("--json", "--csv", "--trace") if outputs[option] is not None]
    if per_op and result.op_records > MAX_OP_RECORDS:  # ~1 kB each on disk, ~11 kB in memory while written
        raise ConfigError(f"{result.op_records:,} op records (one per op per device) are beyond reason for a "
                          f"per-op file (at most {MAX_OP_RECORDS:,}; this one would take ~"
                          f"{result.op_records * 11e3 / 1e9:.0f} GB of memory to write): simulate fewer steps "
                          "(--set scenario.new_tokens=...) or read the terminal report and --roofline, which "
                          "aggregate", " and ".join(per_op))
    files = {path: RENDER[option](result) for option, path in outputs.items() if path not in (None, STDOUT)}
    # written before the report is printed: a write that fails is one line, not a report and then an error
    write_outputs(files, {path: option for option, path in outputs.items() if path in files})
    if not to_stdout:
        render(result, top=top)
    for option in to_stdout:
        click.echo(RENDER[option](result), nl=False)  # text (the plot is refused above)
    for path in files:
        click.echo(f"wrote {path}", err=bool(to_stdout))


@contextmanager
def _working(what: str) -> Iterator[None]:
    """A spinner on stderr while a long step runs, where stderr is a terminal; silent otherwise (a pipe,
    a file, CI)."""
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(what):
        yield


def _kernels(name: str):
    """`name`'s kernels module; one line and exit 2 for a framework that is not installed."""
    from sim.validate.kernels import kernels_of

    kernels = kernels_of(name)
    if kernels is None:
        raise ConfigError(f"{name} is not installed here (pip install -e '.[{name}]')", "--framework")
    return kernels


def _host_files(name: str) -> tuple[Path, Path]:
    """The default hardware and runtime files of this machine as `name` measures it."""
    suffix = "" if name == "numpy" else f"-{name}"
    return Path(f"hardware_models/host{suffix}.yaml"), Path(f"runtimes/host-{name}.yaml")


FRAMEWORK = click.option(
    "--framework", type=click.Choice(["numpy", "torch"]), default="numpy", show_default=True,
    help="What to measure this machine with (torch: eager PyTorch, installed with pip install -e '.[torch]').")


@cli.command()
@FRAMEWORK
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Hardware YAML to write. [default: hardware_models/host.yaml; host-torch.yaml with torch]")
@click.option("--runtime-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Runtime YAML to write (the framework's costs). [default: runtimes/host-<framework>.yaml]")
def calibrate(framework: str, out: Path | None, runtime_out: Path | None) -> None:
    """Measure this machine with microbenchmarks and write a hardware model and a runtime of it."""
    from rich.console import Console

    from sim.config import load_hardware
    from sim.report.export import check_outputs
    from sim.validate.calibrate import calibrate as measure
    from sim.validate.calibrate import write_model

    kernels, (hw_default, rt_default) = _kernels(framework), _host_files(framework)
    out, runtime_out = out or hw_default, runtime_out or rt_default
    check_outputs({"--out": out, "--runtime-out": runtime_out})  # before the minutes of measuring
    console = Console(highlight=False)
    with console.status("calibrating") as status:
        data = measure(lambda msg: status.update(f"calibrating: {msg}"), kern=kernels)
    write_model(data, out, runtime_out, framework)
    load_hardware(out, runtime=runtime_out)  # what we wrote must load
    console.print(f"wrote {out} and {runtime_out}")
    for key, how in data["calibration"].items():
        console.print(f"  {key}: {how}")


@cli.command()
@FRAMEWORK
@click.option("--hardware", type=click.Path(dir_okay=False, path_type=Path),
              help="Calibrated model of this machine (calibrated between the live cases' rounds if missing). "
                   "[default: hardware_models/host.yaml; host-torch.yaml with torch]")
@click.option("--runtime", type=click.Path(dir_okay=False, path_type=Path),
              help="Calibrated runtime of the framework on this machine (written with --hardware). "
                   "[default: runtimes/host-<framework>.yaml]")
@click.option("--quick", is_flag=True, help="Fewer, smaller live cases.")
@click.option("--no-live", is_flag=True, help="Without the live cases on this machine.")
@click.option("--no-published", is_flag=True, help="Without the published cases.")
@click.option("--no-measured", is_flag=True, help="Without the GPU cases memwall measured (sim/data/measured-*.yaml).")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the tables as Markdown (docs/validation.md is made this way).")
@click.option("--calibrate", "recalibrate", is_flag=True,
              help="Calibrate this machine again (writing --hardware), in rounds taken between the live cases' "
                   "rounds, so that both see the machine in the same minutes.")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="Rounds of live timing (and of calibration with --calibrate); each figure is its median "
                   "round. [default: 16; fewer run faster and scatter more on a busy machine]")
def validate(framework: str, hardware: Path | None, runtime: Path | None, quick: bool, no_live: bool,
             no_published: bool, no_measured: bool, markdown: Path | None, recalibrate: bool,
             rounds: int | None) -> None:
    """Predict, then measure: live cases on this machine, published cases on real accelerators, and
    GPU cases memwall measured with bench/gpu_measure.py."""
    from rich.console import Console

    from sim.config import load_hardware
    from sim.report.export import check_outputs, write_outputs
    from sim.validate.calibrate import calibrate as measure
    from sim.validate.calibrate import write_model
    from sim.validate.cases import ROUNDS, live_cases, live_timed, machine_drift, time_round
    from sim.validate.published import measured_cases, published_cases
    from sim.validate.report import drift_line, render, to_markdown

    check_outputs({"--markdown": markdown})  # before minutes of measuring, not after
    console = Console(highlight=False, width=160)
    rounds = rounds or ROUNDS
    live, drift = [], ""
    kernels = _kernels(framework) if not no_live else None
    hw_default, rt_default = _host_files(framework)
    hardware, runtime = hardware or hw_default, runtime or rt_default
    if not no_live:
        with console.status("live cases") as status:
            timed = live_timed(quick, kernels)
            times: list[list[float]] = [[] for _ in timed]

            def case_round(r: int, stage: str | None = None) -> None:
                status.update(f"live cases: timing, round {r + 1} of {rounds}")
                time_round(timed, times, stage)

            before = None
            if not recalibrate and hardware.exists() != runtime.exists():  # never overwrite half a model
                have, lack = (hardware, runtime) if hardware.exists() else (runtime, hardware)
                raise ConfigError(f"missing beside {have} (they are written together): calibrate both with "
                                  f"--calibrate", str(lack))
            if recalibrate or not hardware.exists():
                data = measure(lambda msg: status.update(f"calibrating, {msg}"), rounds=rounds, between=case_round,
                               kern=kernels)
                write_model(data, hardware, runtime, framework)
                hw = load_hardware(hardware, runtime=runtime)  # what we wrote must load
                console.print(f"wrote {hardware} and {runtime} (calibrated between the live cases' rounds)")
            else:
                hw = load_hardware(hardware, runtime=runtime)
                status.update("the machine against its calibration, before")
                before = machine_drift(hw, kernels)
                for r in range(rounds):
                    case_round(r)
            status.update("live cases: predicting")
            live = live_cases(hw, timed, times)
            status.update("the machine against its calibration, after")
            after = machine_drift(hw, kernels)
        render(console, f"Live cases on this machine ({framework}; predicted with {hardware} under {runtime})", live)
        drift = drift_line(before, after)
        console.print(f"  {drift}\n")
    published, calibrated = ([], []) if no_published else published_cases()
    if published:
        render(console, "Published cases (predicted with the shipped hardware models)", published)
    for line in calibrated:
        console.print(f"  calibrated: {line}")
    measured = [] if no_measured else measured_cases()
    if measured:
        render(console, "GPU cases measured by memwall (bench/gpu_measure.py; shipped hardware models)", measured)
    if markdown is not None:
        write_outputs({markdown: to_markdown(live, published, str(hardware), calibrated, drift, measured)})
        console.print(f"wrote {markdown}")


@cli.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/sweeps"),
              show_default=True, help="Folder for NAME.csv and NAME.parquet.")
@click.option("--workers", type=int, default=None, help="Local processes (default: one per core).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on a Dask distributed cluster, e.g. tcp://10.0.0.5:8786.")
def sweep(sweep_file: Path, out: Path, workers: int | None, scheduler: str | None) -> None:
    """Run every point of a sweep file; resumes where a killed run stopped."""
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from sim.sweep import load_sweep, run_sweep
    from sim.sweep.run import check_keys

    spec = load_sweep(sweep_file)
    check_keys(spec)  # before the progress bar: a misspelled key is one line
    failed, odd, first_odd, first_error = 0, 0, "", ""
    t0 = time.perf_counter()
    with Progress(TextColumn(f"[bold]{spec.name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn()) as progress:
        task = progress.add_task(spec.name, total=len(spec.points))

        def on_row(row: dict, done: int, total: int) -> None:
            nonlocal failed, odd, first_odd, first_error
            failed += row.get("status") == "error"
            first_error = first_error or (row.get("error") if row.get("status") == "error" else "")
            if row.get("warning"):
                odd += 1
                first_odd = first_odd or f"point {row['point_id']}: {row['warning']}"
            progress.update(task, completed=done)

        csv_path, parquet_path, computed = run_sweep(spec, out, workers, scheduler, on_row)
        progress.update(task, completed=len(spec.points))
    wall = time.perf_counter() - t0
    rate = f", {60 * computed / wall:.0f} points/min" if computed and wall > 0 else ""
    click.echo(f"{computed} points computed now, {len(spec.points) - computed} already in the table, "
               f"{failed} failed{rate}")
    click.echo(f"wrote {csv_path} and {parquet_path}")
    if odd:
        click.echo(f"warning: {odd} points describe a memory level faster than the one inside it (column "
                   f"`warning`), e.g. {first_odd}", err=True)
    if computed and failed == computed:  # nothing ran: a script must not take the table for results
        raise ConfigError(f"every point computed now failed (column `error`), e.g. {first_error}", str(sweep_file))


@cli.command()
@click.argument("workload", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--hardware", type=click.Path(dir_okay=False, path_type=Path),
              help="Hardware YAML (default: the workload's `hardware:`).")
@click.option("--runtime", type=click.Path(dir_okay=False, path_type=Path),
              help="Runtime YAML (default: the workload's `runtime:`).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a workload, hardware or runtime key, as `run` takes them.")
@click.option("--by", type=click.Choice(["batch", "layers"]), default="batch", show_default=True,
              help="Grow the global batch, or the model's layers at its batch.")
def fit(workload: Path, hardware: Path | None, runtime: Path | None, overrides: tuple[str, ...], by: str) -> None:
    """The largest batch (or model) whose training step fits in device memory, per memory-saving strategy."""
    from rich.console import Console
    from rich.table import Table

    from sim.config import parse_overrides
    from sim.config.units import fmt_bytes, fmt_time
    from sim.sweep.fit import fit as search

    fits = search(workload, hardware, parse_overrides(list(overrides)), by, runtime)
    t = Table(title=f"What fits in device memory: the largest {'global batch' if by == 'batch' else 'layers'} "
                    f"per strategy ({workload.name})")
    for col in ("strategy", f"largest {by}", "weights", "gradients", "optimizer", "activations", "step"):
        t.add_column(col, justify="left" if col == "strategy" else "right")
    for f in fits:
        if f.placement is None:
            t.add_row(f.strategy, "does not fit", "", "", "", "", "")
            continue
        fp = f.placement.footprint
        t.add_row(f.strategy, str(f.value), fmt_bytes(fp.weights), fmt_bytes(fp.gradients), fmt_bytes(fp.optimizer),
                  fmt_bytes(fp.activations), fmt_time(f.step_s))
    Console(highlight=False, width=160).print(t)


@cli.command()
@click.argument("table", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--heatmap", nargs=3, metavar="X Y Z", help="Z over axes X and Y (one panel per workload).")
@click.option("--line", nargs=2, metavar="X Y", help="Y over axis X.")
@click.option("--hue", default=None, help="With --line: one line per value of this column.")
@click.option("--pareto", nargs=2, metavar="X Y", help="Pareto front of X and Y (both minimised).")
@click.option("--roofline", is_flag=True, help="TABLE is a run's --json: its roofline (ops per class and phase "
              "on the machine's roofs).")
@click.option("--logx", is_flag=True)
@click.option("--logy", is_flag=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="PNG to write.")
def plot(table: Path, heatmap, line, hue, pareto, roofline: bool, logx: bool, logy: bool, out: Path) -> None:
    """Plot a sweep table (CSV or Parquet), or a run's roofline from its --json."""
    from sim.sweep import plots

    if sum(x is not None for x in (heatmap, line, pareto)) + roofline != 1:
        raise ConfigError("give exactly one of --heatmap, --line, --pareto, --roofline", "plot")
    if roofline:
        _roofline_of_json(table, out)
        return
    from sim.report.export import check_outputs

    check_outputs({"--out": out}, (table,))
    if heatmap:
        plots.heatmap(str(table), *heatmap, str(out))
    elif line:
        plots.lines(str(table), *line, str(out), hue=hue, logx=logx, logy=logy)
    else:
        plots.pareto(str(table), *pareto, str(out))
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("workload", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("hardware", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--runtime", type=click.Path(dir_okay=False, path_type=Path),
              help="Runtime YAML for every run (default: the workload's `runtime:`).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a key for every run.")
def compare(workload: Path, hardware: tuple[Path, ...], runtime: Path | None, overrides: tuple[str, ...]) -> None:
    """Run WORKLOAD on each HARDWARE and print the end-to-end figures side by side, with ratios to the first."""
    from sim.config import load_run, parse_overrides
    from sim.pipeline import run as run_pipeline
    from sim.report.terminal import render_comparison

    sets = parse_overrides(list(overrides))
    loaded = []
    for hw in hardware:  # every input checked before any run
        with _on(hw):
            loaded.append(load_run(workload, sets, hw, runtime))
    results = []
    for (wl, hw, path), named in zip(loaded, hardware):
        with _working(f"simulating {wl.name} on {hw.name}"), _on(named):
            results.append(run_pipeline(wl, hw, str(path), str(workload)))
    labels = [path.stem for path in hardware]
    if len(set(labels)) < len(labels):
        labels = [str(path) for path in hardware]
    if len(set(labels)) < len(labels):  # one file named twice: its columns by position
        labels = [f"{label} ({i + 1})" for i, label in enumerate(labels)]
    render_comparison(results, labels)


@contextmanager
def _on(machine: Path):
    """A bad-input error names the machine it happened on, where it names only the workload file."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(e.problem if str(machine) in str(e) else f"{e.problem} (on {machine})", e.file,
                          e.key) from None


def _roofline_of_json(path: Path, out: Path) -> None:
    """The roofline of a run saved with --json (its op records and hardware context)."""
    import json

    from sim.config.loader import read_text
    from sim.report.export import check_outputs, write_outputs
    from sim.report.roofline import roofline_png

    check_outputs({"--out": out}, (path,))
    try:
        doc = json.loads(read_text(path, limit=4 << 30))  # a run's op records may be large
        ops, ctx = doc["ops"], doc["context"]
        png = roofline_png(ops, ctx["hardware"], f"{ctx['workload']['name']} on {ctx['hardware']['name']}")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ConfigError("not a run's --json (no ops and context)", str(path)) from None
    write_outputs({out: png})
    click.echo(f"wrote {out}")


#: the shipped input files, by family, beside the package
SHIPPED = {"hardware": "hardware_models", "workloads": "workloads", "runtimes": "runtimes", "sweeps": "sweeps"}


def describe(path: Path) -> str:
    """One line about an input file: the first sentence of its leading comment, else its `name`."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    comment = " ".join(ln.lstrip("# ").strip() for ln in lines[:6] if ln.startswith("#"))
    if comment:
        first = comment.split(". ")[0].rstrip(".")
        return first if len(first) <= 110 else first[:107] + "..."
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("name:")), "")
    return name.strip("'\"")


@cli.command(name="list")
def list_inputs() -> None:
    """The shipped hardware, workloads, runtimes and sweeps, one line each."""
    root = Path(__file__).resolve().parents[1]
    for family, folder in SHIPPED.items():
        files = sorted(p for p in (root / folder).glob("*.yaml") if not p.name.startswith("host"))
        click.echo(f"{family} ({folder}/):")
        width = max((len(p.name) for p in files), default=0)
        for p in files:
            platforms = ""
            if family == "runtimes":  # where each runs (its platform sections)
                from sim.config.loader import read_yaml

                platforms = f"[{', '.join(read_yaml(p).get('platforms') or {})}] "
            click.echo(f"  {p.name:<{width}}  {platforms}{describe(p)}")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write hardware.schema.json, workload.schema.json, runtime.schema.json there (default: print "
                   "all three as one JSON object).")
def schema(out: Path | None) -> None:
    """JSON Schema of the input files, for editor completion and checking (from the validating models)."""
    import json

    from sim.config.hardware import Hardware
    from sim.config.runtime import Runtime
    from sim.config.workload import Workload
    from sim.report.export import check_outputs, write_outputs

    schemas = {name: cls.model_json_schema(mode="validation") for name, cls in
               (("hardware", Hardware), ("workload", Workload), ("runtime", Runtime))}
    if out is None:
        click.echo(json.dumps(schemas, indent=1))
        return
    files = {out / f"{name}.schema.json": json.dumps(s, indent=1) + "\n" for name, s in schemas.items()}
    check_outputs({f"--out {p.name}": p for p in files})
    write_outputs(files)
    for p in files:
        click.echo(f"wrote {p}")


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="python -m sim", standalone_mode=False)
    except ConfigError as e:
        click.echo(f"error: {e}", err=True)
        return EXIT_BAD_INPUT
    except click.exceptions.Abort:
        return 130
    except (OSError, RecursionError) as e:  # a last net: what the checks missed is still one line
        click.echo(f"error: {short(getattr(e, 'strerror', None) or str(e) or type(e).__name__, 200)}", err=True)
        return EXIT_BAD_INPUT
    except click.ClickException as e:  # one line, as for bad input files (not click's usage block)
        hint = f" (see {e.ctx.command_path} --help)" if getattr(e, "ctx", None) is not None else ""
        click.echo(f"error: {e.format_message()}{hint}", err=True)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
