from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim.config import load_run

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def load(workload: str | Path, **overrides):
    """Workload + its hardware, with `--set`-style overrides given as keyword 'a__b=value' pairs."""
    wl, hw, _ = load_run(workload, [(k.replace("__", "."), v) for k, v in overrides.items()])
    return wl, hw


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sim", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def toy():
    return load(DATA / "toy-gpt.yaml")
