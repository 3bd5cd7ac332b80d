"""memwall: a discrete-event simulator of the memory wall for Transformer workloads."""

__version__ = "0.1.0"
