"""Stage 5: reports rebuilt from a RunResult — terminal tables, JSON, CSV, Chrome trace."""

from sim.report.export import to_csv, to_json, to_trace, write_csv, write_json, write_trace
from sim.report.summary import summarize
from sim.report.terminal import render

__all__ = ["render", "summarize", "to_csv", "to_json", "to_trace", "write_csv", "write_json", "write_trace"]
