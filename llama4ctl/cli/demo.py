"""`llama4ctl demo`: build the tiny built-in Llama 4 checkpoint and run the pipeline on it (no Hub needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llama4ctl.cli._errors import handled
from llama4ctl.cli._options import DebugOpt, JsonOpt, QuietOpt
from llama4ctl.cli._output import Output


def demo_cmd(
    workdir: Annotated[Path, typer.Argument(help="Where to build the tiny checkpoint and outputs.")] = Path("llama4ctl-demo"),
    shape: Annotated[str, typer.Option("--shape", help="scout (every layer MoE) or maverick (alternating dense/MoE).")] = "maverick",
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Build a tiny Llama-4-shaped checkpoint and run inspect, shard and the other built commands on it."""
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    with handled(out):
        from llama4ctl.demo import run_demo
        from llama4ctl.schemas import document

        doc = run_demo(workdir, shape=shape, log=out.info)
        out.result(document("demo", doc), lambda c: render(c, doc))


def render(console: Any, doc: dict[str, Any]) -> None:
    console.print(f"[bold]demo finished[/bold]: tiny checkpoint at {doc['checkpoint']}")
    for step in doc["steps"]:
        console.print(f"  ✓ {step['step']}: {step['result']}")
