"""Machine-readable outputs: JSON summary + op records, CSV of op records, Chrome/Perfetto trace.

Outputs are checked before a run (`check_outputs`) and written together (`write_outputs`): each whole to
a temporary file of an unpredictable name, created exclusively beside it, and renamed into place only
once every one of them is written, so a failure leaves no half file and no output of the set.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from sim.config.units import short
from sim.engine.records import RunResult
from sim.errors import ConfigError
from sim.report.context import context
from sim.report.memory import kind_label, memory_timeline
from sim.report.metrics import op_columns
from sim.report.summary import balance_level, summarize

#: the output name that means standard output
STDOUT = Path("-")


def check_outputs(paths: dict[str, Path | None], inputs: tuple[Path | str | None, ...] = ()) -> None:
    """Refuse, before any work, outputs that cannot be written (`paths`: option -> path): a directory, a
    path under a file, a folder that does not let us write, one path named twice, one of the `inputs`."""
    try:
        _check_outputs(paths, {Path(p).resolve() for p in inputs if p is not None})
    except OSError as e:  # a name too long for the file system, a loop of links
        option, path = next(((o, p) for o, p in paths.items() if p is not None), ("output", None))
        raise ConfigError(f"cannot be written ({e.strerror or e})", short(str(path), 80), option) from None


def _check_outputs(paths: dict[str, Path | None], inputs: set[Path]) -> None:
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None or path == STDOUT:
            continue
        if path.resolve() in seen:
            raise ConfigError(f"also named by {seen[path.resolve()]}", str(path), option)
        if path.resolve() in inputs:
            raise ConfigError("is an input of this command: it would be overwritten", str(path), option)
        seen[path.resolve()] = option
        if path.is_dir():
            raise ConfigError("is a directory (name a file)", str(path), option)
        folder = next((p for p in path.resolve().parents if p.exists()), None)
        if folder is None or not folder.is_dir():
            raise ConfigError(f"cannot be written: {folder} is not a folder", str(path), option)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot be written: no permission in {folder}", str(path), option)


def write_outputs(texts: dict[Path, str | bytes], options: dict[Path, str] | None = None) -> None:
    """Write every file (path -> its text) or none: each to an exclusive temporary file beside it, with
    the mode a new file gets (or the replaced file's), then all renamed into place; on a failure the
    temporary files are removed and nothing is replaced. A path that exists and is no regular file (a
    device such as /dev/null, a pipe) is written into directly, never replaced."""
    done: list[tuple[str, Path]] = []
    direct: list[tuple[Path, bytes]] = []
    made: list[Path] = []  # folders this call created, removed again on a failure
    path = None
    umask = os.umask(0)
    os.umask(umask)
    try:
        for path, text in texts.items():
            data = text if isinstance(text, bytes) else text.encode("utf-8")
            if path.exists() and not path.is_file():
                direct.append((path, data))
                continue
            made += reversed([p for p in (path.parent, *path.parent.parents) if not p.exists()])  # outer first
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".memwall-", suffix=".tmp")
            done.append((tmp, path))
            os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~umask)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for path, data in direct:
            with path.open("wb") as f:
                f.write(data)
    except OSError as e:
        for tmp, _ in done:
            Path(tmp).unlink(missing_ok=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        where = short(str(path), 80)
        option = (options or {}).get(path)
        raise ConfigError(f"cannot write ({e.strerror or e}); nothing written",
                          f"{option} {where}" if option else where) from None
    for tmp, path in done:
        os.replace(tmp, path)


def _write(path: str | Path, text: str) -> None:
    write_outputs({Path(path): text})


def to_json(result: RunResult) -> str:
    level = balance_level(result)
    doc = {"summary": summarize(result), "context": context(result), "memory_timeline": memory_timeline(result),
           "ops": [r.to_dict(level) for r in result.ops]}
    text = json.dumps(doc, indent=1, sort_keys=False)
    if "Infinity" in text or "NaN" in text:  # not JSON: a figure with no finite value is null
        text = json.dumps(_finite(doc), indent=1, sort_keys=False, allow_nan=False)
    return text + "\n"


def _finite(value):
    """`value` with every infinite or NaN float made None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def csv_columns(result: RunResult) -> tuple[list[str], list[str]]:
    levels = list(result.hw.levels) if result.spec is not None else sorted(
        {lvl for r in result.ops for lvl in r.bytes})
    stalls = sorted({k for r in result.ops for k in r.stall_s})
    return levels, stalls


def to_csv(result: RunResult) -> str:
    """One row per op, its columns from the registry's per-op fields (`metrics.OP`)."""
    levels, stalls = csv_columns(result)
    caches = sorted({c for r in result.ops for c in r.hits})
    columns = op_columns(levels, caches, stalls, balance_level(result))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([name for name, _ in columns])
    for r in result.ops:
        w.writerow([_cell(get(r)) for _, get in columns])
    return buf.getvalue()


def _cell(x) -> str:
    if x is None:
        return ""
    return repr(x) if isinstance(x, float) else str(x)


def to_trace(result: RunResult) -> dict:
    """Chrome trace events: pid = device, one tid (track) per compute unit, memory level and link that
    carries an event on that device."""
    hw = context(result).get("hardware", {})
    levels = list(hw.get("memory", {}))
    devices = sorted({r.device for r in result.ops}) or [0]
    tracks = ["host dispatch", "compute:matrix", "compute:vector", "collectives", "comm stream", "copy stream",
              *[f"memory:{lvl}" for lvl in levels]]
    tracks += [f"link:{lnk}" for lnk in hw.get("links", [])]  # every physical link of the interconnect
    tracks += sorted({k for r in result.ops for k in r.level_span_s if k.startswith("link:")} - set(tracks))
    tid = {name: i for i, name in enumerate(tracks)}
    us = 1e6
    events: list[dict] = []
    for r in result.ops:
        if r.overhead_s > 0:
            events.append({"ph": "X", "name": f"wait dispatch {r.name}", "cat": "overhead", "pid": r.device,
                           "tid": tid["host dispatch"], "ts": r.start_s * us, "dur": r.overhead_s * us})
        events.append({
            "ph": "X", "name": r.name, "cat": r.op_class, "pid": r.device,
            "tid": tid[("comm stream" if r.stream == "comm" else "collectives") if r.unit == "link"
                       else "copy stream" if r.unit == "copy" else f"compute:{r.unit}"],
            "ts": (r.start_s + r.overhead_s) * us, "dur": (r.duration_s - r.overhead_s) * us,
            "args": {"flops": r.flops, "bytes": r.bytes, "compute_s": r.compute_s, "stall_s": r.stall_s,
                     "bound": r.bound, "shape": list(r.shape)},
        })
        for lvl, (first, last) in r.level_span_s.items():
            track = lvl if lvl.startswith("link:") else f"memory:{lvl}"
            nbytes = r.link_bytes[lvl[5:]] if lvl.startswith("link:") else r.bytes[lvl]
            events.append({
                "ph": "X", "name": r.name, "cat": track.split(":")[0], "pid": r.device, "tid": tid[track],
                "ts": first * us, "dur": (last - first) * us,
                "args": {"bytes": nbytes, "busy_s": r.level_busy_s[lvl]},
            })
    # names for the tracks that carry events (a device's unused links and streams would be empty rows)
    used = sorted({(e["pid"], e["tid"]) for e in events})
    meta: list[dict] = [{"ph": "M", "name": "process_name", "pid": d, "args": {"name": f"device {d}"}}
                        for d in devices]
    for d, i in used:
        meta.append({"ph": "M", "name": "thread_name", "pid": d, "tid": i, "args": {"name": tracks[i]}})
        meta.append({"ph": "M", "name": "thread_sort_index", "pid": d, "tid": i, "args": {"sort_index": i}})
    events = meta + events
    for track in memory_timeline(result):  # counter tracks: bytes allocated by tensor kind
        name = f"memory allocated: {track['level']}"
        for t, kinds in track["points"]:
            events.append({"ph": "C", "name": name, "pid": track["device"], "ts": t * us,
                           "args": {kind_label(k): v for k, v in kinds.items()}})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"workload": result.name, "hardware": result.hardware}}


def to_trace_text(result: RunResult) -> str:
    trace = to_trace(result)
    text = json.dumps(trace, separators=(",", ":"))
    if "Infinity" in text or "NaN" in text:  # not JSON (see to_json)
        text = json.dumps(_finite(trace), separators=(",", ":"), allow_nan=False)
    return text + "\n"


def write_json(result: RunResult, path: str | Path) -> None:
    _write(path, to_json(result))


def write_csv(result: RunResult, path: str | Path) -> None:
    _write(path, to_csv(result))


def write_trace(result: RunResult, path: str | Path) -> None:
    _write(path, to_trace_text(result))


def to_roofline(result: RunResult) -> bytes:
    from sim.report.roofline import roofline_png

    level = balance_level(result)
    meta = context(result)
    return roofline_png([r.to_dict(level) for r in result.ops], meta["hardware"],
                        f"{meta['workload']['name']} on {meta['hardware']['name']}")


#: each output option's content
RENDER: dict[str, Callable[[RunResult], str | bytes]] = {"--json": to_json, "--csv": to_csv,
                                                         "--trace": to_trace_text, "--roofline": to_roofline}
