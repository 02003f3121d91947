"""`llama4ctl download REPO_ID`: selected, resumable, verified downloads from the Hub."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llama4ctl.cli._errors import handled
from llama4ctl.cli._options import DebugOpt, JsonOpt, QuietOpt, RevisionOpt, TokenOpt
from llama4ctl.cli._output import Output, human_size

HELP = """Download a Llama 4 repo from the Hub (hf_xet when available), resumable, and verify every file.

Files go to --local-dir, or to the Hugging Face cache (HF_HOME / HF_HUB_CACHE). HF_TOKEN, HF_ENDPOINT and
HF_HUB_OFFLINE are honoured. --components text fetches only the shards that hold text-model tensors (read from
the index, no weights); config, tokenizer and processor files always come along. Each file is checked against
the Hub's hash (LFS sha256, or the git blob id for small files); a mismatching file is deleted and the command
exits 1, so running it again fetches that file again.
"""


def download_cmd(
    repo_id: Annotated[str, typer.Argument(help="Hub repo id, e.g. meta-llama/Llama-4-Scout-17B-16E-Instruct.")],
    revision: RevisionOpt = None,
    local_dir: Annotated[str | None, typer.Option("--local-dir", help="Download into this directory instead of the Hugging Face cache.")] = None,
    include: Annotated[list[str] | None, typer.Option("--include", help="Only files matching this glob (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Skip files matching this glob (repeatable).")] = None,
    components: Annotated[str | None, typer.Option("--components", help="Comma-separated: text, vision, or component names (embed, attention, routed_experts, router, lm_head, ...); only shards holding them are fetched.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files and sizes from Hub metadata; download nothing.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check each file against the Hub's hash after download.")] = True,
    max_workers: Annotated[int, typer.Option("--max-workers", min=1, help="Files downloaded (and verified) in parallel.")] = 8,
    token: TokenOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    if components is not None:
        from llama4ctl.errors import PlanError
        from llama4ctl.hub import resolve_components

        try:
            resolve_components(components)
        except PlanError as e:
            raise typer.BadParameter(e.message, param_hint="--components") from None
    with handled(out):
        from llama4ctl.hub import download
        from llama4ctl.schemas import document

        res = download(repo_id, revision=revision, local_dir=local_dir, include=include or [], exclude=exclude or [],
                       components=components, dry_run=dry_run, verify=verify, max_workers=max_workers, token=token,
                       progress=out.progress())
        if res.get("verified"):
            for path in res.get("unverified") or []:
                out.warn(f"{path}: the Hub gives no hash llama4ctl can check here; not verified")
        out.result(document("download", res), lambda c: render(c, res))


download_cmd.__doc__ = HELP


def render(console: Any, res: dict[str, Any]) -> None:
    from rich.table import Table

    head = f"{res['repo_id']} @ {res['revision']}" + (f" ({res['commit'][:12]})" if res.get("commit") else "")
    if res["dry_run"]:
        table = Table(title=f"{head}: would download {human_size(res['bytes_to_download'])} of "
                      f"{human_size(res['total_bytes'])} into {res['destination']}", title_justify="left")
        for col, justify in (("file", "left"), ("size", "right"), ("status", "left"), ("check", "left")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for f in res["files"]:
            table.add_row(f["path"], human_size(f["size"]), "present" if f["present"] else "to download",
                          f.get("check") or "-")
        console.print(table)
    else:
        verified = {True: "all verified", None: "not verified"}[res["verified"]]
        console.print(f"{head}: {len(res['files'])} file(s), {human_size(res['total_bytes'])} in {res['destination']} "
                      f"({verified}, {res['seconds']:.1f} s)")
    if res.get("components"):
        console.print(f"--components {res.get('components_requested')} ({', '.join(res['components'])}): skipped "
                      f"{len(res['skipped_by_components'])} shard(s) holding none of them")
    if res.get("note"):
        console.print(res["note"])
