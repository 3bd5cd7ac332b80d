"""Running a sweep: points in parallel (local processes, or a Dask cluster), rows streamed to disk.

The CSV is the record: one row per point, appended and flushed as each point finishes, so a killed sweep
resumes from it without recomputing or duplicating a point. The Parquet file is rewritten from the CSV
as rows arrive (atomically), and both are rewritten in the sweep's point order at the end, so the same
sweep gives byte-identical tables. A point that fails records its error and the sweep goes on.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sim.config.units import short
from sim.errors import ConfigError
from sim.report.metrics import GROUP_COLUMNS, GROUPS, RUN, sweep_columns
from sim.sweep.spec import Point, Sweep, year_overrides

OUTPUTS = sweep_columns()  # the registry's figures (sim/report/metrics.py)


def columns(sweep: Sweep) -> list[str]:
    return ["point_id", "status", "error", "warning", "workload", *sweep.axes, *OUTPUTS]


def _load(point: Point, base_year: float | None) -> tuple[Any, Any, Path]:
    """A point's workload, hardware (its runtime applied) and hardware file, as `sim run` loads them."""
    from sim.config import load_hardware, load_workload
    from sim.config.loader import read_yaml, runtime_of, split_overrides

    overrides = [(k, v) for k, v in point.overrides if k != "year"]
    work, hw_set = split_overrides(overrides)
    wl, default_hw = load_workload(point.workload, work)
    hw_path = Path(point.hardware) if point.hardware else default_hw
    year = next((v for k, v in point.overrides if k == "year"), None)
    if year is not None:
        hw_set = year_overrides(read_yaml(hw_path), year, base_year) + hw_set
    return wl, load_hardware(hw_path, hw_set, point.runtime or runtime_of(point.workload, wl)), hw_path


def check_keys(sweep: Sweep) -> None:
    """Refuse, before any point runs, a key no input has: a misspelled axis or `set` key would fail every
    point. The first point of each workload, hardware and runtime is loaded (not run); its other errors
    (a value out of range, a model that does not fit) stay the point's own."""
    seen = set()
    for p in sweep.points:
        if (p.workload, p.hardware, p.runtime) in seen:
            continue
        seen.add((p.workload, p.hardware, p.runtime))
        try:
            _load(p, sweep.base_year)
        except ConfigError as e:
            if not e.problem.startswith("unknown key") or not e.key:
                continue
            # the sweep's own key (as written: `workload.`/`hardware.` prefixed ones too); a key no override
            # names is a typo in an input file, which fails that file's points only
            mine = next((k for k, _ in p.overrides if e.key in (k, k.partition(".")[2])
                         or (k.startswith("runtime.") and e.key.endswith("." + k.partition(".")[2]))), None)
            if mine is not None:
                section = "axes" if mine in sweep.axes else "set"
                raise ConfigError(e.problem, str(sweep.file), f"{section}.{mine}") from None
        except Exception:  # noqa: BLE001 (whatever else a point meets is recorded when it runs)
            continue


def evaluate(point: Point, base_year: float | None) -> dict[str, Any]:
    """Run one point; never raises (errors become the row's `error`)."""
    from sim.pipeline import run
    from sim.report import summarize

    row: dict[str, Any] = {"point_id": point.id, "workload": Path(point.workload).stem, **point.values}
    try:
        wl, hw, hw_path = _load(point, base_year)
        s = summarize(run(wl, hw, str(hw_path), point.workload), top=0)
    except ConfigError as e:
        return {**row, "status": "error", "error": str(e)}
    except Exception as e:  # a bug in one point must not stop the sweep; record it
        return {**row, "status": "error", "error": f"{type(e).__name__}: {e}"}
    row.update(status="ok", error="", warning="; ".join(hw.oddities()), **{m.name: s[m.name] for m in RUN if m.sweep})
    for g in GROUPS:
        c = s["classes"].get(g)
        if c is not None:
            row.update({f"{g}_{m.name}": m.get(c) for m in GROUP_COLUMNS})
    return row


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return repr(v) if isinstance(v, float) else str(v)


def read_rows(path: Path, header: list[str]) -> list[dict[str, str]]:
    """Complete rows of an existing table; a row cut short by a kill is dropped."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("is not a sweep table (not UTF-8 text); remove it or choose another --out",
                          str(path)) from None
    if not text.endswith("\n"):  # killed mid-row: drop the incomplete last line
        text = text[: text.rfind("\n") + 1]
    lines = list(csv.reader(io.StringIO(text)))
    if not lines:
        return []
    if lines[0] != header:
        raise ConfigError("has other columns than this sweep; remove it or choose another --out", str(path))
    return [dict(zip(header, r)) for r in lines[1:] if len(r) == len(header)]


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside `path`, created exclusively under an unpredictable name (never one a
    planted link could point elsewhere), renamed onto `path` when the block succeeds, removed when not."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".memwall-", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, path.stat().st_mode & 0o7777 if path.is_file() else 0o666 & ~umask)  # not mkstemp's 0600
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_table(path: Path, header: list[str], rows: list[dict]) -> None:
    with _replacing(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in header])


def write_parquet(csv_path: Path, parquet_path: Path) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pacsv.read_csv(csv_path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    with _replacing(parquet_path) as tmp:
        pq.write_table(table, tmp)


@contextmanager
def _locked(out_dir: Path, name: str) -> Iterator[None]:
    """Hold the sweep's lock in `out_dir` for the run: a second sweep writing the same table refuses in
    one line rather than interleave its rows with ours (rows were lost that way)."""
    import fcntl

    lock = (out_dir / f".{name}.lock").open("a")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError("another sweep is writing this table; wait for it to end or choose another --out",
                              str(out_dir / f"{name}.csv")) from None
        yield
    finally:
        lock.close()


def _local(points: list[Point], base_year, workers: int) -> Iterator[dict]:
    if workers <= 1:
        for p in points:
            yield evaluate(p, base_year)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(evaluate, p, base_year) for p in points]
        for fut in as_completed(futures):
            yield fut.result()


def _dask(points: list[Point], base_year, address: str) -> Iterator[dict]:
    from distributed import Client
    from distributed import as_completed as dask_completed

    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as e:  # unreachable, refused, a malformed address
        raise ConfigError(f"cannot reach the Dask scheduler ({short(str(e), 100)})", "--scheduler", address) from None
    with client:
        futures = client.map(evaluate, points, base_year=base_year, pure=False)
        for fut in dask_completed(futures):
            yield fut.result()


def run_sweep(sweep: Sweep, out_dir: Path, workers: int | None = None, scheduler: str | None = None,
              on_row: Callable[[dict, int, int], None] = lambda row, done, total: None,
              flush_every: int = 25) -> tuple[Path, Path, int]:
    """Run the points not already in the table; return (csv, parquet, points computed now)."""
    check_keys(sweep)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with _locked(out_dir, sweep.name):
            return _run_sweep(sweep, out_dir, workers, scheduler, on_row, flush_every)
    except OSError as e:  # a full or read-only disk, --out a file: the rows written so far stay, and resume
        raise ConfigError(f"cannot write ({e.strerror or e}); the table keeps the rows written so far and a "
                          f"rerun resumes from them", str(out_dir)) from None


def _run_sweep(sweep: Sweep, out_dir: Path, workers: int | None, scheduler: str | None,
               on_row: Callable[[dict, int, int], None], flush_every: int) -> tuple[Path, Path, int]:
    csv_path, parquet_path = out_dir / f"{sweep.name}.csv", out_dir / f"{sweep.name}.parquet"
    for path in (csv_path, parquet_path):  # before any point runs, not after all of them
        if path.exists() and not path.is_file():
            raise ConfigError("is in the way of the sweep's table (not a file)", str(path))
    header = columns(sweep)
    done = read_rows(csv_path, header)
    _write_table(csv_path, header, done)  # drops a row cut short by a kill
    seen = {r["point_id"] for r in done}
    todo = [p for p in sweep.points if p.id not in seen]
    workers = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    rows = _dask(todo, sweep.base_year, scheduler) if scheduler else _local(todo, sweep.base_year, workers)
    count = 0
    with csv_path.open("a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in header])
            f.flush()
            count += 1
            on_row(row, len(seen) + count, len(sweep.points))
            if count % flush_every == 0:
                write_parquet(csv_path, parquet_path)
    order = {p.id: i for i, p in enumerate(sweep.points)}
    final = sorted(read_rows(csv_path, header), key=lambda r: order.get(r["point_id"], len(order)))
    _write_table(csv_path, header, final)
    write_parquet(csv_path, parquet_path)
    return csv_path, parquet_path, count
