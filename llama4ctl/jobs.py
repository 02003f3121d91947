"""The library calls behind the commands that write weights: open -> plan -> (dry run | execute)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llama4ctl.checkpoint.checkpoint import Checkpoint
from llama4ctl.errors import CheckpointError
from llama4ctl.plan.planner import Plan, build_plan
from llama4ctl.plan.sharding import parse_size
from llama4ctl.progress import Progress

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and not text.startswith((".", "/")) and ".." not in text


def open_local(src: str | Path) -> Checkpoint:
    p = Path(src)
    if not p.exists() and looks_like_repo_id(str(src)):
        raise CheckpointError("no such local checkpoint (Hub repo ids must be downloaded first)", src,
                              hint=f"run `llama4ctl download {src}` first")
    return Checkpoint.open(p)


def open_any(src: str, *, revision: str | None = None, token: str | None = None) -> Checkpoint:
    """A local checkpoint, or a Hub repo's headers only (no weights fetched)."""
    if Path(src).exists() or not looks_like_repo_id(src):
        return Checkpoint.open(src)
    from llama4ctl.hub import remote_checkpoint

    return remote_checkpoint(src, revision=revision, token=token)


def plan_shard(src: str | Path, *, max_shard_size: str | int = "5GB", dtype: str | None = None,
               experts: str = "keep", drop_vision: bool = False) -> Plan:
    from llama4ctl.formats.bf16 import UnquantizedFormat

    size = parse_size(max_shard_size)
    fmt = UnquantizedFormat(dtype=dtype, experts=experts)
    return build_plan(open_local(src), fmt, max_shard_size=size, drop_vision=drop_vision)


def execute_plan(plan: Plan, dst: str | Path, *, overwrite: bool = False, resume: bool = False,
                 workers: int = 1, progress: Progress | None = None, command: list[str] | None = None,
                 **kwargs: Any) -> dict[str, Any]:
    from llama4ctl.exec.executor import execute

    r = execute(plan, dst, overwrite=overwrite, resume=resume, workers=workers, progress=progress,
                command=command, **kwargs)
    return {
        "destination": str(r.dst),
        "already_complete": r.already_complete,
        "bytes_written": r.bytes_written,
        "shards_written": r.shards_written,
        "shards_skipped": r.shards_skipped,
        "seconds": round(r.seconds, 3),
        "plan": plan.summary(),
    }
