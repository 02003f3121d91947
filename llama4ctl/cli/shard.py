"""`llama4ctl shard SRC DST`: reshard, cast, fuse/unfuse experts, drop the vision tower; streamed and atomic."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from llama4ctl.cli._errors import handled
from llama4ctl.cli._options import (DebugOpt, DryRunOpt, JsonOpt, MaxShardSizeOpt, OverwriteOpt, QuietOpt,
                                    ResumeOpt, WorkersOpt)
from llama4ctl.cli._output import Output


def shard_cmd(
    src: Annotated[str, typer.Argument(help="Source checkpoint directory.")],
    dst: Annotated[str, typer.Argument(help="Destination directory (written atomically).")],
    max_shard_size: MaxShardSizeOpt = "5GB",
    dtype: Annotated[str | None, typer.Option("--dtype", help="Cast unquantized float tensors: bf16, fp16 or fp32.")] = None,
    experts: Annotated[str, typer.Option("--experts", help="Routed expert layout: keep, fused ([E,H,2I], transformers) or unfused (per-expert, vLLM / compressed-tensors).")] = "keep",
    drop_vision: Annotated[bool, typer.Option("--drop-vision", help="Write a text-only Llama4ForCausalLM checkpoint.")] = False,
    dry_run: DryRunOpt = False,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    workers: WorkersOpt = 2,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Rewrite a checkpoint into new shards, tensor by tensor (bit-identical unless cast)."""
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    with handled(out):
        from llama4ctl.jobs import execute_plan, plan_shard
        from llama4ctl.schemas import document

        plan = plan_shard(src, max_shard_size=max_shard_size, dtype=dtype, experts=experts, drop_vision=drop_vision)
        if dry_run:
            summary = plan.summary()
            out.result(document("plan", summary), lambda c: render_plan(c, summary, plan))
            return
        res = execute_plan(plan, dst, overwrite=overwrite, resume=resume, workers=workers,
                           progress=out.progress(), command=["llama4ctl", *sys.argv[1:]])
        out.result(document("shard", res), lambda c: render_result(c, res))


def render_plan(console: Any, summary: dict[str, Any], plan: Any) -> None:
    from rich.table import Table

    console.print(f"plan: {summary['num_input_tensors']} tensors ({summary['input_bytes'] / 1e9:.3f} GB) -> "
                  f"{summary['num_output_tensors']} tensors ({summary['output_bytes'] / 1e9:.3f} GB) in "
                  f"{summary['num_shards']} shard(s); ops {summary['ops_by_kernel']}")
    for note in summary["notes"]:
        console.print(f"note: {note}")
    if summary["dropped"]:
        console.print(f"dropped {len(summary['dropped'])} tensors (vision tower / projector)")
    table = Table(title="output shards", title_justify="left")
    for col in ("file", "tensors", "bytes"):
        table.add_column(col)
    for s in summary["shards"]:
        table.add_row(s["file"], str(s["tensors"]), f"{s['bytes']:,}")
    console.print(table)


def render_result(console: Any, res: dict[str, Any]) -> None:
    if res["already_complete"]:
        console.print(f"{res['destination']} is already complete; nothing to do")
        return
    gb = res["bytes_written"] / 1e9
    rate = gb / res["seconds"] if res["seconds"] else 0.0
    skipped = f", {res['shards_skipped']} already done" if res["shards_skipped"] else ""
    console.print(f"wrote {res['destination']}: {res['shards_written']} shard(s){skipped}, {gb:.3f} GB "
                  f"in {res['seconds']:.2f} s ({rate:.2f} GB/s)")
