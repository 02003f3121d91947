"""Assembles the CLI: every subcommand is registered here and implemented in its own module."""

from __future__ import annotations

from typing import Annotated

import typer

from llama4ctl import __version__
from llama4ctl.cli.demo import demo_cmd
from llama4ctl.cli.dedup import HELP as DEDUP_HELP
from llama4ctl.cli.dedup import dedup_cmd
from llama4ctl.cli.download import HELP as DOWNLOAD_HELP
from llama4ctl.cli.download import download_cmd
from llama4ctl.cli.inspect import inspect_cmd
from llama4ctl.cli.push import HELP as PUSH_HELP
from llama4ctl.cli.push import push_cmd
from llama4ctl.cli.quantize import HELP as QUANTIZE_HELP
from llama4ctl.cli.quantize import quantize_cmd
from llama4ctl.cli.run import HELP as RUN_HELP
from llama4ctl.cli.run import run_cmd
from llama4ctl.cli.shard import shard_cmd
from llama4ctl.cli.stubs import NOT_BUILT_SETTINGS, not_built

app = typer.Typer(
    name="llama4ctl",
    help="Download, inspect, quantize, reshard, dedup-measure, run and push Llama 4 checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"llama4ctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version, help="Print the version.")] = False,
) -> None:
    """Exit codes: 0 ok, 1 handled error (one line naming the file and the problem), 2 usage error."""


app.command("inspect")(inspect_cmd)
app.command("shard")(shard_cmd)
app.command("quantize", help=QUANTIZE_HELP)(quantize_cmd)
app.command("demo")(demo_cmd)
app.command("download", help=DOWNLOAD_HELP)(download_cmd)
app.command("push", help=PUSH_HELP)(push_cmd)
app.command("dedup-report", help=DEDUP_HELP)(dedup_cmd)
app.command("run", help=RUN_HELP)(run_cmd)
for _name, _summary in (
):
    app.command(_name, context_settings=NOT_BUILT_SETTINGS, help=f"{_summary} (not implemented yet).")(
        not_built(_name, _summary)
    )


def main() -> None:
    app()
