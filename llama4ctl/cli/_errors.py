"""Exceptions -> one line on stderr (or a JSON error document) and an exit code; tracebacks only with --debug."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

from llama4ctl.cli._output import Output, printable
from llama4ctl.errors import Llama4ctlError, NotBuiltError
from llama4ctl.schemas import error_document

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# typer vendors click; its UsageError (parent of BadParameter) must reach click's handler to exit 2.
_USAGE_ERROR = typer.BadParameter.__mro__[1]


def _describe(exc: BaseException) -> tuple[str, str | None, str | None, int]:
    """(message, path, hint, exit code), first match wins."""
    table: list[tuple[type[BaseException], Callable[[BaseException], tuple[str, str | None, str | None, int]]]] = [
        (NotBuiltError, lambda e: (e.message, e.path, e.hint, EXIT_USAGE)),  # type: ignore[attr-defined]
        (Llama4ctlError, lambda e: (e.message, e.path, e.hint, EXIT_ERROR)),  # type: ignore[attr-defined]
        (KeyboardInterrupt, lambda e: ("interrupted", None, "re-run with --resume to continue", EXIT_INTERRUPTED)),
        (MemoryError, lambda e: ("out of memory", None, "use fewer --workers", EXIT_ERROR)),
        (OSError, lambda e: (e.strerror or str(e), e.filename, None, EXIT_ERROR)),  # type: ignore[attr-defined]
        (Exception, lambda e: (f"unexpected {type(e).__name__}: {' '.join(str(e).split())}", None,
                               "run again with --debug for the traceback", EXIT_ERROR)),
    ]
    for kind, fmt in table:
        if isinstance(exc, kind):
            return fmt(exc)
    raise exc


@contextmanager
def handled(out: Output) -> Iterator[None]:
    """Run a command body; in --json mode anything a library prints goes to stderr, keeping stdout clean."""
    redirect = contextlib.redirect_stdout(sys.stderr) if out.json_mode else contextlib.nullcontext()
    try:
        with redirect:
            yield
    except (typer.Exit, typer.Abort, SystemExit, _USAGE_ERROR):
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line
        if out.debug:
            raise
        message, path, hint, code = _describe(exc)
        if out.json_mode:
            import json

            out.stdout.write(json.dumps(error_document(message, path, hint)) + "\n")
        from rich.markup import escape

        # paths and messages quote names from files: no markup, no line breaks, no terminal controls
        line = printable(" ".join((f"{path}: {message}" if path else message).splitlines()))
        out.console.print(f"[red]Error:[/red] {escape(line)}", markup=True, highlight=False)
        if hint:
            out.console.print(f"Hint: {escape(printable(hint))}")
        raise typer.Exit(code) from None
