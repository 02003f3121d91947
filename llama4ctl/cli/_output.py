"""The one output sink: human text and progress on stderr (rich), one JSON document on stdout, or quiet."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from llama4ctl.progress import NullProgress, Progress
from llama4ctl.units import human_size  # noqa: F401  (re-exported for the command modules)


def printable(text: str) -> str:
    """`text` safe for a terminal: names from files may hold ESC, CR, BEL, other C0/C1 controls or bidi overrides
    that would rewrite or reorder what the user sees; those (whatever str.isprintable refuses) become Python
    escapes such as \\x1b or \\u202e."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Output:
    def __init__(self, *, json_mode: bool = False, quiet: bool = False, debug: bool = False):
        self.json_mode, self.quiet, self.debug = json_mode, quiet, debug
        self.stdout = sys.stdout  # the real stdout, kept before --json redirects library prints to stderr
        self._console = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._console

    def progress(self) -> Progress:
        if self.json_mode or self.quiet or not sys.stderr.isatty():
            return NullProgress()
        return RichProgress(self.console)

    def result(self, doc: dict[str, Any], render: Callable[[Any], None] | None = None) -> None:
        if self.json_mode:
            self.stdout.write(json.dumps(doc, default=str) + "\n")
            self.stdout.flush()
        elif not self.quiet and render is not None:
            render(self.console)

    def info(self, message: str) -> None:
        if not (self.quiet or self.json_mode):
            self.console.print(message)

    def warn(self, message: str) -> None:
        if not self.json_mode or self.debug:
            self.console.print(f"[yellow]Warning:[/yellow] {message}")


class RichProgress:
    """Progress protocol on a rich bar (bytes, rate, ETA)."""

    def __init__(self, console: Any):
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True)
        self._task = None

    def start(self, description: str, total: int | None) -> None:
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def note(self, message: str) -> None:
        self._bar.console.print(message)

    def finish(self) -> None:
        self._bar.stop()
