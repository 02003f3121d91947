"""`llama4ctl dedup-report BASE DERIVATIVE...`: how much of each derivative the Hub's Xet store already holds."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llama4ctl.cli._errors import handled
from llama4ctl.cli._options import DebugOpt, JsonOpt, QuietOpt, TokenOpt
from llama4ctl.cli._output import Output, human_size

HELP = """Xet chunk reuse between a base checkpoint and its derivatives, before you push them.

BASE and each DERIVATIVE are local checkpoint folders (or files) or Hub repo ids (downloaded, verified, into the
Hugging Face cache). Every file is cut into Xet chunks and hashed exactly as hf_xet does; indexes are cached
per file ($LLAMA4CTL_CACHE_DIR or $XDG_CACHE_HOME/llama4ctl/xet-index), so a re-run reads only new files.

Per derivative: bytes already in the base (reuse %), bytes new to upload, dedup within itself, savings in
upload order (each derivative after the base and the ones listed before it), key-chunk reachability, and the
reuse by component (or --by file / tensor; safetensors headers count as `header`, other files as `other`).
Then the collection-wide figure 1 − unique/total.

Llama 4 on the Hub was chunked by a pre-1.1.10 client: use --base-chunker legacy for it. Legacy and current
chunk boundaries differ often (legacy chunks can end at 8128 bytes), so identical bytes match only ~88-95 %;
the report then also shows the reuse had the base been cut with --chunker.

--exact also runs hf_xet's real upload dedup offline (local:// CAS in a temporary directory, one file's new
data on disk at a time) and reports its DeduplicationMetrics beside the chunk-overlap figures.
"""


def _choice(value: str | None, choices: tuple[str, ...], flag: str) -> None:
    if value is not None and value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=flag)


def dedup_cmd(
    base: Annotated[str, typer.Argument(help="Base checkpoint: local folder or file, or Hub repo id.")],
    derivatives: Annotated[list[str], typer.Argument(help="Derivative checkpoints, in upload order.")],
    by: Annotated[str, typer.Option("--by", help="Reuse table by file, component or tensor.")] = "component",
    exact: Annotated[bool, typer.Option("--exact", help="Also run hf_xet's real dedup offline (local:// CAS).")] = False,
    chunker: Annotated[str, typer.Option("--chunker", help="Chunker of the derivatives: current or legacy (hf-xet < 1.1.10).")] = "current",
    base_chunker: Annotated[str | None, typer.Option("--base-chunker", help="Chunker the base was uploaded with (default: --chunker; Llama 4: legacy).")] = None,
    token: TokenOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    from llama4ctl.xet.report import BY_CHOICES, CHUNKERS

    _choice(by, BY_CHOICES, "--by")
    _choice(chunker, CHUNKERS, "--chunker")
    _choice(base_chunker, CHUNKERS, "--base-chunker")
    with handled(out):
        from llama4ctl.schemas import document
        from llama4ctl.xet.report import dedup_report

        doc = dedup_report(base, derivatives, by=by, exact=exact, chunker=chunker, base_chunker=base_chunker,
                           token=token, progress=out.progress())
        out.result(document("dedup_report", doc), lambda c: render(c, doc))


dedup_cmd.__doc__ = HELP


def _bar(pct: float, width: int = 20) -> str:
    full = int(round(width * max(0.0, min(100.0, pct)) / 100))
    return "[green]" + "█" * full + "[/green][dim]" + "░" * (width - full) + "[/dim]"


MAX_TENSOR_ROWS = 40


def _rows(doc: dict[str, Any], d: dict[str, Any]) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    from rich.markup import escape

    if doc["by"] == "file":
        return "file", [(escape(f["name"]), {"total_bytes": f["size"], **f}) for f in d["files"]]
    if doc["by"] == "tensor":
        rows = sorted(d["tensors"], key=lambda t: (-t["new_bytes"], -t["total_bytes"]))
        return "tensor", [(escape(t["name"]), t) for t in rows]
    comps = sorted(d["components"].items(), key=lambda kv: -kv[1]["total_bytes"])
    return "component", [(escape(k), v) for k, v in comps]


def render(console: Any, doc: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    base = doc["base"]
    console.print(f"[bold]base[/bold] {escape(base['source'])} · {human_size(base['total_bytes'])} in "
                  f"{len(base['files'])} file(s)"
                  f" · {base['chunks']:,} chunks ({base['chunker']} chunker) · dedup within itself "
                  f"{base['self_dedup_pct']:.1f}%")
    for i, d in enumerate(doc["derivatives"], 1):
        console.print()
        console.print(f"[bold]derivative {i}[/bold] {escape(d['source'])} · {human_size(d['total_bytes'])} in "
                      f"{len(d['files'])} "
                      f"file(s) · {d['chunks']:,} chunks ({d['chunker']} chunker)")
        console.print(f"  already in the base: [bold]{human_size(d['reused_bytes'])} ({d['reuse_pct']:.1f}%)[/bold] · new to "
                      f"upload after the base: {human_size(d['new_bytes'])} · repeats within itself: "
                      f"{human_size(d['intra_dedup_bytes'])} (alone it dedups {d['self_dedup_pct']:.1f}%)")
        k = d["key_chunks"]
        console.print(f"  key-chunk reachable (fresh uploader, global dedup): {human_size(k['reachable_reused_bytes'])} "
                      f"({k['reachable_pct_of_reused']:.1f}% of the reused bytes)")
        if "same_chunker" in d:
            s = d["same_chunker"]
            console.print(f"  had the base been cut with the {d['chunker']} chunker: {s['reuse_pct']:.1f}% reused "
                          f"({human_size(s['lost_to_chunker_bytes'])} lost to the chunker change)")
        if "exact" in d:
            e = d["exact"]
            console.print(f"  hf_xet exact: deduped {human_size(e['deduped_bytes'])} ({e['dedup_pct']:.1f}%), new "
                          f"{human_size(e['new_bytes'])}, fragmentation prevention declined "
                          f"{human_size(e['defrag_prevented_dedup_bytes'])} (chunk overlap in upload order: "
                          f"{d['upload_order']['saving_pct']:.1f}%)")
        what, rows = _rows(doc, d)
        table = Table(title=f"reuse by {what}", title_justify="left")
        table.add_column(what)
        if what == "tensor":
            table.add_column("component")
        for col in ("total", "in base", "new", "reuse"):
            table.add_column(col, justify="right")
        table.add_column("", no_wrap=True)
        shown = rows[:MAX_TENSOR_ROWS] if what == "tensor" else rows
        for name, r in shown:
            table.add_row(name, *([r["component"]] if what == "tensor" else []), human_size(r["total_bytes"]),
                          human_size(r["reused_bytes"]), human_size(r["new_bytes"]), f"{r['reuse_pct']:.1f}%", _bar(r["reuse_pct"]))
        console.print(table)
        if len(shown) < len(rows):
            console.print(f"  … {len(rows) - len(shown)} more tensors (most new bytes first; --json lists all)")
    if len(doc["derivatives"]) > 1:
        t = Table(title="upload order (each after the base and the ones before it)", title_justify="left")
        for col, j in (("#", "right"), ("derivative", "left"), ("total", "right"), ("new", "right"),
                       ("saving", "right")):
            t.add_column(col, justify=j)
        for i, d in enumerate(doc["derivatives"], 1):
            u = d["upload_order"]
            t.add_row(str(i), escape(d["source"]), human_size(d["total_bytes"]), human_size(u["new_bytes"]), f"{u['saving_pct']:.1f}%")
        console.print()
        console.print(t)
    c = doc["collection"]
    console.print()
    console.print(f"[bold]collection[/bold] (base + {len(doc['derivatives'])} derivative(s)): "
                  f"{human_size(c['unique_bytes'])} unique of {human_size(c['total_bytes'])} → dedup {c['dedup_pct']:.1f}%")
    ix = doc["indexing"]
    console.print(f"[dim]{ix['files']} file indexes, {ix['files_from_cache']} from the cache; read "
                  f"{human_size(ix['bytes_read'])} in {doc['seconds']:.1f} s[/dim]")
    for note in doc["notes"]:
        console.print(f"[dim]note: {escape(note)}[/dim]")
