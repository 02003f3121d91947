"""A small progress protocol so the library reports work without importing rich."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, description: str, total: int | None) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, message: str) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def finish(self) -> None:
        pass
