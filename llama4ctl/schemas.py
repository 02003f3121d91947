"""Every JSON document llama4ctl prints or writes: one place for their versions and required keys.

Pipelines parse these; bump SCHEMA_VERSION on any incompatible change. `required_keys` is what tests check.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1

REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "error": ("message", "path", "hint"),
    "inspect": ("family", "num_parameters", "total_bytes", "parameters_by_component", "num_experts",
                "moe_layers", "dtypes", "quantization", "shards"),
    "plan": ("format", "input_bytes", "output_bytes", "num_shards", "shards"),
    "shard": ("destination", "bytes_written", "shards_written", "shards_skipped", "seconds", "already_complete"),
    "demo": ("checkpoint", "steps"),
    "quantize": ("destination", "bytes_written", "shards_written", "shards_skipped", "seconds", "already_complete",
                 "devices"),
    "quantize_oneshot": ("destination", "recipe", "seconds", "calibrated"),
    "quantization_report": ("format", "scheme", "backend", "kept_modules", "input_bytes", "output_bytes",
                            "components", "worst_tensors", "tensors"),
    "provenance": ("llama4ctl_version", "command", "created", "source", "operation", "complete"),
    "download": ("repo_id", "revision", "commit", "destination", "files", "total_bytes", "bytes_to_download",
                 "verified", "dry_run"),
    "push": ("repo_id", "revision", "files", "total_bytes", "model_card", "dry_run", "url", "commit_url", "pr_url"),
    "run": ("text", "tokens", "ttft_s", "tokens_per_s", "peak_host_bytes", "peak_gpu_bytes"),
    "dedup_report": ("chunker", "base_chunker", "base", "derivatives", "collection"),
}


def document(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Wrap a result as a versioned document; checks the keys its schema requires."""
    missing = [k for k in REQUIRED_KEYS.get(kind, ()) if k not in body]
    if missing:
        raise ValueError(f"internal: {kind} document lacks {missing}")
    return {"schema_version": SCHEMA_VERSION, "kind": kind, **body}


def error_document(message: str, path: str | None, hint: str | None) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "kind": "error",
            "error": {"message": message, "path": path, "hint": hint}}
