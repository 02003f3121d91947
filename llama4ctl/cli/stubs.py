"""Commands that are registered but not built yet: they say so and exit 2."""

from __future__ import annotations

from collections.abc import Callable

import typer

from llama4ctl.cli._errors import handled
from llama4ctl.cli._output import Output
from llama4ctl.errors import NotBuiltError

NOT_BUILT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def not_built(name: str, summary: str) -> Callable[..., None]:
    def command(ctx: typer.Context) -> None:
        out = Output(json_mode="--json" in ctx.args)
        with handled(out):
            raise NotBuiltError(f"`llama4ctl {name}` is not implemented yet")

    command.__doc__ = f"{summary} (not implemented yet)"
    return command
