"""Option aliases shared by commands, so every command spells the same flag the same way."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else there.")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="No progress bars or human output.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.", envvar="LLAMA4CTL_DEBUG")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the plan computed from headers alone; write nothing.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing destination.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run (finished shards are kept).")]
MaxShardSizeOpt = Annotated[str, typer.Option("--max-shard-size", help="Largest output shard, decimal units (5GB = 5e9 bytes).")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Output shards written in parallel.")]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit).")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Hub token (default: HF_TOKEN or the saved login).")]
