"""The one error type users see: it names the file, the key path and the problem."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad input. Rendered by the CLI as one line and exit code 2, never as a traceback."""

    def __init__(self, problem: str, file: str | None = None, key: str | None = None):
        self.problem = problem
        self.file = file
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.file, self.key) if part)
        return f"{where}: {self.problem}" if where else self.problem


class KeyedError(ValueError):
    """Raised inside a schema validator to blame a specific key below the model being validated."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(problem)
