"""Hugging Face Hub access over huggingface_hub; no CLI concerns here."""

from __future__ import annotations

import json
from pathlib import Path

from llama4ctl.checkpoint.checkpoint import EXTRA_FILE_NAMES, Checkpoint
from llama4ctl.checkpoint.header import TensorRef
from llama4ctl.checkpoint.layout import normalize_config
from llama4ctl.errors import HubError


def _hub_error(exc: Exception, repo_id: str) -> HubError:
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError) or getattr(getattr(exc, "response", None), "status_code", 0) in (401, 403):
        return HubError("access denied (gated or private repo)", repo_id,
                        hint="accept the Llama 4 license on the repo's Hub page and set HF_TOKEN")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError("repository not found", repo_id, hint="check the repo id, or log in if it is private")
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError("revision not found", repo_id)
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return HubError("HF_HUB_OFFLINE is set, cannot reach the Hub", repo_id)
    return HubError(f"Hub request failed: {exc}", repo_id)


def remote_checkpoint(repo_id: str, *, revision: str | None = None, token: str | None = None) -> Checkpoint:
    """Headers only: tensor names, dtypes, shapes and byte ranges via HTTP range requests; no weights."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(token=token)
    try:
        meta = api.get_safetensors_metadata(repo_id, revision=revision)
        try:
            config_path = hf_hub_download(repo_id, "config.json", revision=revision, token=token)
            config, notes = normalize_config(json.loads(Path(config_path).read_text()))
        except Exception as e:  # noqa: BLE001 - config is optional for inspection
            from huggingface_hub import errors

            if not isinstance(e, errors.EntryNotFoundError):
                raise
            config, notes = None, []
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _hub_error(e, repo_id) from None

    tensors: list[TensorRef] = []
    shards = sorted(meta.files_metadata)
    for shard in shards:
        fm = meta.files_metadata[shard]
        for name, info in sorted(fm.tensors.items(), key=lambda kv: kv[1].data_offsets[0]):
            begin, end = info.data_offsets
            tensors.append(TensorRef(name, info.dtype, tuple(info.shape), Path(shard), begin, end))
    return Checkpoint(repo_id, None, tuple(tensors), tuple(shards), config, tuple(notes),
                      tuple(n for n in EXTRA_FILE_NAMES if n == "config.json" and config is not None),
                      revision=revision)
