"""One exception family, so the CLI can turn every handled failure into one line and exit code 1."""

from __future__ import annotations

from pathlib import Path


class Llama4ctlError(Exception):
    """A failure the user can act on: what went wrong, where, and what to do about it."""

    def __init__(self, message: str, path: str | Path | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class CheckpointError(Llama4ctlError):
    """The input checkpoint is malformed, unsafe or unsupported."""


class PlanError(Llama4ctlError):
    """The requested transformation cannot be applied to this checkpoint."""


class FormatError(Llama4ctlError):
    """An output format was misused or is unknown."""


class OutputError(Llama4ctlError):
    """The destination cannot be written (exists, locked, no space, stale partial output)."""


class HubError(Llama4ctlError):
    """A Hugging Face Hub request failed."""


class NotBuiltError(Llama4ctlError):
    """A command or option that is registered but not implemented yet (exit 2)."""
