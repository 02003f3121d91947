"""`llama4ctl inspect PATH`: header-only summary of a local checkpoint or Hub repo."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llama4ctl.cli._errors import handled
from llama4ctl.cli._options import DebugOpt, JsonOpt, QuietOpt, RevisionOpt, TokenOpt
from llama4ctl.cli._output import Output, human_size, printable


def inspect_cmd(
    path: Annotated[str, typer.Argument(help="Checkpoint directory, .safetensors file, or Hub repo id.")],
    tensors: Annotated[bool, typer.Option("--tensors", help="List every tensor.")] = False,
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Summarize a checkpoint from its headers alone: family, parameters by component, experts, quantization."""
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    with handled(out):
        from llama4ctl.inspection import summarize
        from llama4ctl.jobs import open_any
        from llama4ctl.schemas import document

        doc = summarize(open_any(path, revision=revision, token=token), with_tensors=tensors)
        out.result(document("inspect", doc), lambda c: render(c, doc))


def render(console: Any, doc: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    def shown(text: str) -> str:
        """Text from the checkpoint (names, config values) as literal, inert characters: no markup, no controls."""
        return escape(printable(text))

    q = doc["quantization"]
    quant = q["format"] + (f" ({q['scheme']})" if q.get("scheme") else "")
    if q.get("bits_per_weight"):
        quant += f", {q['bits_per_weight']:.2f} bits/weight"
    console.print(f"[bold]{shown(doc['source'])}[/bold]")
    console.print(
        f"family {doc['family']} · {doc['architecture']} · {doc['num_parameters']:,} parameters · "
        f"{human_size(doc['total_bytes'])} in {doc['shards']} shard(s) · {doc['num_tensors']} tensors"
    )
    console.print(
        f"experts {doc['num_experts']} ({doc['expert_layout']}) · MoE layers {doc['moe_layers']} · "
        f"NoPE layers {doc['nope_layers']} · quantization {shown(quant)} · dtypes "
        + ", ".join(f"{k} {human_size(v)}" for k, v in doc["dtypes"].items())
    )
    for note in doc["config_notes"]:
        console.print(f"config note: {shown(note)}")
    table = Table(title="parameters by component", title_justify="left")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    table.add_column("share", justify="right")
    total = max(1, doc["num_parameters"])
    for comp, n in doc["parameters_by_component"].items():
        if n:
            table.add_row(comp, f"{n:,}", f"{100 * n / total:.1f}%")
    console.print(table)
    mem = doc["memory"]
    mt = Table(title="weight memory (weights only)", title_justify="left")
    mt.add_column("precision")
    mt.add_column("bytes", justify="right")
    fits_cols = list(next(iter(mem["fits"].values())).keys())
    for col in fits_cols:
        mt.add_column(f"fits {col}", justify="center")
    for prec, nbytes in mem["weights_bytes"].items():
        mt.add_row(prec, human_size(nbytes), *("yes" if mem["fits"][prec][c] else "no" for c in fits_cols))
    console.print(mt)
    if "tensors" in doc:
        tt = Table(title="tensors", title_justify="left")
        for col in ("name", "component", "dtype", "shape", "shard"):
            tt.add_column(col)
        for t in doc["tensors"]:
            tt.add_row(shown(t["name"]), t["component"], t["dtype"], str(t["shape"]), shown(t["shard"]))
        console.print(tt)
