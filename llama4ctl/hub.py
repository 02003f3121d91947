"""Hugging Face Hub access over huggingface_hub: header-only inspection, verified downloads, pushes.

No CLI concerns here: functions take plain arguments and a Progress, return plain dicts, and raise
HubError / CheckpointError. huggingface_hub is imported inside functions only, so `llama4ctl --help` stays fast
and HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_DISABLE_XET set by the caller are honoured.

download: repo_info (branch -> commit) and the recursive tree listing give every file's size and hash;
          include/exclude globs and --components (via the index's tensor names, or a shard's header) select the
          files; snapshot_download (hf_xet when available; resumable) fetches exactly those at that commit; every
          file is then checked against the Hub's hash (LFS sha256, Xet hash via llama4ctl.xet.hashing when that
          module exists, else the git blob sha1 for small files). A mismatching file is deleted, so a re-run
          fetches it again.
push:     refuses partial llama4ctl outputs, never uploads lock/progress/partial/tmp files, adds a generated
          model card when SRC has none, then create_repo(exist_ok) + upload_folder (several resumable commits
          with hf_xet).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama4ctl.checkpoint.checkpoint import (INDEX_FILE, PICKLE_SUFFIXES, SINGLE_FILE, Checkpoint, read_config,
                                             read_index, tensors_of)
from llama4ctl.checkpoint.header import Header, header_length, parse_header_bytes, short_repr
from llama4ctl.checkpoint.layout import COMPONENTS, component
from llama4ctl.errors import CheckpointError, HubError, PlanError
from llama4ctl.progress import NullProgress, Progress

LICENSE_HINT = "accept the Llama 4 license on the repo's Hub page, then set HF_TOKEN (or pass --token)"
#: --components aliases on top of layout.COMPONENTS
COMPONENT_ALIASES: dict[str, frozenset[str]] = {
    "text": frozenset(c for c in COMPONENTS if c not in ("vision", "projector")),
    "vision": frozenset({"vision", "projector"}),
}
WEIGHT_SUFFIXES = (".safetensors", ".gguf", *PICKLE_SUFFIXES)
#: never uploaded: llama4ctl's partial-output machinery, temp files, huggingface_hub's local metadata
PUSH_IGNORE = (".*.partial", ".*.partial/*", "*/.*.partial/*", ".lock", "*/.lock", "progress.json",
               "*/progress.json", "*.tmp", "*.incomplete", ".cache/*", ".git/*")
DOWNLOAD_MARKER = "llama4ctl-download.json"  # under <local_dir>/.cache/huggingface/: where a download came from
_CHUNK = 8 << 20


# ----------------------------------------------------------------------------------------------- errors


def _scrub(text: str, token: str | None) -> str:
    """Remove the token from text: the one given, the one huggingface_hub would use (HF_TOKEN, saved login)
    whatever its format, and anything shaped like a Hub token (hf_..., hf_oauth_...)."""
    for secret in {token, _default_token()}:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"\bhf_[A-Za-z0-9_]{8,}", "hf_***", text)


def _default_token() -> str | None:
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - scrubbing must never fail
        return None


def _status(exc: BaseException) -> int:
    return int(getattr(getattr(exc, "response", None), "status_code", 0) or 0)


def _hub_error(exc: Exception, repo_id: str, *, token: str | None = None, writing: bool = False) -> HubError:
    """One HubError per failure kind; the token never appears in the message."""
    import httpx
    from huggingface_hub import errors

    status = _status(exc)
    server_message = getattr(getattr(exc, "response", None), "headers", {}).get("X-Error-Message", "") or ""
    if isinstance(exc, errors.GatedRepoError):
        return HubError("access denied: gated repo (no token, or the Llama 4 license is not accepted for it)",
                        repo_id, hint=LICENSE_HINT)
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError("revision not found", repo_id, hint="check --revision (branch, tag or full commit hash)")
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return HubError("file not found in the repo", repo_id)
    if status == 401 and "Invalid credentials" in server_message:
        return HubError("the Hub rejected the token (invalid credentials)", repo_id,
                        hint="set a valid HF_TOKEN or pass --token")
    if isinstance(exc, errors.RepositoryNotFoundError):
        if writing:
            return HubError("repository not found, or this token cannot write to it", repo_id,
                            hint="use a token with write access (HF_TOKEN or --token)")
        return HubError("repository not found (or not visible without a token)", repo_id,
                        hint="check the repo id; if it is gated or private, " + LICENSE_HINT)
    if status in (401, 403):
        if writing:
            return HubError(f"not allowed to write to this repo (HTTP {status})", repo_id,
                            hint="use a token with write access (HF_TOKEN or --token)")
        return HubError(f"access denied (HTTP {status}): gated or private repo", repo_id, hint=LICENSE_HINT)
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return HubError("HF_HUB_OFFLINE is set, cannot reach the Hub", repo_id, hint="unset HF_HUB_OFFLINE")
    if isinstance(exc, errors.LocalEntryNotFoundError):
        return HubError("cannot reach the Hub and the files are not in the local cache", repo_id,
                        hint="check the network and HF_ENDPOINT, then re-run (downloads resume)")
    if isinstance(exc, (httpx.TransportError, ConnectionError)):
        return HubError(f"cannot reach the Hub: {_scrub(str(exc), token) or type(exc).__name__}", repo_id,
                        hint="check the network and HF_ENDPOINT, then re-run (downloads resume)")
    if status >= 500 or status == 429:
        return HubError(f"the Hub answered HTTP {status}", repo_id, hint="try again later; downloads resume")
    if isinstance(exc, ValueError) and type(exc).__name__ == "HFValidationError":
        return HubError(f"invalid repo id: {_scrub(str(exc), token)}", repo_id)
    detail = " ".join(_scrub(str(exc), token).split())
    return HubError(f"Hub request failed: {detail}", repo_id)


def _transient(exc: BaseException) -> bool:
    """5xx / 429 / connection trouble anywhere in the cause chain: worth retrying (downloads resume)."""
    import httpx
    from huggingface_hub import errors

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (errors.GatedRepoError, errors.RepositoryNotFoundError, errors.RevisionNotFoundError,
                          errors.RemoteEntryNotFoundError, errors.OfflineModeIsEnabled)):
            return False
        if isinstance(e, httpx.TransportError) or _status(e) >= 500 or _status(e) == 429:
            return True
        e = e.__cause__ or e.__context__
    return False


def _retrying(fn: Callable[[], Any], *, attempts: int = 4, base_wait: float = 0.5) -> Any:
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            if i == attempts - 1 or not _transient(e):
                raise
            time.sleep(base_wait * 2**i)
    raise AssertionError("unreachable")


def _api(token: str | None) -> Any:
    from huggingface_hub import HfApi

    from llama4ctl import __version__

    return HfApi(token=token, library_name="llama4ctl", library_version=__version__)


# ------------------------------------------------------------------------------------------- inspect


def remote_checkpoint(repo_id: str, *, revision: str | None = None, token: str | None = None) -> Checkpoint:
    """Headers only (no weights), read by HTTP range requests and checked by llama4ctl's own parsers, so a
    hostile repo fails with the same one-line error as the same files on disk."""
    from huggingface_hub import errors, hf_hub_download

    def small_file(name: str) -> Path | None:
        try:
            return Path(_retrying(lambda: hf_hub_download(repo_id, name, revision=revision, token=token)))
        except errors.RemoteEntryNotFoundError:
            return None

    def header(shard: str) -> Header:
        try:
            return _remote_header(repo_id, shard, revision=revision, token=token)
        except errors.RemoteEntryNotFoundError:
            if index is None:
                raise HubError(f"not a safetensors repo: no {INDEX_FILE} or {SINGLE_FILE}", repo_id) from None
            raise CheckpointError(f"shard {short_repr(shard)} named in the index does not exist",
                                  f"{repo_id}/{INDEX_FILE}") from None

    try:
        index = small_file(INDEX_FILE)
        if index is not None:
            shards, weight_map = _as_remote(read_index, index, repo_id)
        else:
            shards, weight_map = [SINGLE_FILE], None
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(shards)))) as pool:
            headers = list(pool.map(header, shards))
        config_file = small_file("config.json")
        config, notes = _as_remote(read_config, config_file.parent, repo_id) if config_file else (None, [])
    except (HubError, CheckpointError):
        raise
    except Exception as e:  # noqa: BLE001
        raise _hub_error(e, repo_id, token=token) from None

    tensors = tensors_of(list(zip(shards, headers)), weight_map, Path(f"{repo_id}/{INDEX_FILE}"))
    return Checkpoint(repo_id, None, tuple(tensors), tuple(shards), config, tuple(notes),
                      ("config.json",) if config is not None else (), revision=revision,
                      shard_sizes={s: h.file_size for s, h in zip(shards, headers) if h.file_size})


def _as_remote(read: Callable[[Path], Any], local: Path, repo_id: str) -> Any:
    """read(local) for a file fetched into the cache; a CheckpointError names the repo file, not the cache path."""
    try:
        return read(local)
    except CheckpointError as e:
        raise CheckpointError(e.message, f"{repo_id}/{Path(e.path or '').name}", e.hint) from None


def _remote_header(repo_id: str, shard: str, *, revision: str | None, token: str | None) -> Header:
    """One shard's header in two range requests (the 8-byte length, then the header), parsed like a local file's."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    from llama4ctl import __version__

    url = hf_hub_url(repo_id, shard, revision=revision)
    headers = build_hf_headers(token=token, library_name="llama4ctl", library_version=__version__)
    path = Path(f"{repo_id}/{shard}")
    prefix, size = _retrying(lambda: _read_range(url, headers, 0, 8))
    n = header_length(prefix, path=path, file_size=size)
    raw = _retrying(lambda: _read_range(url, headers, 8, n))[0] if n else b""
    if len(raw) != n:  # the server gave no size, so header_length could not tell
        raise CheckpointError(f"header length {n} runs past the end of the file ({8 + len(raw)} bytes)", path)
    return parse_header_bytes(raw, path=path, file_size=size)


def _read_range(url: str, headers: dict[str, str], start: int, length: int) -> tuple[bytes, int | None]:
    """Bytes [start, start + length) of a Hub file (fewer when it ends first) and its size when the server says.

    Streamed, so a server that ignores Range (200, whole file) is read only as far as needed.
    """
    from huggingface_hub import constants, get_session
    from huggingface_hub.utils import hf_raise_for_status

    wanted = {**headers, "Range": f"bytes={start}-{start + length - 1}"}
    with get_session().stream("GET", url, headers=wanted, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
        total = r.headers.get("Content-Range", "").rpartition("/")[2]
        size = int(total) if total.isdigit() else None
        if r.status_code == 416:  # the file ends before `start`
            return b"", size
        hf_raise_for_status(r)
        skip = start if r.status_code == 200 else 0
        data = bytearray()
        for chunk in r.iter_bytes():
            data += chunk
            if len(data) >= skip + length:
                break
    return bytes(data[skip:skip + length]), size


# ------------------------------------------------------------------------------------------ download


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a commit, with the hashes the Hub publishes for it."""

    path: str
    size: int
    sha256: str | None = None    # LFS files
    git_oid: str | None = None   # git blob sha1 (of the content for regular files, of the pointer for LFS)
    xet_hash: str | None = None  # Xet-backed files

    @property
    def is_weights(self) -> bool:
        return self.path.endswith(WEIGHT_SUFFIXES)


@dataclass
class DownloadPlan:
    repo_id: str
    revision: str | None
    commit: str
    files: list[RemoteFile]
    components: list[str] | None = None
    #: shard -> components it holds (only with --components)
    shard_components: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # files left out by --components

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def resolve_components(spec: str | Iterable[str] | None) -> list[str] | None:
    """`text,vision` etc. -> sorted component names; None when no selection was asked for."""
    if spec is None:
        return None
    items = [spec] if isinstance(spec, str) else list(spec)
    parts = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not parts:
        return None
    wanted: set[str] = set()
    for p in parts:
        if p in COMPONENT_ALIASES:
            wanted |= COMPONENT_ALIASES[p]
        elif p in COMPONENTS:
            wanted.add(p)
        else:
            names = ", ".join([*COMPONENT_ALIASES, *(c for c in COMPONENTS if c not in COMPONENT_ALIASES)])
            raise PlanError(f"unknown component {p!r}; choose from {names}")
    return sorted(wanted)


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def plan_download(repo_id: str, *, revision: str | None = None, include: Iterable[str] = (),
                  exclude: Iterable[str] = (), components: str | Iterable[str] | None = None,
                  token: str | None = None) -> DownloadPlan:
    """Which files to fetch, with sizes and hashes, from Hub metadata alone (no weights are read)."""
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    wanted = resolve_components(components)
    api = _api(token)
    try:
        # an explicit revision ("main" is what snapshot_download assumes too) hits /api/models/{id}/revision/{rev},
        # which Hub mirrors such as olah serve even where bare /api/models/{id} (model_info) is not served
        info = _retrying(lambda: api.repo_info(repo_id, revision=revision or "main"))
        commit = info.sha
        if not commit:
            raise HubError("the Hub did not return a commit for this revision", repo_id)
        entries = _retrying(lambda: [e for e in api.list_repo_tree(repo_id, revision=commit, recursive=True)
                                     if isinstance(e, RepoFile)])
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _hub_error(e, repo_id, token=token) from None

    files = [RemoteFile(e.path, int(e.lfs.size if e.lfs is not None else e.size or 0),
                        e.lfs.sha256 if e.lfs is not None else None, e.blob_id, e.xet_hash) for e in entries]
    files = list(filter_repo_objects(files, allow_patterns=list(include) or None,
                                     ignore_patterns=list(exclude) or None, key=lambda f: f.path))
    plan = DownloadPlan(repo_id, revision, commit, sorted(files, key=lambda f: f.path), wanted)
    if wanted is not None:
        _select_components(plan, api, {e.path for e in entries}, token)
    if not plan.files:
        raise HubError("no files match the selection", repo_id,
                       hint="check --include/--exclude/--components" if (include or exclude or wanted) else None)
    return plan


def _select_components(plan: DownloadPlan, api: Any, all_paths: set[str], token: str | None) -> None:
    """Keep the non-weight files and the shards that hold at least one wanted tensor."""
    from huggingface_hub import hf_hub_download

    repo_id, commit = plan.repo_id, plan.commit
    wanted = set(plan.components or ())
    names_by_shard: dict[str, list[str]] = {}
    try:
        if INDEX_FILE in all_paths:
            path = _retrying(lambda: hf_hub_download(repo_id, INDEX_FILE, revision=commit, token=token))
            try:
                weight_map = json.loads(Path(path).read_text(encoding="utf-8"))["weight_map"]
                assert isinstance(weight_map, dict)
            except (OSError, ValueError, KeyError, TypeError, AssertionError):
                raise HubError(f"{INDEX_FILE} has no valid weight_map", repo_id) from None
            for name, shard in weight_map.items():
                names_by_shard.setdefault(str(shard), []).append(str(name))
        else:
            for p in sorted(all_paths):
                if p.endswith(".safetensors") and "/" not in p:
                    meta = _retrying(lambda p=p: api.parse_safetensors_file_metadata(repo_id, p, revision=commit))
                    names_by_shard[p] = list(meta.tensors)
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _hub_error(e, repo_id, token=token) from None
    if not names_by_shard:
        raise HubError("--components needs safetensors weights (an index or .safetensors files)", repo_id)

    plan.shard_components = {s: sorted({component(n) for n in names}) for s, names in sorted(names_by_shard.items())}
    keep_shards = {s for s, comps in plan.shard_components.items() if wanted & set(comps)}
    kept, skipped = [], []
    for f in plan.files:
        (kept if (not f.is_weights or f.path in keep_shards) else skipped).append(f)
    plan.files, plan.skipped = kept, [f.path for f in skipped]


def _cache_snapshot_dir(repo_id: str, commit: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / commit


def _progress_class(progress: Progress) -> type:
    """A tqdm stand-in for snapshot_download: draws nothing itself and forwards written bytes to `progress`."""

    class _Bridge:
        def __init__(self, *args: Any, **kwargs: Any):
            self.n = kwargs.get("initial", 0) or 0
            self.total = kwargs.get("total")
            desc = str(kwargs.get("desc") or "")
            # the byte bar that counts what is written to disk ("Reconstructing ..."), not the network one
            self._forward = kwargs.get("unit") == "B" and not desc.startswith("Downloading")
            self.format_dict: dict[str, Any] = {}

        def update(self, n: float | None = 1) -> None:
            n = int(n or 0)
            self.n += n
            if self._forward and n > 0:
                progress.advance(n)

        def __enter__(self) -> _Bridge:
            return self

        def __exit__(self, *exc: Any) -> None:
            pass

        def __getattr__(self, name: str) -> Any:  # close, refresh, set_description, set_postfix_str, ...
            if name.startswith("__"):
                raise AttributeError(name)
            return lambda *a, **k: None

    return _Bridge


def download(repo_id: str, *, revision: str | None = None, local_dir: str | Path | None = None,
             include: Iterable[str] = (), exclude: Iterable[str] = (), components: str | Iterable[str] | None = None,
             dry_run: bool = False, verify: bool = True, max_workers: int = 8, token: str | None = None,
             progress: Progress | None = None) -> dict[str, Any]:
    """Download (or, with dry_run, list) a repo's files; verify each against the Hub's hashes.

    Returns a plain dict (the `download` JSON document's body). Raises HubError on Hub failures and on any
    verification mismatch, after deleting the bad files.
    """
    from huggingface_hub import constants

    progress = progress or NullProgress()
    include, exclude = list(include), list(exclude)
    if constants.HF_HUB_OFFLINE:
        return _download_offline(repo_id, revision=revision, local_dir=local_dir, include=include, exclude=exclude,
                                 components=components, dry_run=dry_run, token=token)
    t0 = time.perf_counter()
    plan = plan_download(repo_id, revision=revision, include=include, exclude=exclude, components=components,
                         token=token)
    dest = Path(local_dir).expanduser().absolute() if local_dir else _cache_snapshot_dir(repo_id, plan.commit)
    present = {f.path for f in plan.files if _is_present(dest / f.path, f.size)}
    result: dict[str, Any] = {
        "repo_id": repo_id,
        "revision": revision or "main",
        "commit": plan.commit,
        "destination": str(dest),
        "components": plan.components,
        "components_requested": components if components is None or isinstance(components, str)
        else ",".join(components),
        "dry_run": dry_run,
        "total_bytes": plan.total_bytes,
        "bytes_to_download": sum(f.size for f in plan.files if f.path not in present),
        "skipped_by_components": plan.skipped,
        "shard_components": plan.shard_components,
        "files": [{"path": f.path, "size": f.size, "present": f.path in present, "check": _check_kind(f)}
                  for f in plan.files],
        "verified": None,
        "unverified": [],
        "seconds": 0.0,
    }
    if dry_run:
        return result

    _fetch(plan, local_dir=local_dir, max_workers=max_workers, token=token, progress=progress,
           todo_bytes=result["bytes_to_download"])
    if local_dir is None:
        _write_cache_ref(repo_id, revision, plan.commit)
    missing = [f.path for f in plan.files if not (dest / f.path).is_file()]
    if missing:
        raise HubError(f"download finished but {len(missing)} file(s) are missing: {', '.join(missing[:5])}",
                       dest, hint="re-run the same command to fetch them")
    if verify:
        checks = verify_files(dest, plan.files, max_workers=max_workers, progress=progress)
        bad = [c for c in checks if c["ok"] is False]
        by_path = {c["path"]: c for c in checks}
        for entry in result["files"]:
            entry["check"], entry["ok"] = by_path[entry["path"]]["algorithm"], by_path[entry["path"]]["ok"]
        result["unverified"] = [c["path"] for c in checks if c["ok"] is None]
        if bad:
            for c in bad:
                _remove_downloaded(dest, c["path"], cache_mode=local_dir is None)
            detail = "; ".join(f"{c['path']} ({c['algorithm']} expected {c['expected'][:16]}…, got "
                               f"{c['actual'][:16]}…)" for c in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise HubError(f"{len(bad)} file(s) failed verification and were deleted: {detail}{more}", dest,
                           hint="re-run the same command to download them again")
        result["verified"] = True
    if local_dir is not None:
        _write_marker(dest, repo_id, revision, plan.commit)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def _fetch(plan: DownloadPlan, *, local_dir: str | Path | None, max_workers: int, token: str | None,
           progress: Progress, todo_bytes: int) -> None:
    from huggingface_hub import snapshot_download

    patterns = [_glob_escape(f.path) for f in plan.files]
    progress.start(f"downloading {plan.repo_id}", todo_bytes or None)
    try:
        _retrying(lambda: snapshot_download(
            plan.repo_id, revision=plan.commit, local_dir=str(local_dir) if local_dir else None,
            allow_patterns=patterns, max_workers=max_workers, token=token, tqdm_class=_progress_class(progress),
            library_name="llama4ctl",
        ), attempts=3, base_wait=1.0)
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _hub_error(e, plan.repo_id, token=token) from None
    finally:
        progress.finish()


def _download_offline(repo_id: str, *, revision: str | None, local_dir: str | Path | None, include: list[str],
                      exclude: list[str], components: str | Iterable[str] | None, dry_run: bool,
                      token: str | None) -> dict[str, Any]:
    """HF_HUB_OFFLINE=1: return what the cache / local dir already holds; nothing can be verified."""
    from huggingface_hub import snapshot_download

    if resolve_components(components) is not None or dry_run:
        raise HubError("--components and --dry-run need the Hub's metadata, but HF_HUB_OFFLINE is set", repo_id,
                       hint="unset HF_HUB_OFFLINE")
    try:
        path = snapshot_download(repo_id, revision=revision, local_dir=str(local_dir) if local_dir else None,
                                 allow_patterns=include or None, ignore_patterns=exclude or None, token=token)
    except Exception as e:  # noqa: BLE001
        raise _hub_error(e, repo_id, token=token) from None
    root = Path(path)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and ".cache" not in p.relative_to(root).parts)
    commit = root.name if re.fullmatch(r"[0-9a-f]{40}", root.name) else None  # cache snapshots are named by commit
    return {"repo_id": repo_id, "revision": revision or "main", "commit": commit, "destination": str(root),
            "components": None, "dry_run": False, "total_bytes": sum((root / f).stat().st_size for f in files),
            "bytes_to_download": 0, "skipped_by_components": [], "shard_components": {},
            "files": [{"path": f, "size": (root / f).stat().st_size, "present": True, "check": None} for f in files],
            "verified": None, "unverified": files, "seconds": 0.0,
            "note": "HF_HUB_OFFLINE is set: files come from the local cache and were not verified"}


def _is_present(path: Path, size: int) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


def _write_cache_ref(repo_id: str, revision: str | None, commit: str) -> None:
    """Record branch -> commit in the cache (snapshot_download was pinned to the commit, so it did not)."""
    ref = revision or "main"
    if ref == commit:
        return
    try:
        from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision

        _cache_commit_hash_for_specific_revision(str(_cache_snapshot_dir(repo_id, commit).parents[1]), ref, commit)
    except (ImportError, OSError):
        pass


def _write_marker(dest: Path, repo_id: str, revision: str | None, commit: str) -> None:
    """Where this local dir came from, for push's model card (base_model); kept in the ignored .cache dir."""
    try:
        d = dest / ".cache" / "huggingface"
        d.mkdir(parents=True, exist_ok=True)
        (d / DOWNLOAD_MARKER).write_text(json.dumps({"repo_id": repo_id, "revision": revision, "commit": commit}))
    except OSError:
        pass


def _remove_downloaded(dest: Path, rel: str, *, cache_mode: bool) -> None:
    """Delete a bad file so a re-run downloads it again (and its cache blob / local-dir metadata)."""
    p = dest / rel
    if cache_mode and p.is_symlink():
        try:
            p.resolve().unlink(missing_ok=True)
        except OSError:
            pass
    p.unlink(missing_ok=True)
    if not cache_mode:
        (dest / ".cache" / "huggingface" / "download" / f"{rel}.metadata").unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ verify


def xet_file_hasher() -> Callable[[Path], str] | None:
    """The Xet file hash function from llama4ctl.xet.hashing (the dedup work), when that module exists."""
    try:
        from llama4ctl.xet.hashing import file_hash  # type: ignore[import-not-found]
    except ImportError:
        return None

    def _hash(path: Path) -> str:
        h = file_hash(path)
        return h.hex() if isinstance(h, (bytes, bytearray)) else str(h)

    return _hash


def _check_kind(f: RemoteFile, xet: bool | None = None) -> str | None:
    """xet when the Hub gives a Xet hash and the hasher exists, else LFS sha256, else the git blob sha1."""
    if f.xet_hash and (xet if xet is not None else xet_file_hasher() is not None):
        return "xet"
    if f.sha256:
        return "sha256"
    if f.xet_hash:
        return None  # Xet-only file and no Xet hasher: nothing to check against
    return "git-sha1" if f.git_oid else None


def _digest(path: Path, algorithm: str, size: int, progress: Progress) -> str:
    h = hashlib.sha256() if algorithm == "sha256" else hashlib.sha1()  # noqa: S324 - git's blob id is sha1
    if algorithm == "git-sha1":
        h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            progress.advance(len(chunk))
    return h.hexdigest()


def verify_files(root: Path, files: list[RemoteFile], *, max_workers: int = 4,
                 progress: Progress | None = None) -> list[dict[str, Any]]:
    """Check each file under `root` against its Hub hash. ok: True / False / None (no usable hash)."""
    progress = progress or NullProgress()
    xet = xet_file_hasher()

    def check(f: RemoteFile) -> dict[str, Any]:
        path = root / f.path
        kind = _check_kind(f, xet is not None)
        out: dict[str, Any] = {"path": f.path, "algorithm": kind, "expected": None, "actual": None, "ok": None}
        if kind is None:
            return out
        if path.stat().st_size != f.size:
            out.update(expected=f"{f.size} bytes", actual=f"{path.stat().st_size} bytes", ok=False,
                       algorithm="size")
            return out
        if kind == "xet":
            assert xet is not None
            expected, actual = str(f.xet_hash).lower(), xet(path).lower()
            progress.advance(f.size)
            if expected != actual and f.sha256:
                # never delete a good file over a hasher disagreement: the LFS sha256 has the last word
                kind, expected = "sha256", f.sha256.lower()
                actual = _digest(path, kind, f.size, NullProgress())
            out["algorithm"] = kind
        else:
            expected = str(f.sha256 if kind == "sha256" else f.git_oid).lower()
            actual = _digest(path, kind, f.size, progress)
        out.update(expected=expected, actual=actual, ok=expected == actual)
        return out

    progress.start("verifying", sum(f.size for f in files) or None)
    try:
        workers = max(1, min(max_workers, os.cpu_count() or 1, len(files)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(check, files))
    finally:
        progress.finish()


# --------------------------------------------------------------------------------------------------- push


def check_push_source(src: Path) -> dict[str, Any] | None:
    """Refuse partial llama4ctl outputs. Returns the provenance (llama4ctl.json) when there is one."""
    if not src.is_dir():
        raise CheckpointError("not a directory", src)
    if re.fullmatch(r"\..+\.partial", src.name):
        raise CheckpointError("this is the partial output of an interrupted or running llama4ctl run", src,
                              hint="finish it with --resume, then push the destination directory")
    prov_path = src / "llama4ctl.json"
    if prov_path.is_file():
        try:
            prov = json.loads(prov_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"unreadable llama4ctl.json: {e}", prov_path) from None
        if not isinstance(prov, dict) or prov.get("complete") is not True:
            raise CheckpointError("llama4ctl.json says this output is incomplete", prov_path,
                                  hint="finish the run with --resume before pushing")
        return prov
    if (src / "progress.json").exists() or (src / ".lock").exists() or any(src.glob("*.safetensors.tmp")):
        raise CheckpointError("this looks like a llama4ctl output still being written (progress/lock files, "
                              "no llama4ctl.json)", src, hint="wait for the run to finish, or --resume it")
    return None


def push_files(src: Path) -> list[tuple[str, int]]:
    """(path in repo, size) of every file push would upload from `src`, sorted."""
    from huggingface_hub.utils import filter_repo_objects

    rels = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    kept = filter_repo_objects(rels, ignore_patterns=list(PUSH_IGNORE))
    return [(r, (src / r).stat().st_size) for r in kept]


def push(src: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         create_pr: bool = False, commit_message: str | None = None, base_model: str | None = None,
         dry_run: bool = False, token: str | None = None, hub_progress: bool = True) -> dict[str, Any]:
    """Upload a checkpoint folder (plus a generated model card when it has no README.md)."""
    from llama4ctl import __version__
    from llama4ctl.modelcard import build_model_card

    root = Path(src).expanduser().absolute()
    provenance = check_push_source(root)
    if any(root.glob("*.safetensors")):
        Checkpoint.open(root)  # headers only: index <-> shards cross-checked before anything is uploaded
    files = push_files(root)
    if not files:
        raise CheckpointError("nothing to upload", root)
    has_readme = any(p == "README.md" for p, _ in files)
    card = None if has_readme else build_model_card(root, repo_id=repo_id, base_model=base_model,
                                                    dedup=_dedup_estimate(root, provenance))
    listed = [{"path": p, "size": s} for p, s in files]
    if card is not None:
        listed.append({"path": "README.md", "size": len(card.encode()), "generated": True})
        listed.sort(key=lambda d: d["path"])
    if create_pr and revision not in (None, "main"):
        raise PlanError("--create-pr opens a pull request against main; it cannot be combined with --revision")
    message = commit_message or f"Upload {root.name} with llama4ctl {__version__}"
    result: dict[str, Any] = {
        "repo_id": repo_id, "source": str(root), "revision": revision or "main", "create_pr": create_pr,
        "private": private, "dry_run": dry_run, "commit_message": message,
        "files": listed, "total_bytes": sum(d["size"] for d in listed),
        "model_card": "existing" if has_readme else "generated", "card": card,
        "provenance": bool(provenance), "url": None, "commit_url": None, "commit_oid": None, "pr_url": None,
        "seconds": 0.0,
    }
    if dry_run:
        return result

    t0 = time.perf_counter()
    api = _api(token)
    if not hub_progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        url = api.create_repo(repo_id, private=private or None, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".llama4ctl-push-") as tmp:
            stage = _stage(root, [p for p, _ in files], Path(tmp), card)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(stage), revision=revision,
                                     create_pr=create_pr or None, commit_message=message, repo_type="model")
    except (HubError, CheckpointError):
        raise
    except Exception as e:  # noqa: BLE001
        raise _hub_error(e, repo_id, token=token, writing=True) from None
    result.update(url=str(url), commit_url=getattr(info, "commit_url", None), commit_oid=getattr(info, "oid", None),
                  pr_url=getattr(info, "pr_url", None), seconds=round(time.perf_counter() - t0, 3))
    return result


def _dedup_estimate(root: Path, provenance: dict[str, Any] | None) -> dict[str, Any] | None:
    """Xet chunk reuse of `root` against its base, when the dedup module exists and the base is on disk.

    Hook for llama4ctl.xet.report.dedup_estimate(base_dir, derived_dir) -> {reused_bytes, total_bytes, ...};
    without that module (or without a local base) the card simply has no dedup section.
    """
    source = (provenance or {}).get("source")
    base = source.get("path") if isinstance(source, dict) else None
    if not isinstance(base, str) or not Path(base).is_dir():
        return None
    try:
        from llama4ctl.xet.report import dedup_estimate  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        est = dedup_estimate(Path(base), root)
    except Exception:  # noqa: BLE001 - an estimate must never break a push
        return None
    return {"base": base, **est} if isinstance(est, dict) else None


def _stage(root: Path, rels: list[str], tmp: Path, card: str | None) -> Path:
    """A folder of symlinks to exactly the files to upload (plus the card), so it is one upload_folder call."""
    stage = tmp / "stage"
    stage.mkdir()
    for rel in rels:
        dst = stage / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(root / rel, dst)
        except OSError:
            shutil.copyfile(root / rel, dst)
    if card is not None:
        (stage / "README.md").write_text(card, encoding="utf-8")
    return stage
