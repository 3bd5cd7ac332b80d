"""Stage 4: discrete-event execution of op plans on simpy resources -> OpRecords."""

from sim.engine.executor import Executor, simulate
from sim.engine.machine import Machine
from sim.engine.records import OpRecord, RunResult

__all__ = ["Executor", "Machine", "OpRecord", "RunResult", "simulate"]
