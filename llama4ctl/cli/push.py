"""`llama4ctl push SRC REPO_ID`: upload a finished checkpoint folder, with a generated model card."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llama4ctl.cli._errors import handled
from llama4ctl.cli._options import DebugOpt, JsonOpt, QuietOpt, TokenOpt
from llama4ctl.cli._output import Output, human_size

HELP = """Upload a checkpoint folder to the Hub: creates the repo if needed, then upload_folder (with hf_xet:
several resumable commits; re-run the same command to resume).

Refuses a llama4ctl output that is still being written or was interrupted (llama4ctl.json missing or not
complete). Never uploads .lock, progress.json, *.tmp or .*.partial files. If SRC has no README.md, a model card is
generated from llama4ctl.json, quantization_report.json and config.json (base_model from the provenance, or
--base-model). --dry-run prints the file list and the card without contacting the Hub.
"""


def push_cmd(
    src: Annotated[str, typer.Argument(help="Checkpoint directory to upload.")],
    repo_id: Annotated[str, typer.Argument(help="Target Hub repo id (created if it does not exist).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch to push to (created from main if needed).")] = None,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request instead of pushing to main.")] = False,
    commit_message: Annotated[str | None, typer.Option("--commit-message", help="Commit title.")] = None,
    base_model: Annotated[str | None, typer.Option("--base-model", help="base_model for the card (default: from llama4ctl.json provenance).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the files and the model card; upload nothing.")] = False,
    token: TokenOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    if create_pr and revision not in (None, "main"):
        raise typer.BadParameter("--create-pr opens a pull request against main; drop --revision",
                                 param_hint="--create-pr")
    with handled(out):
        from llama4ctl.hub import push
        from llama4ctl.schemas import document

        res = push(src, repo_id, private=private, revision=revision, create_pr=create_pr,
                   commit_message=commit_message, base_model=base_model, dry_run=dry_run, token=token,
                   hub_progress=not (json_ or quiet))
        if res["model_card"] == "generated" and "base_model:" not in (res.get("card") or ""):
            out.warn("the model card has no base_model (no Hub source in llama4ctl.json); pass --base-model")
        out.result(document("push", res), lambda c: render(c, res))


push_cmd.__doc__ = HELP


def render(console: Any, res: dict[str, Any]) -> None:
    from rich.table import Table

    if res["dry_run"]:
        table = Table(title=f"would upload {len(res['files'])} file(s), {human_size(res['total_bytes'])} to "
                      f"{res['repo_id']} @ {res['revision']}" + (" as a pull request" if res["create_pr"] else ""),
                      title_justify="left")
        table.add_column("file")
        table.add_column("size", justify="right")
        for f in res["files"]:
            table.add_row(f["path"] + (" (generated)" if f.get("generated") else ""), human_size(f["size"]))
        console.print(table)
        if res.get("card"):
            console.print("generated model card (README.md):")
            console.print(res["card"], markup=False, highlight=False)
        return
    where = res.get("pr_url") or res.get("commit_url") or res.get("url")
    console.print(f"pushed {len(res['files'])} file(s), {human_size(res['total_bytes'])} to {res['repo_id']} "
                  f"({res['model_card']} model card) in {res['seconds']:.1f} s: {where}")
