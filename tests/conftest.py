from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim.config import load_hardware, load_workload
from sim.config.loader import split_overrides

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def load(workload: str | Path, **overrides):
    """Workload + its hardware, with `--set`-style overrides given as keyword 'a__b=value' pairs."""
    items = [(k.replace("__", "."), v) for k, v in overrides.items()]
    work, hw = split_overrides(items)
    wl, hw_path = load_workload(workload, work)
    return wl, load_hardware(hw_path, hw)


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sim", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def toy():
    return load(DATA / "toy-gpt.yaml")
