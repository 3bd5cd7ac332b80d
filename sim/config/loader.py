"""YAML (or a Hugging Face config.json) -> validated `Hardware` / `Workload`, with `--set` overrides.

Every failure becomes a `ConfigError` naming the file, the dotted key and the problem.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from sim.config.hardware import Hardware, Platform
from sim.config.runtime import FILE_KEYS, Runtime, merge, runtime_overrides
from sim.config.units import short
from sim.config.workload import Workload
from sim.errors import ConfigError, KeyedError

WORKLOAD_KEYS = ("name", "hardware", "runtime", "model", "scenario", "parallelism", "training")
HARDWARE_KEYS = ("devices", "nodes", "device", "interconnect", "network", "host", "source")


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser where PyYAML has it
    """A safe loader that refuses a key written twice in one mapping (YAML keeps the last silently: a
    pasted `bandwidth:` would quietly replace the first). Keys a `<<: *anchor` merge brings in may be
    overridden, as YAML means them to be."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_LOADER = _Loader


#: the largest input file read, and the deepest nesting taken: far beyond any real description
MAX_FILE_BYTES = 16 << 20
MAX_DEPTH = 32
MAX_VALUES = 200_000


def read_text(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """A regular file's text (not a device or a pipe whose read never ends), of at most `limit` bytes,
    as UTF-8."""
    try:
        if not path.is_file():
            raise ConfigError("not a regular file" if path.exists() else "no such file", str(path))
        if path.stat().st_size > limit:
            raise ConfigError(f"larger than {limit >> 20} MiB: not a file memwall reads", str(path))
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read file ({e.strerror})", str(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", str(path)) from None


def parse_yaml(text: str, where: str) -> Any:
    """YAML text to data; every failure (malformed, a key twice, a number past Python's digit limit,
    nesting past MAX_DEPTH) is one ConfigError naming `where`."""
    try:
        data = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(e, "problem", None) or "malformed YAML"
        raise ConfigError(f"malformed YAML: {problem}", where, at) from None
    except ValueError as e:  # int('9' * 5000): past Python's digit limit; a date that is none
        problem = "a number of more than 4,300 digits" if "digits" in str(e) else f"unreadable value ({short(str(e))})"
        raise ConfigError(problem, where) from None
    except RecursionError:
        raise ConfigError(f"nested deeper than {MAX_DEPTH} levels", where) from None
    check_depth(data, where)
    return data


def check_depth(data: Any, where: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH (copying and validating it would exhaust the stack) and more
    than MAX_VALUES values counted as copied (YAML aliases of aliases, "billion laughs", expand so)."""
    stack, seen = [(data, 1)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if depth > MAX_DEPTH:
            raise ConfigError(f"nested deeper than {MAX_DEPTH} levels", where)
        if seen > MAX_VALUES:
            raise ConfigError(f"more than {MAX_VALUES:,} values once its aliases are expanded", where)
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = parse_yaml(read_text(path), str(path))
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of keys at the top level", str(path))
    return data


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """`key.path=value` strings; values are read as YAML scalars so numbers stay numbers."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY.PATH=VALUE, got {item!r}", "--set")
        try:
            value = parse_yaml(raw, "--set") if raw.strip() else raw
        except ConfigError as e:
            if "malformed YAML" not in str(e):
                raise ConfigError(str(e).split(": ", 1)[-1], "--set", key.strip()) from None
            value = raw
        out.append((key.strip(), value))
    return out


def split_overrides(overrides: list[tuple[str, Any]]) -> tuple[list, list]:
    """Route each override to the workload or the hardware by its first key (or an explicit prefix)."""
    work, hw = [], []
    for key, value in overrides:
        head, _, rest = key.partition(".")
        if head == "workload" and rest:
            work.append((rest, value))
        elif head == "runtime" and rest:  # a key of the runtime, applied with it onto the hardware
            hw.append((key, value))
        elif head == "hardware" and rest:
            hw.append((rest, value))
        elif head in WORKLOAD_KEYS:
            work.append((key, value))
        elif head in HARDWARE_KEYS:
            hw.append((key, value))
        else:
            raise ConfigError(
                f"unknown key {head!r}: workload keys are {', '.join(WORKLOAD_KEYS)}; hardware keys are "
                f"{', '.join(HARDWARE_KEYS)} (or prefix with 'workload.' / 'hardware.')",
                "--set",
                key,
            )
    return work, hw


def apply_overrides(data: dict[str, Any], overrides: list[tuple[str, Any]], file: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for key, value in overrides:
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None and parts[:depth] == ["device", "memory"] and isinstance(node, dict) and node:
                # a level one key at a time would be a level missing the rest: most likely a typo
                raise ConfigError(f"no memory level {part!r} (levels: {', '.join(node)}); a new level is set whole, "
                                  f"e.g. device.memory.{part}={{capacity: ..., bandwidth: ..., latency: ..., "
                                  "kind: ..., scope: ...}", file, key)
            if child is None:
                child = node[part] = {} if isinstance(node, dict) else None
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {key!r}: {'.'.join(parts[: depth + 1])} is not a mapping", file)
            node = child
        node[parts[-1]] = value
    return data


def validate(cls: type[BaseModel], data: dict[str, Any], file: str) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise _to_config_error(e, cls, data, file) from None


def _to_config_error(e: ValidationError, cls: type[BaseModel], data: Any, file: str) -> ConfigError:
    errors = e.errors(include_url=False)
    # a typo'd key also makes the intended key "missing": report the typo, it explains both
    err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = [str(p) for p in err["loc"]]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, KeyedError):
        loc.append(cause.key)
    kind = err["type"]
    if kind == "extra_forbidden":
        problem = "unknown key" + _suggest(cls, loc)
    elif kind == "missing":
        problem = "missing key"
    else:
        problem = err["msg"].removeprefix("Value error, ")
        if "input" in err and kind != "value_error" and not isinstance(err["input"], (dict, list)):
            problem += f" (got {short(err['input'], 60)})"
    return ConfigError(problem, file, ".".join(loc) or "(top level)")


def _suggest(cls: type[BaseModel], loc: list[str]) -> str:
    """Name the allowed keys at that level, and the closest one to the typo."""
    model: Any = cls
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", None)
        if fields is None:  # a dict of plain values (peaks): keyed by user names, valued by its last argument
            args = getattr(model, "__args__", ())
            model = args[-1] if args else None
        elif part in fields:  # a dict of models (memory levels, platforms) resolves to its value model here
            model = fields[part].annotation
            model = next((a for a in getattr(model, "__args__", ()) if hasattr(a, "model_fields")), model)
        # else: a user-named key of such a dict (`l2`, `cuda`): its value model is already `model`
    fields = list(getattr(model, "model_fields", {}) or [])
    if not fields:
        return ""
    close = difflib.get_close_matches(loc[-1], fields, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f" (allowed: {', '.join(fields)}){hint}"


def load_hardware(path: str | Path, overrides: list[tuple[str, Any]] = (),
                  runtime: str | Path | None = None) -> Hardware:
    """The hardware file, with the `runtime` file's section for its platform applied onto its software
    figures (and the `runtime.*` overrides onto that section), then the other overrides."""
    own = [(k[len("runtime."):], v) for k, v in overrides if k.startswith("runtime.")]
    rest = [(k, v) for k, v in overrides if not k.startswith("runtime.")]
    data = read_yaml(path)
    shown = os.path.normpath(path)  # as errors name it
    if runtime is not None or own:
        machine = apply_overrides(data, rest, shown)  # what the runtime lands on
        device = machine.get("device")
        platform = device.get("platform", "accelerator") if isinstance(device, dict) else "accelerator"
        if platform in get_args(Platform):  # else the hardware's own validation names the bad platform
            name, section = _runtime_section(runtime, own, platform, path)
            data = apply_overrides(data, runtime_overrides(section, machine), shown)
            data["runtime"] = name
    data = apply_overrides(data, rest, shown)
    try:
        return validate(Hardware, data, shown)
    except ConfigError as e:  # a figure a --set gave is blamed on the --set, not on the file's own
        given = {k: k for k, _ in rest} | {_landing(k): f"runtime.{k}" for k, _ in own}
        key = e.key or ""
        named = next((k for k in given if key == k or key.startswith(k + ".")), None)
        if named is None:
            raise
        raise ConfigError(f"{e.problem} (from --set {given[named]})", e.file, e.key) from None


def _landing(runtime_key: str) -> str:
    """Where a `runtime.<key>` override lands in the hardware's figures (`threads` -> `device.threads`)."""
    from sim.config.runtime import TO_HARDWARE

    head, _, rest = runtime_key.partition(".")
    target = TO_HARDWARE.get(head, f"device.{head}")
    return f"{target}.{rest}" if rest else target


def _runtime_section(runtime: str | Path | None, own: list[tuple[str, Any]], platform: str,
                     hw_path: str | Path) -> tuple[str, dict[str, Any]]:
    """The runtime's name and its (validated) figures for `platform`, `own` overrides applied: keys of
    the file itself (`name`, `platforms.cpu...`) as written, any other key onto the platform's section."""
    where = str(runtime) if runtime is not None else "--set runtime"
    raw = read_runtime(runtime) if runtime is not None else {
        "name": "--set runtime.*", "source": "--set", "platforms": {platform: {}}}
    if platform not in (raw.get("platforms") or {}):  # a --set key must not make a section the file lacks
        raise ConfigError(f"no {platform!r} section, the platform of {hw_path} (it has "
                          f"{', '.join(raw['platforms'])}): name another with --runtime", where, "platforms")
    if any(k.split(".")[0] == "extends" for k, _ in own):
        raise ConfigError("cannot be set (name the runtime to start from with --runtime)", "--set", "runtime.extends")
    own = [(k if k.split(".")[0] in FILE_KEYS else f"platforms.{platform}.{k}", v) for k, v in own]
    raw = apply_overrides(raw, own, where)
    spec = validate(Runtime, raw, where)
    return spec.name, raw["platforms"][platform]


def read_runtime(path: str | Path, inside: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A runtime file's data with the runtime it `extends` (relative to it) merged under it, for the
    platforms this file names (it runs on those); each file validated on its own, so that an error names
    the file it is in."""
    path = Path(path)
    raw = read_yaml(path)
    validate(Runtime, raw, str(path))
    if raw.get("extends") is None:
        return raw
    parent = path.parent / raw["extends"]
    if parent.resolve() in inside + (path.resolve(),):
        raise ConfigError(f"{raw['extends']} extends this file again (a cycle)", str(path), "extends")
    base = read_runtime(parent, inside + (path.resolve(),))["platforms"]
    return merge({"platforms": {p: base[p] for p in raw["platforms"] if p in base}}, raw)


def runtime_of(workload_path: str | Path, workload: Workload) -> Path | None:
    """The workload's default runtime file (its `runtime:`, relative to it), or None."""
    return None if workload.runtime is None else Path(workload_path).parent / workload.runtime


def load_run(workload: str | Path, overrides: list[tuple[str, Any]] = (), hardware: str | Path | None = None,
             runtime: str | Path | None = None) -> tuple[Workload, Hardware, Path]:
    """What one run needs, as `sim run` loads it: the workload (its overrides), the hardware (`hardware`,
    else the workload's) with the runtime (`runtime`, else the workload's) applied, and the hardware path."""
    work, hw_set = split_overrides(list(overrides))
    wl, default = load_workload(workload, work)
    hw_path = Path(hardware) if hardware is not None else default
    return wl, load_hardware(hw_path, hw_set, runtime if runtime is not None else runtime_of(workload, wl)), hw_path


def load_workload(path: str | Path, overrides: list[tuple[str, Any]] = ()) -> tuple[Workload, Path]:
    """Return the workload and the path of its default hardware file."""
    path = Path(path)
    data = apply_overrides(read_yaml(path), list(overrides), str(path))
    model = data.get("model")
    if isinstance(model, dict) and "hf_config" in model:
        data["model"] = _model_from_hf(model, path)
    workload = validate(Workload, data, str(path))
    return workload, (path.parent / workload.hardware)


def _model_from_hf(model: dict[str, Any], workload_path: Path) -> dict[str, Any]:
    """Map a Hugging Face `config.json` onto our model keys; other keys in `model` override it."""
    from sim.config.hf import model_from_hf_config

    hf_path = workload_path.parent / str(model["hf_config"])
    if not hf_path.exists():
        raise ConfigError(f"no such config.json: {hf_path}", str(workload_path), "model.hf_config")
    text = read_text(hf_path)
    try:
        hf = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"malformed JSON: {e.msg} at line {e.lineno}", str(hf_path)) from None
    except (ValueError, RecursionError) as e:  # a number past the digit limit; nesting past the stack
        raise ConfigError(f"unreadable JSON ({type(e).__name__})", str(hf_path)) from None
    check_depth(hf, str(hf_path))
    if not isinstance(hf, dict):
        raise ConfigError("expected a JSON object at the top level", str(hf_path))
    mapped = model_from_hf_config(hf, str(hf_path))
    mapped.update({k: v for k, v in model.items() if k != "hf_config"})
    return mapped
