"""Plots of a sweep table: a heatmap of one figure over two axes, lines over one axis, a Pareto front."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from sim.errors import ConfigError  # noqa: E402
from sim.report.metrics import GROUP_COLUMNS, GROUPS, RUN, sweep_columns  # noqa: E402
from sim.sweep.spec import _NUM_UNIT  # noqa: E402

#: a sweep table's columns before its axes, and each figure's unit (the metric registry's)
IDENTITY = ("point_id", "status", "error", "warning", "workload")
UNITS = {m.name: m.unit for m in RUN if m.sweep} | {f"{g}_{m.name}": m.unit for g in GROUPS for m in GROUP_COLUMNS}


def numeric(value) -> float:
    """'2.04 TB/s' -> 2.04 (axis values keep the unit they were written with)."""
    m = _NUM_UNIT.match(str(value))
    return float(m.group(1)) if m else float("nan")


def load_table(path: str | Path) -> pd.DataFrame:
    """A sweep table's points that ran; anything that is not a readable sweep table is one ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such sweep table", str(path))
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as e:  # pandas and pyarrow raise many kinds for a file that is not a table
        raise ConfigError(f"not a readable sweep table ({type(e).__name__})", str(path)) from None
    if not {"point_id", "status"} <= set(df.columns):
        raise ConfigError("not a sweep table (no point_id and status columns; `python -m sim sweep` writes "
                          "them)", str(path))
    ok = df[df["status"] == "ok"]
    if ok.empty:
        raise ConfigError("no point of this table ran (column `error` says why)", str(path))
    return ok


def _save(fig, out: str) -> None:
    """The figure as a PNG at `out`, whole or not at all (the run outputs' exclusive temporary file)."""
    import io

    from sim.report.export import write_outputs

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_outputs({Path(out): buf.getvalue()})


def _need(df: pd.DataFrame, cols: list[str], path: str, numbers: tuple[str, ...] = ()) -> None:
    """Refuse a column the table lacks, or a figure to plot (`numbers`) that is not numeric (`bound`)."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ConfigError(f"no column {missing[0]!r} (columns: {', '.join(df.columns)})", path)
    for c in numbers:
        if not pd.api.types.is_numeric_dtype(df[c]):
            raise ConfigError(f"column {c!r} is not a number to plot", path)


def _label(col: str, values=()) -> str:
    """A column's name with its unit: a figure's from the registry, an axis's from its values ("5 GB/s")."""
    if col in UNITS:
        unit = UNITS[col]
        return col if unit in ("", "-", "text") else f"{col} [{unit}]"
    units = {str(v).split(" ", 1)[1] for v in values if isinstance(v, str) and " " in str(v)}
    return f"{col} [{units.pop()}]" if len(units) == 1 else col


def _readable(value) -> str:
    """A legend entry: a file path by its name, anything else as it is."""
    text = str(value)
    return Path(text).stem if "/" in text and text.endswith((".yaml", ".yml")) else text


def _axes(df: pd.DataFrame) -> list[str]:
    outputs = set(sweep_columns())
    return [c for c in df.columns if c not in IDENTITY and c not in outputs]


def _hold(df: pd.DataFrame, free: list[str]) -> tuple[pd.DataFrame, str]:
    """The rows where every axis but `free` is at its first value (in table order), and what was held
    fixed, for the title: a line over one axis of a many-axis table must not mix the others' points."""
    held = []
    for col in _axes(df):
        if col in free or df[col].nunique() <= 1:
            continue
        first = df[col].iloc[0]
        df = df[df[col] == first]
        held.append(f"{col} = {_readable(first)}")
    return df, ("held: " + ", ".join(held)) if held else ""


def heatmap(path: str, x: str, y: str, z: str, out: str, facet: str | None = "workload") -> None:
    df = load_table(path)
    _need(df, [x, y, z] + ([facet] if facet else []), path, numbers=(z,))
    groups = list(df.groupby(facet)) if facet and df[facet].nunique() > 1 else [(None, df)]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.5), squeeze=False)
    for ax, (name, part) in zip(axes[0], groups):
        part = part.assign(_x=part[x].map(numeric), _y=part[y].map(numeric))
        grid = part.pivot_table(index="_y", columns="_x", values=z, aggfunc="mean").sort_index()
        im = ax.imshow(grid.values, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(grid.columns)), [f"{v:g}" for v in grid.columns], rotation=45)
        ax.set_yticks(range(len(grid.index)), [f"{v:g}" for v in grid.index])
        ax.set_xlabel(_label(x, df[x]))
        ax.set_ylabel(_label(y, df[y]))
        if name is not None:
            ax.set_title(_readable(name), fontsize=9)
        fig.colorbar(im, ax=ax).set_label(_label(z))
    fig.suptitle(f"{z} over {x} and {y}", fontsize=10)
    _save(fig, out)


def lines(path: str, x: str, y: str, out: str, hue: str | None = None, logx: bool = False,
          logy: bool = False) -> None:
    df = load_table(path)
    _need(df, [x, y] + ([hue] if hue else []), path, numbers=(y,))
    df, held = _hold(df, [x, hue, "workload"] if hue else [x, "workload"])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    groups = list(df.groupby(hue)) if hue else (list(df.groupby("workload")) if df["workload"].nunique() > 1
                                                else [(None, df)])
    for name, part in groups:
        part = part.assign(_x=part[x].map(numeric)).sort_values("_x")
        ax.plot(part["_x"], part[y], marker="o", label=None if name is None else _readable(name))
    ax.set_xlabel(_label(x, df[x]))
    ax.set_ylabel(_label(y))
    ax.set_title(f"{y} over {x}" + (f"\n{held}" if held else ""), fontsize=9)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if len(groups) > 1:
        ax.legend(title=hue or "workload", fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, out)


def pareto_front(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points no other point beats on both x and y (both minimised)."""
    pts = df.sort_values([x, y])
    front, best = [], float("inf")
    for idx, row in pts.iterrows():
        if row[y] < best:
            front.append(idx)
            best = row[y]
    return df.loc[front]


def pareto(path: str, x: str, y: str, out: str) -> pd.DataFrame:
    df = load_table(path)
    _need(df, [x, y], path)
    df = df.assign(**{x: df[x].map(numeric), y: df[y].map(numeric)})
    front = pareto_front(df, x, y)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(df[x], df[y], s=12, alpha=0.5, label="points")
    ax.plot(front[x], front[y], color="C3", marker="o", label="Pareto front")
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.set_title(f"Pareto front of {x} and {y} (both minimised)", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out)
    return front
